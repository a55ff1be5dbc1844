"""Perseus on a Redis Cluster with a replica per master (three of each, the pinned Valkey), with
``?wait_replicas=1``: claims, epochs and renewals count once the key's master has its replica's
acknowledgement, and a claim held by the keeper follows a master's failover to its replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from perseus.connectors.base import ConnectorHost
from perseus.devstack import binaries, services
from perseus.errors import ConfigError, ServiceUnavailable
from perseus.host.keeper import LeaseKeeper
from perseus.keys import status_key
from perseus.models import Claim, LeaseRequest
from perseus.store.redis_store import PerseusCluster, RedisStore, make_client
from tests.integration.test_redis_cluster import start_cluster_nodes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MASTERS = 3
#: Seconds: a manual CLUSTER FAILOVER moves the slots in well under one renew deadline (10 s).
INTERVAL = 5.0


def _cli() -> str:
    return str(binaries.redis_server().parent / "valkey-cli")


async def _ask(port: int, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        _cli(), "-p", str(port), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with asyncio.timeout(10):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return ""
    return out.decode(errors="replace").strip()


@dataclass
class Cluster:
    ports: list[int]
    children: list[services.Service]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0?wait_replicas=1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster-replicas")
    children: list[services.Service] = []

    async def start() -> list[int]:
        ports = await start_cluster_nodes(
            base, 2 * MASTERS, replicas=1, node_timeout_ms=3000, children=children
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            infos = [await _ask(p, "cluster", "info") for p in ports]
            roles = [await _ask(p, "info", "replication") for p in ports]
            if (
                all("cluster_state:ok" in i for i in infos)
                and sum("role:slave" in r and "master_link_status:up" in r for r in roles) == MASTERS
            ):
                return ports
            await asyncio.sleep(0.2)
        raise AssertionError("the cluster did not reach cluster_state:ok with a replica per master")

    try:
        ports = asyncio.run(start())
        yield Cluster(ports, children)
    finally:
        for child in children:
            child.stop()


@pytest_asyncio.fixture
async def store(cluster: Cluster) -> AsyncIterator[RedisStore]:
    client = make_client(cluster.url)
    assert isinstance(client, PerseusCluster)
    await client.initialize()
    yield RedisStore(client)
    await client.aclose()


def _replica_of(cluster: Cluster, client: PerseusCluster, key: str) -> int:
    master = client.get_node_from_key(key)
    assert master is not None
    # Asked of every node: the client knows the masters only.
    for port in cluster.ports:
        out = subprocess.run(
            [_cli(), "-p", str(port), "info", "replication"], capture_output=True, text=True, timeout=10
        ).stdout
        if "role:slave" in out and f"master_port:{master.port}" in out:
            return port
    raise AssertionError(f"no replica of {master.name}")


def test_the_wait_option_is_perseus_own() -> None:
    plain = make_client("redis+cluster://127.0.0.1:1/0")
    assert isinstance(plain, PerseusCluster) and RedisStore(plain).wait_replicas == 0
    with pytest.raises(ConfigError, match="whole number"):
        make_client("redis+cluster://127.0.0.1:1/0?wait_replicas=all")


async def test_claims_and_renewals_wait_for_the_masters_replica(cluster: Cluster, store: RedisStore) -> None:
    client = store.client
    assert isinstance(client, PerseusCluster) and store.wait_replicas == 1
    xid = 7_000_000 + uuid.uuid4().int % 1_000_000
    epoch = await store.next_epoch(xid, floor=0)
    assert (await store.claim(xid, {"instanceId": "a", "epoch": epoch}, 30_000)).outcome == "claimed"
    assert (await store.fenced(xid, "a", epoch, mode="renew", ttl_ms=30_000)).outcome == "ok"
    replica = _replica_of(cluster, client, status_key(xid))
    assert await _ask(replica, "client", "pause", "3000", "ALL") == "OK"
    with pytest.raises(ServiceUnavailable, match="acknowledged by 0 of 1"):
        await store.fenced(xid, "a", epoch, mode="renew", ttl_ms=30_000)

    async def renewed() -> bool:
        with contextlib.suppress(ServiceUnavailable):
            return (await store.fenced(xid, "a", epoch, mode="renew", ttl_ms=30_000)).outcome == "ok"
        return False

    deadline = time.monotonic() + 60
    while not await renewed():
        assert time.monotonic() < deadline, "renewals never acknowledged again"
        await asyncio.sleep(0.2)


async def test_a_held_claim_follows_its_masters_failover(cluster: Cluster, store: RedisStore) -> None:
    client = store.client
    assert isinstance(client, PerseusCluster)
    keeper = LeaseKeeper(store, ConnectorHost())
    xid = 7_000_000 + uuid.uuid4().int % 1_000_000
    try:
        epoch = await store.next_epoch(xid, floor=0)
        claim = Claim(instance_id=str(uuid.uuid4()), epoch=epoch)
        doc = {"instanceId": claim.instance_id, "epoch": epoch, "hostname": "k"}
        assert (await store.claim(xid, doc, ttl_ms=int(3 * INTERVAL * 1000))).outcome == "claimed"
        held = keeper.hold(
            LeaseRequest(
                workflow_id=f"instance-c{xid}-h",
                exchange_id=xid,
                claim=claim,
                heartbeat_interval_s=INTERVAL,
                term_s=600,
            )
        )
        replica = _replica_of(cluster, client, status_key(xid))
        deadline = time.monotonic() + 60
        while held.renewals < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert await _ask(replica, "cluster", "failover") == "OK"
        while "role:master" not in await _ask(replica, "info", "replication"):
            assert time.monotonic() < deadline, "the replica was not promoted"
            await asyncio.sleep(0.1)
        mark = held.renewals
        deadline = time.monotonic() + 60
        while held.renewals < mark + 2:
            assert held.ended is None, held.ended
            assert time.monotonic() < deadline, "no renewals after the failover"
            await asyncio.sleep(0.1)
        assert held.ended is None
        env = {**os.environ}
        raw = subprocess.run(
            [_cli(), "-p", str(replica), "get", status_key(xid)], capture_output=True, text=True, env=env
        ).stdout
        assert json.loads(raw)["epoch"] == epoch
    finally:
        await keeper.close()
