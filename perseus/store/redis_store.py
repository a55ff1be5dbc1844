"""Redis access: claims, fenced writes, renewals and the network stream.

The only module that imports redis. Every operation is one command or one single-key Lua script, so
it runs unchanged on a Redis Cluster (DESIGN §2.1: no KEYS, SCAN or cross-slot MGET); a
``redis+cluster://`` URL selects redis-py's cluster client, which routes each command by its key.
The one exception is the read side's batches (:meth:`RedisStore.board`, :meth:`RedisStore.events_many`):
on a single server each is one multi-key script, on a cluster one command per key in a pipeline.
The keeper's batched renewals (:meth:`RedisStore.renew_many`) are one single-key script per claim in
a non-transactional pipeline, split per cluster node by :meth:`RedisStore.renewal_groups`.
The status key and the epoch counter live in different hash slots (their names are Livermore's), so
a claim takes two round trips: a new epoch first, then the compare-and-set on the status key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from pydantic import BaseModel, Field, ValidationError
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from perseus import metrics
from perseus.errors import ConfigError, Server, ServiceUnavailable
from perseus.host.grid import Renewal, groups_of
from perseus.host.workers import WorkerRecord
from perseus.keys import (
    WORKERS_INDEX,
    epoch_key,
    handoff_key,
    pause_key,
    standby_index_key,
    standby_key,
    status_key,
    stream_key,
    worker_key,
)
from perseus.models import HandoffReservation, InstanceStatus, PauseRecord, StandbyRecord
from perseus.store.redis_url import is_sentinel_url, parse_sentinel_url

__all__ = [
    "RedisStore",
    "RedisClient",
    "make_client",
    "is_cluster_url",
    "is_sentinel_url",
    "SentinelRedis",
    "ClaimGates",
    "ClaimReply",
    "FenceReply",
    "StatusRead",
    "HolderEpoch",
    "parse_status",
    "parse_standby",
    "RedisError",
]

#: A single server (or a proxy in front of one) or a Redis Cluster; RedisStore works on both.
RedisClient = aioredis.Redis | RedisCluster

#: URL schemes that select a Redis Cluster client: ``redis+cluster://host:port`` (any one node of the
#: cluster; the others are discovered) or ``rediss+cluster://`` for TLS.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# Claim the status key if nobody holds it. Atomic, so there is no window between "is it free?" and
# "take it" (Livermore's NX-then-GET race). A key we already hold (same instanceId: a retried
# activity) is reported as ours. A key with no TTL can only be a ghost from a buggy writer: it is
# replaced rather than honoured, since it would otherwise block the exchange forever.
# With ARGV[4] > 0 (a standby whose watch saw the holder go silent), a key its holder left unrenewed
# past its renew deadline plus the margin — the record's renewDeadlineMs plus ARGV[6] of its own
# intervals, or, for a record that does not declare its deadline, ARGV[4] of its intervals; told
# by the record's own ttlMs and heartbeatIntervalMs and Redis's clock — is taken over ('taken', with
# the old record): that holder's connector has stopped, and waiting for the TTL only adds a gap.
# With ARGV[5] = '1' only such a key is taken: an absent one is left alone ('vacant'), for a
# standby whose claim-over finds the vacancy a handoff reserved for another host.
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
local lapsed = false
if not cur and ARGV[5] == '1' then
  return {'vacant', false, -2}
end
if cur then
  local pttl = redis.call('PTTL', KEYS[1])
  local ok, doc = pcall(cjson.decode, cur)
  if ok and type(doc) == 'table' and doc['instanceId'] == ARGV[3] then
    -- Written again, unchanged: a write of this connection, so a WAIT after it vouches for the
    -- claim an earlier attempt made (replication is in order), not for nothing.
    redis.call('SET', KEYS[1], cur, 'KEEPTTL')
    return {'self', cur, pttl}
  end
  local limit = tonumber(ARGV[4])
  if limit > 0 and pttl > 0 and ok and type(doc) == 'table' then
    local ttl = tonumber(doc['ttlMs'])
    local every = tonumber(doc['heartbeatIntervalMs'])
    if ttl ~= nil and every ~= nil and every > 0 then
      local line = limit * every
      local declared = tonumber(doc['renewDeadlineMs'])
      if declared ~= nil and declared > 0 then
        line = declared + tonumber(ARGV[6]) * every
      end
      lapsed = ttl - pttl > line
    end
  end
  if pttl ~= -1 and not lapsed then
    return {'held', cur, pttl}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if lapsed then
  return {'taken', ARGV[1], tonumber(ARGV[2]), cur}
end
return {'claimed', ARGV[1], tonumber(ARGV[2])}
"""

# Take the next epoch, never below the caller's floor: a surviving workflow remembers the highest
# epoch it has seen, so epochs keep increasing even after Redis lost its data.
_NEXT_EPOCH = """
local e = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if e <= floor then
  e = floor + 1
  redis.call('SET', KEYS[1], e)
end
return e
"""

# A fenced write: applies only while instanceId and epoch still match, so a stale holder learns
# that it lost the claim instead of overwriting the new holder. 'renew' also resets the TTL; a
# 'merge' keeps the remaining TTL (and never leaves the key without one); 'delete' releases.
_FENCED = """
local cur = redis.call('GET', KEYS[1])
if not cur then return {'missing', false} end
local ok, doc = pcall(cjson.decode, cur)
if not ok or type(doc) ~= 'table' then return {'fenced', cur} end
if doc['instanceId'] ~= ARGV[1] or tonumber(doc['epoch']) ~= tonumber(ARGV[2]) then
  return {'fenced', cur}
end
if ARGV[4] == 'delete' then
  redis.call('DEL', KEYS[1])
  return {'ok', false}
end
local patch = cjson.decode(ARGV[3])
for k, v in pairs(patch) do doc[k] = v end
local out = cjson.encode(doc)
local ttl = tonumber(ARGV[5])
if ARGV[4] ~= 'renew' then
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then ttl = left end
end
redis.call('SET', KEYS[1], out, 'PX', ttl)
return {'ok', out}
"""

# The failsafe's re-establishment (docs/design.md, "Failsafe", invariant 7): a holder whose
# connector still acts on promises finds its key absent when Redis answers again (expired during the
# outage, or Redis came back empty) and writes its own record back — same instanceId, same epoch,
# SET NX with its TTL. A key that is there is not touched: ours ('ok', a renewal crossed this write)
# or anyone else's ('fenced', the current record: stop at once, as a failed renewal does).
# With KEYS[2] (the epoch counter, on a single server) the counter is raised to the epoch first, in
# the same step, so the next claim's epoch is above it even after Redis lost its data.
_REESTABLISH = """
if KEYS[2] then
  local e = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if e < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and type(doc) == 'table' and doc['instanceId'] == ARGV[1]
      and tonumber(doc['epoch']) == tonumber(ARGV[2]) then
    return {'ok', cur}
  end
  return {'fenced', cur}
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return {'ok', ARGV[3]}
"""

# Raise the epoch counter to at least ARGV[1] (never lowers it): the counter's half of the
# re-establishment on a cluster, where the counter lives in another hash slot than the status key.
_RAISE_EPOCH = """
local e = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if e < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return math.max(e, tonumber(ARGV[1]))
"""

# XADD exactly once per eventId: a retried activity finds its entry among the newest ones and
# returns its id instead of writing a duplicate. Retries come within seconds or minutes; the
# window (the newest 500 entries of one exchange's stream) is far wider than that.
_XADD_ONCE = """
local recent = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 500)
for _, entry in ipairs(recent) do
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 'eventId' and f[i + 1] == ARGV[1] then return entry[1] end
  end
end
local args = {'XADD', KEYS[1], 'MINID', '~', ARGV[2], '*'}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
return redis.call(unpack(args))
"""


# Take a marker key unless it exists (one key, atomic): returns nil when taken, else the holder's value.
_TAKE_MARKER = """
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# Delete a marker only while it still holds our value (a lease that outlived us is someone else's).
_DROP_MARKER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# A rate window shared by every process that posts to one webhook, in one hash key (cluster-safe).
# Grants a send when nobody else's send is in flight, the server-imposed pause (not_before) is over
# and every (limit, window) pair has room; the grant is fenced: the holder's token and a new fence
# number, which only the holder's release clears. The clock is Redis' own, so workers' clocks never
# disagree about a window. Returns {fence, 0} on a grant, else {0, milliseconds to wait}.
_RATE_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'holder', 'holder_until', 'not_before', 'sends')
local wait = 0
if h[1] and h[2] and tonumber(h[2]) > now then wait = math.min(tonumber(h[2]) - now, 25) end
local nb = tonumber(h[3] or '0') or 0
if nb > now then wait = math.max(wait, nb - now) end
local longest = 0
for i = 3, #ARGV, 2 do longest = math.max(longest, tonumber(ARGV[i + 1])) end
local sends = {}
for s in string.gmatch(h[4] or '', '[^,]+') do
  local v = tonumber(s)
  if v and v > now - longest then sends[#sends + 1] = v end
end
for i = 3, #ARGV, 2 do
  local limit, window = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local inside = 0
  for _, v in ipairs(sends) do if v > now - window then inside = inside + 1 end end
  if inside >= limit then
    local oldest = sends[#sends - limit + 1]
    wait = math.max(wait, oldest + window - now + 1)
  end
end
if wait > 0 then return {0, wait} end
sends[#sends + 1] = now
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'holder_until', now + tonumber(ARGV[2]),
  'sends', table.concat(sends, ','))
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[2]), longest, nb - now) + 60000)
return {fence, 0}
"""

# End a granted send: clear the in-flight mark if the fence is still ours, and apply the pause the
# webhook's answer asked for (from anyone: a pause only ever makes every sender more careful).
# Returns the milliseconds until the next send may start.
_RATE_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nb = tonumber(redis.call('HGET', KEYS[1], 'not_before') or '0') or 0
local pause = tonumber(ARGV[2])
if pause > 0 and now + pause > nb then
  nb = now + pause
  redis.call('HSET', KEYS[1], 'not_before', nb)
end
if redis.call('HGET', KEYS[1], 'fence') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'holder', 'holder_until')
  -- The send counts from its answer, not its grant: the webhook saw it somewhere in between, so
  -- windows measured from the later moment can never be shorter than the webhook's own.
  local sends = redis.call('HGET', KEYS[1], 'sends') or ''
  local head = string.match(sends, '^(.*),[^,]*$')
  redis.call('HSET', KEYS[1], 'sends', (head and (head .. ',') or '') .. now)
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 and ttl < nb - now + 60000 then redis.call('PEXPIRE', KEYS[1], nb - now + 60000) end
return math.max(0, nb - now)
"""


# The read side's batches on a single server: every key of a batch read in one script, so redis-py
# handles one command and one reply instead of hundreds (it spends ~13 µs of CPU per pipelined
# command — a timeout context and a response callback each — which made most of the status board's
# own time with 100 exchanges). On a cluster the keys live in many slots, so there each keeps its
# own command in a pipeline. KEYS: status key, standby index, per exchange.
_BOARD = """
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = redis.call('GET', KEYS[i])
  out[#out + 1] = redis.call('PTTL', KEYS[i])
  out[#out + 1] = redis.call('ZREVRANGE', KEYS[i + 1], 0, -1)
end
return out
"""

# XREVRANGE on several streams (single server only, as above). ARGV: the oldest bound, then
# (newest bound, count) per stream.
_STREAMS = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('XREVRANGE', key, ARGV[2 * i], ARGV[1], 'COUNT', ARGV[2 * i + 1])
end
return out
"""

#: Above this many entries a batch of stream reads is pipelined even on a single server: one script
#: holds the server for its whole run, a pipeline lets other clients in between its commands.
SCRIPTED_READ_MAX_ENTRIES = 2000


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in CLUSTER_SCHEMES


#: Bounds on every Redis call: opening a connection and waiting for one reply. A frozen server costs
#: a caller at most these (times the client's few retries), never an unbounded wait.
CONNECT_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_S = 5.0
#: Connections one client keeps open at most. A caller beyond them waits for one to come free (up
#: to SOCKET_TIMEOUT_S) instead of failing at once: a worker whose hundreds of renewals fall due in the
#: same instant as its activities' writes queued for a moment, never "Too many connections".
POOL_CONNECTIONS = 200
#: How long a start-up or readiness check waits for PING, retries included.
CHECK_TIMEOUT_S = 5.0


#: How long a write behind Sentinel waits for its replicas' acknowledgement (``WAIT``). Replicas are
#: asked for it at once (Redis sends GETACK on WAIT), so on a healthy link it takes a round trip;
#: past this the write does not count (a renewal is not renewed, a claim not taken) and is retried.
WAIT_TIMEOUT_MS = 200


class PerseusCluster(RedisCluster):
    """redis-py's cluster client, carrying how many replicas of each master must acknowledge a
    claim or renewal (``redis+cluster://…?wait_replicas=N``; default 0: a cluster may have none)."""

    wait_replicas: int = 0


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool (the primary's address asked of the Sentinels at each connect) that waits for
    a free connection instead of failing, as the single server's pool does."""


class SentinelRedis(aioredis.Redis):
    """A client of the primary a Sentinel group names; it follows failovers (redis-py re-asks the
    Sentinels on each new connection, and a demoted primary's READONLY drops the connection).

    ``wait_replicas`` is how many replicas must acknowledge a claim or renewal (from the URL)."""

    sentinels: Sentinel
    wait_replicas: int = 0

    async def recheck_primary(self) -> None:
        """Ask the Sentinels again who the primary is; if it moved, idle connections to the old one
        are dropped now and busy ones as they come back (redis-py re-asks only on a new connection,
        and a deposed primary keeps accepting writes until a Sentinel demotes it — up to 10 s)."""
        pool = self.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        with contextlib.suppress(RedisError, OSError):
            await pool.get_master_address()  # type: ignore[no-untyped-call]

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await self.sentinels.aclose()


def _sentinel_client(url: str, options: dict[str, Any], max_connections: int | None) -> SentinelRedis:
    target = parse_sentinel_url(url)
    auth = {"username": target.username, "password": target.password}
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel_options["decode_responses"] = True
    if target.ssl:
        sentinel_options["ssl"] = True
    if target.sentinel_auth:
        sentinel_options.update(auth)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels), sentinel_kwargs=sentinel_options, **options
    )
    client = sentinel.master_for(
        target.master,
        redis_class=SentinelRedis,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=max_connections or POOL_CONNECTIONS,
        timeout=SOCKET_TIMEOUT_S,
        db=target.db,
        ssl=target.ssl,
        **auth,
    )
    assert isinstance(client, SentinelRedis)
    client.sentinels = sentinel
    client.wait_replicas = target.wait_replicas
    return client


def make_client(url: str, *, max_connections: int | None = None) -> RedisClient:
    """A client that is not connected yet (connections open lazily); the caller closes it.

    ``redis://`` / ``rediss://`` give a single-server client; ``redis+cluster://`` /
    ``rediss+cluster://`` give a Redis Cluster client seeded from the node in the URL (database 0
    only, as cluster mode has no other). ``max_connections`` bounds the pool (per node on a
    cluster); None: ``POOL_CONNECTIONS`` on a single server, redis-py's default on a cluster. On a
    single server a caller beyond the bound waits for a free connection (up to the socket timeout).
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": 30,
    }
    if is_sentinel_url(url):
        return _sentinel_client(url, options, max_connections)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in CLUSTER_SCHEMES:
        if max_connections is not None:
            options["max_connections"] = max_connections
        # wait_replicas is Perseus' own option (below); redis-py must not see it.
        query = parse_qsl(parts.query, keep_blank_values=True)
        wait = [v for k, v in query if k == "wait_replicas"]
        if wait and not wait[-1].isdigit():
            raise ConfigError(f"wait_replicas must be a whole number of replicas, not {wait[-1]!r}")
        rest = urlencode([(k, v) for k, v in query if k != "wait_replicas"])
        plain = urlunsplit((CLUSTER_SCHEMES[scheme], parts.netloc, parts.path, rest, parts.fragment))
        cluster = PerseusCluster.from_url(plain, **options)
        assert isinstance(cluster, PerseusCluster)
        cluster.wait_replicas = int(wait[-1]) if wait else 0
        return cluster
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections or POOL_CONNECTIONS, timeout=SOCKET_TIMEOUT_S, **options
    )
    return aioredis.Redis.from_pool(pool)


def parse_status(raw: str) -> InstanceStatus:
    """A status key's JSON as its model; ValueError (a ``ValidationError``) when it is not one.

    The only place the status JSON is parsed: callers get models from :class:`RedisStore`.
    """
    return InstanceStatus.model_validate_json(raw)


def parse_standby(raw: str) -> StandbyRecord | None:
    """A standby record's JSON as its model; None for an unreadable one (readers skip it)."""
    try:
        return StandbyRecord.model_validate_json(raw)
    except ValidationError:
        return None


def parse_pause(raw: str | None) -> PauseRecord | None:
    """A pause record, or None (no key; an unreadable one is still a pause, told by its PTTL)."""
    if raw is None:
        return None
    try:
        return PauseRecord.model_validate_json(raw)
    except ValidationError:
        return None


def parse_handoff(raw: str | None) -> HandoffReservation | None:
    """A handoff's reservation, or None (no key, or one no Perseus wrote: it reserves for nobody,
    so that a stray key can never hold a vacancy back)."""
    if raw is None:
        return None
    try:
        return HandoffReservation.model_validate_json(raw)
    except ValidationError:
        return None


@dataclass(frozen=True)
class ClaimGates:
    """What may refuse an automatic claim, read in one round trip: the pause and a handoff's
    reservation (each key's raw value as read, and its PTTL: -2 none, -1 no TTL)."""

    pause: PauseRecord | None
    pause_pttl_ms: int
    handoff_raw: str | None
    handoff_pttl_ms: int

    @property
    def handoff(self) -> HandoffReservation | None:
        return parse_handoff(self.handoff_raw)


def _malformed(exc: ValidationError) -> str:
    """One short line on why a record does not parse: the first problem and where."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where}: {first['msg']}"[:160] if where else str(first["msg"])[:160]


@dataclass(frozen=True)
class StatusRead:
    """One status key as read: its record, or why it could not be read, and its PTTL.

    ``record`` is None when the key is absent or unreadable; ``malformed`` says why an existing
    value is unreadable (None otherwise). ``pttl_ms`` is Redis' PTTL: -2 no key, -1 no TTL.
    """

    record: InstanceStatus | None
    pttl_ms: int
    malformed: str | None = None

    @property
    def exists(self) -> bool:
        """Whether the key holds anything (a readable record or not)."""
        return self.record is not None or self.malformed is not None

    @classmethod
    def parse(cls, raw: str | None, pttl_ms: int) -> StatusRead:
        if raw is None:
            return cls(record=None, pttl_ms=pttl_ms)
        try:
            return cls(record=parse_status(raw), pttl_ms=pttl_ms)
        except ValidationError as exc:
            return cls(record=None, pttl_ms=pttl_ms, malformed=_malformed(exc))


class _EpochOnly(BaseModel):
    epoch: int | None = None
    interval_ms: int | None = Field(default=None, alias="heartbeatIntervalMs")
    deadline_ms: int | None = Field(default=None, alias="renewDeadlineMs")


@dataclass(frozen=True)
class HolderEpoch:
    """What a standby's watch learns of its exchange at every beat: whether the status key holds
    anything, and the epoch in it (None: none readable).

    Not a whole :class:`StatusRead` on purpose: the watch runs once per beat for every standby of a
    host and needs only these two. Validating just ``epoch`` costs about 1.6 µs a beat, the whole
    record 4.3 µs (the ``json.loads`` the keeper used to do, 3.9 µs).
    """

    held: bool
    epoch: int | None = None
    #: The status key's remaining time to live (Redis's clock); None when nothing holds it.
    pttl_ms: int | None = None
    #: The holder's own heartbeat interval (None: its record does not say — Livermore's).
    interval_s: float | None = None
    #: The holder's declared renew deadline (None: its record does not say — an earlier release's
    #: or Livermore's; its line is then the latest any holder may have).
    renew_deadline_s: float | None = None

    @classmethod
    def parse(cls, raw: str | None, pttl_ms: int | None = None) -> HolderEpoch:
        if raw is None:
            return cls(held=False)
        ttl = pttl_ms if pttl_ms is not None and pttl_ms >= 0 else None
        try:
            doc = _EpochOnly.model_validate_json(raw)
        except ValidationError:
            return cls(held=True, pttl_ms=ttl)
        every = doc.interval_ms / 1000 if doc.interval_ms is not None and doc.interval_ms > 0 else None
        deadline = doc.deadline_ms / 1000 if doc.deadline_ms is not None and doc.deadline_ms > 0 else None
        return cls(held=True, epoch=doc.epoch, pttl_ms=ttl, interval_s=every, renew_deadline_s=deadline)


@dataclass(frozen=True)
class ClaimReply:
    """A claim's outcome, and the record in the key now: ours (``claimed``, ``self``) or the holder's."""

    outcome: Literal["claimed", "taken", "self", "held", "vacant"]
    holder: StatusRead
    #: The lapsed holder's record a ``taken`` claim replaced.
    previous: StatusRead | None = None

    @property
    def pttl_ms(self) -> int:
        return self.holder.pttl_ms


class FenceReply:
    """A fenced write's outcome and the record it left (``ok``) or found (``fenced``).

    The record is parsed on first use only: a renewal runs once per beat for every claim of a host
    and mostly needs just the outcome.
    """

    __slots__ = ("outcome", "_raw", "_read")

    def __init__(self, outcome: Literal["ok", "missing", "fenced"], raw: str | None) -> None:
        self.outcome = outcome
        self._raw = raw
        self._read: StatusRead | None = None

    @property
    def raw(self) -> str | None:
        """The record as Redis holds it (unparsed): what a failsafe holder writes back."""
        return self._raw

    @property
    def status(self) -> StatusRead:
        """The record (None after a delete, when the key was missing, or when it is unreadable)."""
        if self._read is None:
            self._read = StatusRead.parse(self._raw, -1)
        return self._read

    @property
    def record(self) -> InstanceStatus | None:
        return self.status.record


def _pairs(flat: list[str]) -> dict[str, str]:
    """A stream entry's ``[field, value, ...]`` as a dict (what redis-py makes of XREVRANGE's)."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _unavailable(exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(f"Redis unreachable: {exc}", server=Server.REDIS)


class RedisStore:
    """Perseus' Redis operations over one client (injected; this class never connects by itself)."""

    def __init__(self, client: RedisClient, *, wait_replicas: int | None = None) -> None:
        self.client = client
        #: Replicas that must acknowledge a claim, an epoch or a renewal before it counts (``WAIT``
        #: on the connection that wrote it). None: the client's own (1 behind Sentinel, else 0).
        self.wait_replicas = (
            wait_replicas if wait_replicas is not None else getattr(client, "wait_replicas", 0)
        )
        self._claim = client.register_script(_CLAIM)
        self._next_epoch = client.register_script(_NEXT_EPOCH)
        self._fenced = client.register_script(_FENCED)
        self._reestablish = client.register_script(_REESTABLISH)
        self._raise_epoch = client.register_script(_RAISE_EPOCH)
        self._xadd_once = client.register_script(_XADD_ONCE)
        self._take_marker = client.register_script(_TAKE_MARKER)
        self._drop_marker = client.register_script(_DROP_MARKER)
        self._rate_acquire = client.register_script(_RATE_ACQUIRE)
        self._rate_release = client.register_script(_RATE_RELEASE)
        self._board = client.register_script(_BOARD)
        self._streams = client.register_script(_STREAMS)
        #: Multi-key scripts only where every key lives on one server.
        self._single_server = not isinstance(client, RedisCluster)

    async def _run(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _unavailable(exc) from None

    def _not_acked(self, acked: object) -> ServiceUnavailable | None:
        """Why a write its replicas did not acknowledge does not count (None: it does)."""
        if isinstance(acked, Exception):
            return _unavailable(acked)
        if int(acked) >= self.wait_replicas:  # type: ignore[call-overload]
            return None
        return ServiceUnavailable(
            f"Redis write acknowledged by {acked} of {self.wait_replicas} replica(s) within "
            f"{WAIT_TIMEOUT_MS} ms: not counted (a failover could lose it)",
            server=Server.REDIS,
        )

    async def _recheck_primary(self) -> None:
        # The usual reason a write goes unacknowledged behind Sentinel: this server is no longer
        # the primary its replica follows. Bounded: a renewal's deadline does not wait for it.
        if isinstance(self.client, SentinelRedis):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT_TIMEOUT_MS / 1000):
                    await self.client.recheck_primary()

    async def _wait_args(self, key: str) -> tuple[tuple[str | int, ...], dict[str, Any]]:
        """The WAIT command for a pipeline that writes ``key``: on a cluster sent to the node that
        holds the key, so that it rides on the same connection as the write (redis-py's cluster
        pipeline sends each node its commands on one connection, in order)."""
        command: tuple[str | int, ...] = ("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)
        if self._single_server:
            return command, {}
        assert isinstance(self.client, RedisCluster)
        try:
            node = self.client.get_node_from_key(key)
        except (RedisError, RedisClusterException):
            node = None
        if node is None:
            await self._run(self.client.initialize())  # no slot map yet: load it
            node = self.client.get_node_from_key(key)
        return command, {"target_nodes": node}

    async def _acked(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """``script``'s reply, once ``wait_replicas`` replicas hold what it wrote.

        ``WAIT`` counts the writes of its own connection, so it rides in one pipeline with the
        script (a pool could hand a lone WAIT another connection, which wrote nothing: a vacuous
        yes). Not acknowledged in time: ServiceUnavailable, as if Redis had not answered — the
        write may stand on the primary, but nothing is decided on it.
        """
        if not self.wait_replicas:
            return await self._run(script(keys=keys, args=args))
        for attempt in range(2):
            wait = await self._wait_args(keys[0])
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                pipe.execute_command(*wait[0], **wait[1])
                answer, acked = await self._run(pipe.execute(raise_on_error=False))
            if isinstance(answer, NoScriptError) and attempt == 0:
                # A server that restarted (or a replica just promoted) does not know it yet.
                await self._run(self.client.script_load(script.script))
                continue
            if isinstance(answer, (RedisConnectionError, RedisTimeoutError, OSError)):
                raise _unavailable(answer)
            if isinstance(answer, Exception):
                raise answer
            if (why := self._not_acked(acked)) is not None:
                await self._recheck_primary()
                raise why
            return answer
        raise ServiceUnavailable("Redis forgot the script twice in a row", server=Server.REDIS)

    # --- idempotency of the API's write routes ---------------------------------------------------

    async def claim_request(self, key: str, ttl_s: int) -> str | None:
        """Take ``key`` for a request now running (SET NX): None if taken now, else what it holds
        (``pending`` while the first request runs, then its stored answer)."""
        if await self._run(self.client.set(key, "pending", nx=True, ex=ttl_s)):
            return None
        held = await self._run(self.client.get(key))
        return str(held) if held is not None else "pending"

    async def settle_request(self, key: str, answer: str | None, ttl_s: int) -> None:
        """Store the request's answer under ``key`` (or free the key: None, nothing was done)."""
        if answer is None:
            await self._run(self.client.delete(key))
        else:
            await self._run(self.client.set(key, answer, ex=ttl_s))

    async def ping(self) -> bool:
        return bool(await self._run(self.client.ping()))

    async def check_reachable(self, seconds: float = CHECK_TIMEOUT_S) -> None:
        """PING within ``seconds`` (retries included), or ServiceUnavailable in one line."""
        try:
            await asyncio.wait_for(self.ping(), seconds)
        except TimeoutError:
            raise ServiceUnavailable(
                f"Redis did not answer within {seconds:g}s", server=Server.REDIS
            ) from None

    async def next_epoch(self, exchange_id: int, floor: int) -> int:
        return int(await self._acked(self._next_epoch, [epoch_key(exchange_id)], [floor]))

    async def claim(
        self,
        exchange_id: int,
        payload: dict[str, object],
        ttl_ms: int,
        *,
        take_lapsed_after: float = 0.0,
        declared_margin: float = 0.0,
        only_lapsed: bool = False,
    ) -> ClaimReply:
        """Claim the status key if it is free (or ours already).

        ``take_lapsed_after`` (intervals; 0: never): also take it over from a holder that has not
        renewed it for longer than its declared renew deadline (``renewDeadlineMs``) plus
        ``declared_margin`` of its own intervals — or, when its record does not declare one, than
        ``take_lapsed_after`` of them (outcome ``taken``, the old record in ``previous``).
        ``only_lapsed``: leave a free key alone (outcome ``vacant``)."""
        outcome, raw, pttl, *previous = await self._acked(
            self._claim,
            [status_key(exchange_id)],
            [
                json.dumps(payload),
                ttl_ms,
                str(payload["instanceId"]),
                take_lapsed_after,
                "1" if only_lapsed else "0",
                declared_margin,
            ],
        )
        before = StatusRead.parse(previous[0], -1) if previous else None
        return ClaimReply(outcome=outcome, holder=StatusRead.parse(raw, int(pttl)), previous=before)

    async def fenced(
        self,
        exchange_id: int,
        instance_id: str,
        epoch: int,
        *,
        mode: Literal["merge", "renew", "delete"],
        patch: dict[str, object] | None = None,
        ttl_ms: int = 0,
    ) -> FenceReply:
        keys = [status_key(exchange_id)]
        args: list[str | int] = [instance_id, epoch, json.dumps(patch or {}), mode, ttl_ms]
        if mode == "renew":
            # A renewal extends how long its holder may act: it counts only once replicas hold it.
            # A merge or a release does not (a lost release costs the TTL, never safety).
            outcome, raw = await self._acked(self._fenced, keys, args)
        else:
            outcome, raw = await self._run(self._fenced(keys=keys, args=args))
        metrics.fenced_write(mode, outcome)
        return FenceReply(outcome=outcome, raw=raw or None)

    async def reestablish(self, exchange_id: int, record: dict[str, object], ttl_ms: int) -> FenceReply:
        """Write the holder's own ``record`` back if its status key is absent (the failsafe's
        invariant 7): same instanceId and epoch, with ``ttl_ms``; the epoch counter is raised to
        the epoch first. ``ok``: the key holds this claim now (written, or a renewal was there
        first); ``fenced``: someone else's record is there (``raw``) — the holder stops. Counted
        like a renewal: only once the replicas hold it."""
        instance_id, epoch = str(record["instanceId"]), int(str(record["epoch"]))
        args: list[str | int] = [instance_id, epoch, json.dumps(record), ttl_ms]
        if self._single_server:
            keys = [status_key(exchange_id), epoch_key(exchange_id)]
        else:
            # Two hash slots: the counter first, so that no claim can ever take this epoch again.
            await self._acked(self._raise_epoch, [epoch_key(exchange_id)], [epoch])
            keys = [status_key(exchange_id)]
        outcome, raw = await self._acked(self._reestablish, keys, args)
        metrics.fenced_write("reestablish", outcome)
        return FenceReply(outcome=outcome, raw=raw or None)

    def renewal_groups(self, exchange_ids: list[int]) -> list[list[int]]:
        """Indices of ``exchange_ids`` grouped by the server holding their status keys: one group on
        a single server, one per node on a cluster (each group is one :meth:`renew_many`)."""
        if self._single_server:
            return [list(range(len(exchange_ids)))]
        assert isinstance(self.client, RedisCluster)
        nodes: list[str] = []
        for exchange_id in exchange_ids:
            try:
                node = self.client.get_node_from_key(status_key(exchange_id))
            except (RedisError, RedisClusterException):  # no slot map yet, or a slot uncovered now
                node = None
            # Unknown ones share one pipeline, which the client routes itself (following MOVED).
            nodes.append(node.name if node is not None else "?")
        return groups_of(nodes)

    async def renew_many(self, renewals: list[Renewal]) -> list[FenceReply | Exception]:
        """Many claims' renewals in one round trip: the fenced renewal of :meth:`fenced` per claim,
        one command each in a non-transactional pipeline, and each claim's own outcome.

        A failure of the whole round trip raises ServiceUnavailable; an error Redis answered for one
        command is returned in that claim's place (ServiceUnavailable for a connection error on a
        cluster node; any other as redis-py raised it), the others' outcomes stand. Every key is in
        one slot per command, so on a cluster the client sends each node its commands.
        """
        sha = self._fenced.sha
        async with self.client.pipeline(transaction=False) as pipe:
            for r in renewals:
                # EVALSHA directly: the pipeline's script check would add a SCRIPT EXISTS round trip
                # to every batch, and a server that does not know the script answers NOSCRIPT (below).
                # As a plain command: redis-py's cluster pipeline refuses its evalsha() method (it
                # cannot load scripts per node itself), yet routes the command by its one key.
                pipe.execute_command(
                    "EVALSHA",
                    sha,
                    1,
                    status_key(r.exchange_id),
                    r.instance_id,
                    r.epoch,
                    json.dumps(r.patch),
                    "renew",
                    r.ttl_ms,
                )
            if self.wait_replicas:
                # One WAIT for the whole batch: on a single primary the pipeline is one connection;
                # on a cluster a batch is one node's (renewal_groups), and the WAIT goes to it.
                wait = await self._wait_args(status_key(renewals[0].exchange_id))
                pipe.execute_command(*wait[0], **wait[1])
            answers = await self._run(pipe.execute(raise_on_error=False))
        unacked = self._not_acked(answers.pop()) if self.wait_replicas else None
        if unacked is not None:
            await self._recheck_primary()
        out: list[FenceReply | Exception] = []
        for r, answer in zip(renewals, answers, strict=True):
            if isinstance(answer, NoScriptError):
                # A server that restarted (or flushed its scripts) forgot it: the lone call loads it.
                try:
                    out.append(
                        await self.fenced(
                            r.exchange_id,
                            r.instance_id,
                            r.epoch,
                            mode="renew",
                            patch=r.patch,
                            ttl_ms=r.ttl_ms,
                        )
                    )
                except Exception as exc:  # this claim's outcome, as the lone call would raise it
                    out.append(exc)
            elif isinstance(answer, (RedisConnectionError, RedisTimeoutError, OSError)):
                out.append(_unavailable(answer))
            elif isinstance(answer, Exception):
                out.append(answer)
            else:
                outcome, raw = answer
                metrics.fenced_write("renew", outcome)
                if outcome == "ok" and unacked is not None:
                    # Renewed on the primary only: a failover could lose it, so it does not count.
                    # (A 'fenced' or 'missing' answer stands: it only ever stops a connector sooner.)
                    out.append(unacked)
                else:
                    out.append(FenceReply(outcome=outcome, raw=raw or None))
        return out

    async def append_event(
        self, exchange_name: str, event_id: str, min_id: str, fields: dict[str, str]
    ) -> str:
        flat: list[str] = []
        for name, value in fields.items():
            flat += [name, value]
        return str(
            await self._run(self._xadd_once(keys=[stream_key(exchange_name)], args=[event_id, min_id, *flat]))
        )

    async def status(self, exchange_id: int) -> StatusRead:
        """The exchange's status record (parsed) and its PTTL in ms, in one pipelined round trip."""
        raw, pttl = await self.raw_status(exchange_id)
        return StatusRead.parse(raw, pttl)

    async def statuses(self, exchange_ids: list[int]) -> list[StatusRead]:
        """Many status records in one pipelined round trip (one command per key: cluster-safe)."""
        return [StatusRead.parse(raw, pttl) for raw, pttl in await self.raw_statuses(exchange_ids)]

    async def raw_status(self, exchange_id: int) -> tuple[str | None, int]:
        """The status key's exact JSON (or None) and its PTTL, in one round trip: for wire checks in
        tests and benchmarks, and under :meth:`holder`. Perseus' own code reads records through
        :meth:`status`."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(status_key(exchange_id))
            pipe.pttl(status_key(exchange_id))
            raw, pttl = await self._run(pipe.execute())
        return raw, int(pttl)

    async def raw_statuses(self, exchange_ids: list[int]) -> list[tuple[str | None, int]]:
        """:meth:`raw_status` of many keys in one pipelined round trip (tests and benchmarks)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for exchange_id in exchange_ids:
                pipe.get(status_key(exchange_id))
                pipe.pttl(status_key(exchange_id))
            flat = await self._run(pipe.execute())
        return [(flat[i], int(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def epoch(self, exchange_id: int) -> int:
        value = await self._run(self.client.get(epoch_key(exchange_id)))
        return int(value) if value else 0

    async def events(
        self, exchange_name: str, *, newest: str = "+", oldest: str = "-", count: int | None = None
    ) -> list[tuple[str, dict[str, str]]]:
        """Stream entries newest first (XREVRANGE)."""
        rows = await self._run(self.client.xrevrange(stream_key(exchange_name), newest, oldest, count=count))
        return [(entry_id, dict(fields)) for entry_id, fields in rows]

    async def read_after(
        self, exchange_name: str, after: str, *, block_ms: int, count: int = 100
    ) -> list[tuple[str, dict[str, str]]]:
        """Entries newer than ``after``, oldest first, waiting up to ``block_ms`` for the first one.

        One XREAD BLOCK on one stream (streams of different exchanges may live in different cluster
        slots). ``block_ms`` must stay below the client's 5 s socket timeout.
        """
        reply = await self._run(
            self.client.xread({stream_key(exchange_name): after}, count=count, block=block_ms)
        )
        if not reply:
            return []
        # RESP2 answers [[key, entries]], RESP3 {key: [entries]}; either way one stream's entries.
        streams = list(reply.values()) if isinstance(reply, dict) else [item[1] for item in reply]
        return [(entry_id, dict(fields)) for rows in streams for entry_id, fields in rows]

    async def entries_after(
        self, exchange_name: str, after: str, *, count: int
    ) -> list[tuple[str, dict[str, str]]]:
        """At most ``count`` entries strictly newer than ``after``, oldest first (XRANGE, no wait)."""
        rows = await self._run(self.client.xrange(stream_key(exchange_name), f"({after}", "+", count=count))
        return [(entry_id, dict(fields)) for entry_id, fields in rows]

    # --- markers (one key each; used to deliver notifications once per event) ---------------------

    async def marker(self, key: str) -> str | None:
        value = await self._run(self.client.get(key))
        return str(value) if value is not None else None

    async def take_marker(self, key: str, value: str, ttl_ms: int) -> str | None:
        """Set ``key`` to ``value`` for ``ttl_ms`` unless it exists: None if taken, else its value."""
        current = await self._run(self._take_marker(keys=[key], args=[value, ttl_ms]))
        return str(current) if current is not None else None

    async def set_marker(self, key: str, value: str, ttl_ms: int) -> None:
        await self._run(self.client.set(key, value, px=ttl_ms))

    async def drop_marker(self, key: str, value: str) -> bool:
        """Delete ``key`` only while it still holds ``value``."""
        return bool(await self._run(self._drop_marker(keys=[key], args=[value])))

    # --- a rate window shared by processes (one key per webhook) -------------------------------

    async def rate_acquire(
        self, key: str, token: str, lease_ms: int, windows: list[tuple[int, int]]
    ) -> tuple[int, int]:
        """Try to start a send: ``(fence, 0)`` when granted, else ``(0, ms to wait)``.

        ``windows`` are ``(at most N sends, per M milliseconds)``; the grant holds the key's
        in-flight mark for ``lease_ms`` at most (a crashed sender does not block the others longer).
        """
        flat: list[int] = []
        for limit, window_ms in windows:
            flat += [limit, window_ms]
        fence, wait = await self._run(self._rate_acquire(keys=[key], args=[token, lease_ms, *flat]))
        return int(fence), int(wait)

    async def rate_release(self, key: str, fence: int, pause_ms: int) -> int:
        """End the send granted with ``fence``; ``pause_ms`` (> 0) pauses every sender that long."""
        return int(await self._run(self._rate_release(keys=[key], args=[fence, pause_ms])))

    # --- read side: many streams at once ---------------------------------------------------------

    async def events_many(
        self, reads: list[tuple[str, str, int]], *, oldest: str = "-"
    ) -> list[list[tuple[str, dict[str, str]]]]:
        """Newest-first entries of several streams in one pipelined round trip.

        Each read is ``(exchange_name, newest bound, count)``; a bound may be exclusive (``(id``). One
        XREVRANGE per stream, never a multi-key command, so it runs on a cluster as well.
        """
        if not reads:
            return []
        if self._single_server and sum(count for _, _, count in reads) <= SCRIPTED_READ_MAX_ENTRIES:
            args: list[str | int] = [oldest]
            for _, newest, count in reads:
                args += [newest, count]
            keys = [stream_key(exchange_name) for exchange_name, _, _ in reads]
            raw = await self._run(self._streams(keys=keys, args=args))
            return [[(entry_id, _pairs(flat)) for entry_id, flat in rows] for rows in raw]
        async with self.client.pipeline(transaction=False) as pipe:
            for exchange_name, newest, count in reads:
                pipe.xrevrange(stream_key(exchange_name), newest, oldest, count=count)
            replies = await self._run(pipe.execute())
        return [[(entry_id, dict(fields)) for entry_id, fields in rows] for rows in replies]

    # --- standbys ----------------------------------------------------------------------------------

    async def put_standby(
        self, exchange_id: int, instance_id: str, payload: dict[str, object], ttl_ms: int, priority: int
    ) -> None:
        """Write (or renew) a standby's record with its TTL and list it in the index; one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(standby_key(exchange_id, instance_id), json.dumps(payload), px=ttl_ms)
            pipe.zadd(standby_index_key(exchange_id), {instance_id: priority})
            await self._run(pipe.execute())

    async def renew_standby(
        self,
        exchange_id: int,
        instance_id: str,
        payload: dict[str, object],
        ttl_ms: int,
        priority: int,
        *,
        create: bool,
    ) -> tuple[bool, HolderEpoch, int, HandoffReservation | None]:
        """Renew a standby's record and read the exchange's status key, pause and handoff
        reservation, in one round trip.

        Without ``create`` the record is only renewed if it still exists (``SET … XX``): a record its
        workflow dropped stays dropped. Returns whether the record is there, and whether anyone holds
        the exchange, at which epoch and for how much longer, the pause key's PTTL (-2: none), and
        the reservation of a handoff under way (None: none).
        """
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(standby_key(exchange_id, instance_id), json.dumps(payload), px=ttl_ms, xx=not create)
            pipe.zadd(standby_index_key(exchange_id), {instance_id: priority})
            pipe.get(status_key(exchange_id))
            pipe.pttl(status_key(exchange_id))
            pipe.pttl(pause_key(exchange_id))
            pipe.get(handoff_key(exchange_id))
            written, _, raw, pttl, paused_ms, handoff = await self._run(pipe.execute())
        return bool(written), HolderEpoch.parse(raw, pttl), int(paused_ms), parse_handoff(handoff)

    async def holder(self, exchange_id: int) -> HolderEpoch:
        """Who holds the exchange, at which epoch and for how much longer: a standby's extra look at
        the moment the holder it watches would pass its renew deadline."""
        return HolderEpoch.parse(*await self.raw_status(exchange_id))

    async def standbys(self, exchange_id: int) -> list[StandbyRecord]:
        """Live standby records, highest priority first; index members whose key expired are pruned,
        unreadable records skipped."""
        members = await self._run(self.client.zrevrange(standby_index_key(exchange_id), 0, -1))
        if not members:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.get(standby_key(exchange_id, member))
            raws = await self._run(pipe.execute())
        dead = [m for m, raw in zip(members, raws, strict=True) if raw is None]
        if dead:
            await self._run(self.client.zrem(standby_index_key(exchange_id), *dead))
        return [record for raw in raws if raw is not None and (record := parse_standby(raw)) is not None]

    async def board(self, exchange_ids: list[int]) -> tuple[list[StatusRead], list[list[str]]]:
        """Every status record (GET + PTTL, as :meth:`statuses`) and every standby index (members,
        highest priority first) of several exchanges, in one pipelined round trip; one command per
        key on a cluster, one script on a single server."""
        if not exchange_ids:
            return [], []
        if self._single_server:
            keys = [k for i in exchange_ids for k in (status_key(i), standby_index_key(i))]
            flat = await self._run(self._board(keys=keys, args=[]))
            return (
                [StatusRead.parse(flat[i], int(flat[i + 1])) for i in range(0, len(flat), 3)],
                [list(flat[i + 2]) for i in range(0, len(flat), 3)],
            )
        async with self.client.pipeline(transaction=False) as pipe:
            for exchange_id in exchange_ids:
                pipe.get(status_key(exchange_id))
                pipe.pttl(status_key(exchange_id))
            for exchange_id in exchange_ids:
                pipe.zrevrange(standby_index_key(exchange_id), 0, -1)
            flat = await self._run(pipe.execute())
        n = 2 * len(exchange_ids)
        statuses = [StatusRead.parse(flat[i], int(flat[i + 1])) for i in range(0, n, 2)]
        return statuses, [list(members) for members in flat[n:]]

    async def board_details(
        self,
        reads: list[tuple[str, str, int]],
        standbys: list[tuple[int, str]],
        pauses: Sequence[int] = (),
    ) -> tuple[
        list[list[tuple[str, dict[str, str]]]],
        list[StandbyRecord | None],
        list[tuple[PauseRecord | None, int]],
    ]:
        """Newest-first entries of several streams (as :meth:`events_many`), the records of
        the listed standbys (``(exchange_id, instance_id)``; None where one expired or is
        unreadable) and the pause (record, PTTL) of each exchange in ``pauses``, in one pipelined
        round trip. Read-only: :meth:`standbys` prunes expired members."""
        if not reads and not standbys and not pauses:
            return [], [], []
        async with self.client.pipeline(transaction=False) as pipe:
            for exchange_name, newest, count in reads:
                pipe.xrevrange(stream_key(exchange_name), newest, "-", count=count)
            for exchange_id, member in standbys:
                pipe.get(standby_key(exchange_id, member))
            for exchange_id in pauses:
                pipe.get(pause_key(exchange_id))
                pipe.pttl(pause_key(exchange_id))
            replies = await self._run(pipe.execute())
        n, m = len(reads), len(reads) + len(standbys)
        streams = [[(entry_id, dict(fields)) for entry_id, fields in rows] for rows in replies[:n]]
        records = [None if raw is None else parse_standby(raw) for raw in replies[n:m]]
        rest = replies[m:]
        paused = [(parse_pause(rest[i]), int(rest[i + 1])) for i in range(0, len(rest), 2)]
        return streams, records, paused

    # --- the pause (maintenance mode) ---------------------------------------------------------------

    async def pause(self, exchange_id: int) -> tuple[PauseRecord | None, int]:
        """The exchange's pause record (None: no pause, or unreadable) and the key's PTTL (-2: none)."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(pause_key(exchange_id))
            pipe.pttl(pause_key(exchange_id))
            raw, pttl = await self._run(pipe.execute())
        return parse_pause(raw), int(pttl)

    async def claim_gates(self, exchange_id: int) -> ClaimGates:
        """The pause and the handoff reservation of an exchange, in one round trip (the keys may
        live on different cluster nodes: the pipeline sends each its reads)."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(pause_key(exchange_id))
            pipe.pttl(pause_key(exchange_id))
            pipe.get(handoff_key(exchange_id))
            pipe.pttl(handoff_key(exchange_id))
            pause_raw, pause_pttl, handoff_raw, handoff_pttl = await self._run(pipe.execute())
        return ClaimGates(parse_pause(pause_raw), int(pause_pttl), handoff_raw, int(handoff_pttl))

    # --- a planned handoff's reservation ---------------------------------------------------------

    async def reserve_handoff(self, exchange_id: int, reservation: HandoffReservation, ttl_ms: int) -> None:
        """Reserve the exchange for a handoff's target for ``ttl_ms`` (set before the release)."""
        value = reservation.model_dump_json(by_alias=True)
        await self._run(self.client.set(handoff_key(exchange_id), value, px=ttl_ms))

    async def drop_handoff(self, exchange_id: int, raw: str) -> bool:
        """End the reservation read as ``raw``, unless another handoff has reserved it since."""
        return await self.drop_marker(handoff_key(exchange_id), raw)

    async def set_pause(self, exchange_id: int, record: PauseRecord, ttl_ms: int) -> None:
        """Pause (or re-pause) the exchange until the key expires ``ttl_ms`` from now."""
        await self._run(
            self.client.set(pause_key(exchange_id), record.model_dump_json(by_alias=True), px=ttl_ms)
        )

    async def clear_pause(self, exchange_id: int) -> bool:
        """End the pause now; False if there was none."""
        return bool(await self._run(self.client.delete(pause_key(exchange_id))))

    # --- host workers ------------------------------------------------------------------------------

    async def announce_worker(self, record: WorkerRecord, ttl_ms: int) -> None:
        """Write (or renew) a worker's announcement and list it, scored by when it expires."""
        expires = int(time.time() * 1000) + ttl_ms
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(
                worker_key(record.host, record.worker_id), record.model_dump_json(by_alias=True), px=ttl_ms
            )
            pipe.zadd(WORKERS_INDEX, {f"{record.host}|{record.worker_id}": expires})
            await self._run(pipe.execute())

    async def withdraw_worker(self, host: str, worker_id: str) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.delete(worker_key(host, worker_id))
            pipe.zrem(WORKERS_INDEX, f"{host}|{worker_id}")
            await self._run(pipe.execute())

    async def workers(self) -> list[WorkerRecord]:
        """Every live worker's announcement; index members past their expiry are pruned."""
        now = int(time.time() * 1000)
        await self._run(self.client.zremrangebyscore(WORKERS_INDEX, "-inf", now))
        members = await self._run(self.client.zrange(WORKERS_INDEX, 0, -1))
        if not members:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for member in members:
                host, _, worker_id = member.partition("|")
                pipe.get(worker_key(host, worker_id))
            raws = await self._run(pipe.execute())
        out = []
        for raw in raws:
            if raw is None:
                continue
            try:
                out.append(WorkerRecord.model_validate_json(raw))
            except ValidationError:
                continue  # a foreign or older writer's record: not a worker this view can describe
        return out

    async def drop_standby(self, exchange_id: int, instance_id: str) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.delete(standby_key(exchange_id, instance_id))
            pipe.zrem(standby_index_key(exchange_id), instance_id)
            await self._run(pipe.execute())
