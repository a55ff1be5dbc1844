"""Fencing where the work happens: a connector's own Redis writes, conditional on its epoch.

Leader election alone never stops two actors: a connector that was paused, partitioned or slow to
die can still write after another host took the exchange over. Perseus kills its child when the
claim is lost, but a write already in flight (or a child frozen together with its worker) can land
late. So the child makes its writes carry its fencing token: :data:`FENCED_WRITE_LUA`, run with
``EVALSHA``, applies one write only while the exchange's status key still names the child's epoch
(and, when given, its instance id), atomically with the check. A stale writer gets an error reply
starting with ``FENCED`` and must stop acting as the active connector.

Calling it (any language)::

    EVALSHA <sha1 of the script> <1 + k> exchange:<id>:status <key 1> … <key k>
            <instanceId or ''> <epoch> <COMMAND> <arguments after the keys…>

The write is ``COMMAND key 1 … key k arguments…``: commands whose keys come first (SET, XADD, HSET,
ZADD, LPUSH, INCRBY, DEL, EXPIRE…). Its reply is the command's own; a refusal is the error
``FENCED epoch <e> is stale: …``. ``python -m perseus.fencing`` prints the script (``--sha``: its
SHA-1); load it once with ``SCRIPT LOAD`` or send it with ``EVAL`` when ``EVALSHA`` answers NOSCRIPT.

The instance id may be '' (the epoch alone is checked). That is as safe: every claim takes a new,
strictly larger epoch from ``exchange:<id>:epoch``, so an epoch names exactly one claim. A warm
standby promoted by ``ACTIVATE <epoch>`` learns only its new epoch, so it fences by epoch alone.

Redis Cluster: a script may touch keys of one hash slot only. The status key's name has no hash tag
(``exchange:<id>:status`` is Livermore's), so it hashes as a whole; a key whose hash tag is that
whole name — ``{exchange:<id>:status}:candles:BTC-USD`` — lands in the same slot. Name every key a
connector writes through the fence with :func:`fenced_key`. (The epoch counter lives in another slot,
and checking the counter alone would also accept the writes of a holder whose claim expired.)
On a single Redis or a primary with replicas any key name works. Keys that must keep other names
(another service reads them) cannot be fenced by this script on a cluster: write them from a
fenced stream or key through a consumer, or keep them on a non-cluster Redis.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from perseus.errors import ConfigError, StaleEpoch
from perseus.keys import status_key

#: KEYS[1] the status key, KEYS[2..] the write's keys; ARGV: instance id ('' = any), epoch,
#: command, the command's arguments after its keys.
FENCED_WRITE_LUA = """\
local cur = redis.call('GET', KEYS[1])
if not cur then
  return redis.error_reply('FENCED epoch ' .. ARGV[2] .. ' is stale: ' .. KEYS[1] .. ' is gone (no claim)')
end
local ok, doc = pcall(cjson.decode, cur)
if not ok or type(doc) ~= 'table' then
  return redis.error_reply('FENCED epoch ' .. ARGV[2] .. ' is stale: ' .. KEYS[1] .. ' is unreadable')
end
if tonumber(doc['epoch']) ~= tonumber(ARGV[2]) or (ARGV[1] ~= '' and doc['instanceId'] ~= ARGV[1]) then
  return redis.error_reply('FENCED epoch ' .. ARGV[2] .. ' is stale: ' .. KEYS[1] .. ' names epoch '
    .. tostring(doc['epoch']) .. ', instance ' .. tostring(doc['instanceId']))
end
local args = {}
for i = 2, #KEYS do args[#args + 1] = KEYS[i] end
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
return redis.call(ARGV[3], unpack(args))
"""
FENCED_WRITE_SHA = hashlib.sha1(FENCED_WRITE_LUA.encode()).hexdigest()
#: The prefix of a refusal's error reply.
REFUSED_PREFIX = "FENCED "


def fenced_key(exchange_id: int, name: str) -> str:
    """A key in the status key's hash slot (``{exchange:<id>:status}:<name>``): fenceable on a cluster."""
    return "{" + status_key(exchange_id) + "}:" + name


@dataclass(frozen=True)
class Fence:
    """The token a connector's writes carry: its exchange, epoch and (optionally) instance id."""

    exchange_id: int
    epoch: int
    #: '' checks the epoch alone (a promoted warm standby knows only its new epoch).
    instance_id: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Fence:
        """The fence of a child run by Perseus: ``PERSEUS_EXCHANGE_ID``, ``PERSEUS_EPOCH``,
        ``PERSEUS_INSTANCE_ID``. A warm standby starts with epoch 0, which fences every write out
        until :meth:`activated` gives it the epoch of ``ACTIVATE <epoch>``."""
        env = os.environ if env is None else env
        try:
            return cls(
                exchange_id=int(env["PERSEUS_EXCHANGE_ID"]),
                epoch=int(env.get("PERSEUS_EPOCH", "0")),
                instance_id=env.get("PERSEUS_INSTANCE_ID", ""),
            )
        except KeyError:
            raise ConfigError("PERSEUS_EXCHANGE_ID is not set: is this process run by Perseus?") from None
        except ValueError as exc:
            raise ConfigError(f"PERSEUS_EXCHANGE_ID / PERSEUS_EPOCH must be integers: {exc}") from None

    def activated(self, epoch: int) -> Fence:
        """The fence after ``ACTIVATE <epoch>``: the new epoch, checked alone."""
        return replace(self, epoch=epoch, instance_id="")

    @property
    def status_key(self) -> str:
        return status_key(self.exchange_id)

    def key(self, name: str) -> str:
        """:func:`fenced_key` for this exchange."""
        return fenced_key(self.exchange_id, name)

    def call(self, command: str, keys: Sequence[str], args: Sequence[object]) -> tuple[int, list[object]]:
        """``numkeys`` and ``keys_and_args`` for ``EVALSHA`` / ``EVAL`` of :data:`FENCED_WRITE_LUA`."""
        if not command or not keys:
            raise ConfigError("a fenced write needs a command and at least one key")
        return 1 + len(keys), [self.status_key, *keys, self.instance_id, self.epoch, command, *args]


def _refused(exc: Exception) -> StaleEpoch | None:
    text = str(exc)
    return StaleEpoch(text) if text.startswith(REFUSED_PREFIX) else None


def _no_script(exc: Exception) -> bool:
    return type(exc).__name__ == "NoScriptError" or str(exc).startswith("NOSCRIPT")


async def fenced_write(client: Any, fence: Fence, command: str, keys: Sequence[str], *args: object) -> Any:
    """Run ``command keys… args…`` on an asyncio Redis client (redis-py's ``redis.asyncio``, also its
    cluster client) only while ``fence`` is current; return the command's reply.

    Raises :class:`perseus.errors.StaleEpoch` when refused: stop acting as the active connector.
    """
    numkeys, keys_and_args = fence.call(command, keys, args)
    try:
        try:
            return await client.evalsha(FENCED_WRITE_SHA, numkeys, *keys_and_args)
        except Exception as exc:
            if not _no_script(exc):
                raise
            return await client.eval(FENCED_WRITE_LUA, numkeys, *keys_and_args)  # also caches it
    except Exception as exc:
        if (stale := _refused(exc)) is not None:
            raise stale from None
        raise


def fenced_write_sync(client: Any, fence: Fence, command: str, keys: Sequence[str], *args: object) -> Any:
    """:func:`fenced_write` for a blocking client (``redis.Redis``)."""
    numkeys, keys_and_args = fence.call(command, keys, args)
    try:
        try:
            return client.evalsha(FENCED_WRITE_SHA, numkeys, *keys_and_args)
        except Exception as exc:
            if not _no_script(exc):
                raise
            return client.eval(FENCED_WRITE_LUA, numkeys, *keys_and_args)
    except Exception as exc:
        if (stale := _refused(exc)) is not None:
            raise stale from None
        raise


if __name__ == "__main__":
    sys.stdout.write(FENCED_WRITE_SHA + "\n" if "--sha" in sys.argv[1:] else FENCED_WRITE_LUA)
