"""Fenced writes (perseus/fencing.py) against the harness' real Redis: a stale epoch is refused, the
current one applied; the same through a blocking client; keys that share the status key's slot."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from perseus.errors import ConfigError, StaleEpoch
from perseus.fencing import FENCED_WRITE_SHA, Fence, fenced_key, fenced_write, fenced_write_sync
from perseus.keys import status_key
from tests.conftest import Servers


@pytest_asyncio.fixture
async def rds(servers: Servers) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(servers.redis_url, decode_responses=True)
    yield client
    await client.aclose()


def an_exchange() -> int:
    """An exchange id no catalog row uses, so no other test's claim is touched."""
    return random.randrange(10_000_000, 20_000_000)


def holder(instance_id: str, epoch: int) -> str:
    return json.dumps({"exchangeId": 1, "instanceId": instance_id, "epoch": epoch, "hostname": "h"})


@pytest.mark.unit
def test_fenced_keys_share_the_status_keys_slot() -> None:
    for exchange_id in (1, 5, 42, 9999):
        assert key_slot(fenced_key(exchange_id, "candles:BTC-USD").encode()) == key_slot(
            status_key(exchange_id).encode()
        )
    assert fenced_key(5, "ticks") == "{exchange:5:status}:ticks"


@pytest.mark.unit
def test_fence_from_the_childs_environment() -> None:
    env = {"PERSEUS_EXCHANGE_ID": "5", "PERSEUS_EPOCH": "9", "PERSEUS_INSTANCE_ID": "inst-9"}
    fence = Fence.from_env(env)
    assert fence == Fence(exchange_id=5, epoch=9, instance_id="inst-9")
    assert fence.activated(12) == Fence(exchange_id=5, epoch=12, instance_id="")
    assert Fence.from_env({"PERSEUS_EXCHANGE_ID": "5"}).epoch == 0  # a warm standby: fenced out
    with pytest.raises(ConfigError, match="PERSEUS_EXCHANGE_ID is not set"):
        Fence.from_env({})
    with pytest.raises(ConfigError, match="must be integers"):
        Fence.from_env({"PERSEUS_EXCHANGE_ID": "5", "PERSEUS_EPOCH": "x"})
    with pytest.raises(ConfigError, match="at least one key"):
        fence.call("SET", [], ["v"])


@pytest.mark.integration
async def test_a_stale_epoch_is_refused_and_the_current_one_applied(rds: aioredis.Redis) -> None:
    ex = an_exchange()
    key = fenced_key(ex, "last")
    await rds.set(status_key(ex), holder("inst-1", 7), px=60_000)
    await rds.script_flush()  # the first call finds no cached script and falls back to EVAL

    assert await fenced_write(rds, Fence(ex, 7, "inst-1"), "SET", [key], "from-7") == "OK"
    assert await rds.script_exists(FENCED_WRITE_SHA) == [True]
    assert await rds.get(key) == "from-7"

    with pytest.raises(StaleEpoch, match=r"FENCED epoch 6 is stale: .* names epoch 7, instance inst-1"):
        await fenced_write(rds, Fence(ex, 6, "inst-1"), "SET", [key], "from-6")
    with pytest.raises(StaleEpoch, match="names epoch 7, instance inst-1"):
        await fenced_write(rds, Fence(ex, 7, "someone-else"), "SET", [key], "from-other")
    assert await rds.get(key) == "from-7"  # nothing written by the refused ones

    # The epoch alone (a promoted warm standby's fence) is enough to pass; any command whose keys
    # come first works, and its own reply comes back.
    stream = fenced_key(ex, "ticks")
    entry = await fenced_write(rds, Fence(ex, 7), "XADD", [stream], "*", "symbol", "BTC-USD", "epoch", 7)
    assert (await rds.xrange(stream)) == [(entry, {"symbol": "BTC-USD", "epoch": "7"})]

    # A newer claim takes over: the old holder's writes bounce, the new one's land.
    await rds.set(status_key(ex), holder("inst-2", 8), px=60_000)
    with pytest.raises(StaleEpoch, match="FENCED epoch 7 is stale"):
        await fenced_write(rds, Fence(ex, 7, "inst-1"), "SET", [key], "late write from 7")
    assert await fenced_write(rds, Fence(ex, 8, "inst-2"), "SET", [key], "from-8") == "OK"
    assert await rds.get(key) == "from-8"

    # No claim at all (expired): refused.
    await rds.delete(status_key(ex))
    with pytest.raises(StaleEpoch, match="is gone"):
        await fenced_write(rds, Fence(ex, 8, "inst-2"), "SET", [key], "after expiry")
    assert await rds.get(key) == "from-8"
    await rds.delete(key, stream)


@pytest.mark.integration
def test_a_blocking_client_is_fenced_the_same_way(servers: Servers) -> None:
    ex = an_exchange()
    key = fenced_key(ex, "count")
    with redis.Redis.from_url(servers.redis_url, decode_responses=True) as rds:
        rds.set(status_key(ex), holder("inst-3", 3), px=60_000)
        assert fenced_write_sync(rds, Fence(ex, 3, "inst-3"), "INCRBY", [key], 5) == 5
        with pytest.raises(StaleEpoch, match="FENCED epoch 2 is stale"):
            fenced_write_sync(rds, Fence(ex, 2, "inst-3"), "INCRBY", [key], 5)
        assert rds.get(key) == "5"
        rds.delete(key, status_key(ex))
