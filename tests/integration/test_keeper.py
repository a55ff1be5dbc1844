"""The lease keeper against the real Redis: renewals never wait for Temporal, and only a definite
"the workflow has closed" ends a loop nobody is attached to."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.host import HostActivities
from perseus.connectors.base import ConnectorHost
from perseus.connectors.simulated import SimulatedConnector
from perseus.core.lifecycle import Role
from perseus.errors import ClaimLost, ClaimMissing, ConnectorFailed, RenewDeadline, Server, ServiceUnavailable
from perseus.host import keeper as keeper_module
from perseus.host.grid import Renewal
from perseus.host.keeper import HeldClaim, LeaseKeeper, WatchedStandby
from perseus.keys import handoff_key, status_key
from perseus.models import (
    Claim,
    ConnectorFailure,
    ConnectorRequest,
    ConnectorSpec,
    HandoffReservation,
    LeaseRequest,
    PauseRecord,
    StandbyLeaseRequest,
    StandbyRecord,
)
from perseus.store.db import Catalog
from perseus.store.redis_store import FenceReply, HolderEpoch, RedisClient, RedisStore, make_client
from perseus.timing import renew_deadline_s
from tests.conftest import Servers
from tests.integration.proxy import StallableProxy

pytestmark = pytest.mark.integration

INTERVAL = 0.5


async def claimed(store: RedisStore, interval: float = INTERVAL) -> LeaseRequest:
    """A status key held by a fresh claim, as a registration would leave it."""
    exchange_id = 900_000 + uuid.uuid4().int % 100_000
    claim = Claim(instance_id=str(uuid.uuid4()), epoch=7)
    doc = {"instanceId": claim.instance_id, "epoch": claim.epoch, "hostname": "k"}
    await store.client.set(status_key(exchange_id), json.dumps(doc), px=int(3 * interval * 1000))
    return LeaseRequest(
        workflow_id=f"instance-k{exchange_id}-h",
        exchange_id=exchange_id,
        claim=claim,
        heartbeat_interval_s=interval,
        term_s=3600,
    )


def standby_request(exchange_id: int) -> StandbyLeaseRequest:
    record = StandbyRecord(
        exchange_id=exchange_id,
        exchange_name="k",
        host="h",
        hostname="h",
        instance_id=str(uuid.uuid4()),
        workflow_id=f"instance-k{exchange_id}-h",
        registered_at="2026-01-01T00:00:00.000Z",
        last_heartbeat="2026-01-01T00:00:00.000Z",
        ttl_ms=int(3 * INTERVAL * 1000),
        heartbeat_interval_ms=int(INTERVAL * 1000),
    )
    return StandbyLeaseRequest(record=record, heartbeat_interval_s=INTERVAL, term_s=3600)


def host_activities(
    store: RedisStore,
    catalog: Catalog,
    http: httpx.AsyncClient,
    keeper: LeaseKeeper,
    connectors: ConnectorHost,
) -> HostActivities:
    """Host "k"'s activities over ``keeper``, with no IP lookup."""
    return HostActivities(
        hostname="k",
        store=store,
        catalog=catalog,
        http=http,
        ip_services=[],
        ip_timeout_s=1,
        connectors=connectors,
        keeper=keeper,
    )


@pytest.fixture
def quick_orphan_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keeper_module, "DETACHED_FLOOR_S", 0.0)
    monkeypatch.setattr(keeper_module, "DETACHED_INTERVALS", 1.0)


@pytest.mark.usefixtures("quick_orphan_checks")
async def test_a_temporal_that_never_answers_holds_up_no_renewal(store: RedisStore) -> None:
    asked = 0

    async def never_answers(workflow_id: str) -> bool | None:
        nonlocal asked
        asked += 1
        await asyncio.sleep(3600)  # a frozen server: the call just hangs
        return None

    keeper = LeaseKeeper(store, ConnectorHost(), workflow_closed=never_answers)
    req = await claimed(store)
    try:
        held = keeper.hold(req)  # nobody attached: the orphan question is asked, and hangs
        await asyncio.sleep(12 * INTERVAL)
        assert asked >= 2 and held.ended is None
        assert held.renewals >= 9  # one per interval, unhindered
        assert await store.client.pttl(status_key(req.exchange_id)) > 0
    finally:
        await keeper.close()


@pytest.mark.usefixtures("quick_orphan_checks")
async def test_only_a_closed_workflow_ends_a_detached_loop(store: RedisStore) -> None:
    verdicts: list[bool | None] = [None, False, True]

    async def answers(workflow_id: str) -> bool | None:
        return verdicts.pop(0) if verdicts else True

    keeper = LeaseKeeper(store, ConnectorHost(), workflow_closed=answers)
    req = await claimed(store)
    try:
        held = keeper.hold(req)
        for _ in range(100):
            if held.ended is not None:
                break
            await asyncio.sleep(0.1)
        assert held.ended is not None and "has ended" in str(held.ended)
        assert verdicts == []  # "unknown" and "running" kept it renewing; "closed" ended it
        assert await store.client.get(status_key(req.exchange_id)) is None  # released
    finally:
        await keeper.close()


async def test_a_late_cancellation_does_not_stop_the_watch_a_newer_activity_attached_to(
    store: RedisStore,
) -> None:
    exchange_id = 900_000 + uuid.uuid4().int % 100_000
    req = standby_request(exchange_id)
    record = req.record
    keeper = LeaseKeeper(store, ConnectorHost())
    try:
        old = keeper.watch(req)
        with keeper.attached(old):
            await asyncio.sleep(INTERVAL)
        # The workflow cancelled the old watch and started the next one, which re-attached first...
        new = keeper.watch(req)
        assert new is old
        with keeper.attached(new):
            keeper.stop_watching(old)  # ...then the old activity heard its cancellation
            await asyncio.sleep(4 * INTERVAL)  # longer than the record's TTL
            assert new.ended is None and not new.task.done()  # type: ignore[union-attr]
            assert await store.client.get(f"exchange:{exchange_id}:standby:{record.instance_id}")
        keeper.stop_watching(new)  # nobody attached: the workflow's own stop does stop it
        await asyncio.sleep(0.1)
        assert new.task is not None and new.task.done()
    finally:
        await keeper.close()


def scheduled_at(moment: datetime) -> ActivityEnvironment:
    """An activity environment whose attempt the server scheduled at ``moment``."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, current_attempt_scheduled_time=moment)
    return env


async def test_a_watch_reports_to_the_newest_activity_not_to_one_whose_cancellation_is_on_its_way(
    store: RedisStore, catalog: Catalog
) -> None:
    """The chaos suite: a promote signal cancelled a standby's watch and started the next one; the
    old activity, its cancellation not yet heard, took the holder's lapse when the watch saw it, and
    its outcome went nowhere. The new one saw only the key run out later: a TTL vacancy, whose rule
    waits out the old deadline — 5.9 s without a connector after a crash, over B. A report belongs
    to the newest activity attached."""
    exchange_id = 900_000 + uuid.uuid4().int % 100_000
    # The holder's own interval is 2 s (TTL 6 s): past its deadline plus the margin, its key still
    # lives long enough for the watch (every 0.5 s) to see it there.
    ttl_ms = 6000
    doc = {"instanceId": "holder", "epoch": 3, "hostname": "k", "ttlMs": ttl_ms, "heartbeatIntervalMs": 2000}
    await store.client.set(status_key(exchange_id), json.dumps(doc), px=ttl_ms)  # a live holder
    keeper = LeaseKeeper(store, ConnectorHost())
    http = httpx.AsyncClient()
    host = host_activities(store, catalog, http, keeper, ConnectorHost())
    req = standby_request(exchange_id)
    try:
        first, then = (
            datetime(2026, 12, 7, 9, 18, 53, tzinfo=UTC),
            datetime(2026, 12, 7, 9, 18, 54, tzinfo=UTC),
        )
        old = asyncio.ensure_future(scheduled_at(first).run(host.hold_standby, req))
        watched = req.record.workflow_id
        await until(lambda: watched in keeper.standbys and keeper.standbys[watched].attached == 1)
        new = asyncio.ensure_future(scheduled_at(then).run(host.hold_standby, req))
        await until(lambda: keeper.standbys[watched].attached == 2)
        # The holder stops renewing: its key passes the claim-over line while it is still there.
        await store.client.set(status_key(exchange_id), json.dumps(doc), px=1500)
        outcome = await asyncio.wait_for(new, 5 * INTERVAL)
        assert outcome.vacant and outcome.holder_silent and outcome.lapsed
        assert not old.done()  # it waits for its cancellation, and reports nothing
        old.cancel()
        with contextlib.suppress(BaseException):
            await old
    finally:
        await keeper.close()
        await http.aclose()


async def test_a_watch_tells_a_key_that_ran_out_from_one_that_vanished_while_renewed(
    store: RedisStore,
) -> None:
    """A holder that stopped renewing is seen past its deadline before its key expires (lapsed: the
    standby may act at once); a key deleted while fresh (Redis lost it) is not (the standby waits)."""
    keeper = LeaseKeeper(store, ConnectorHost())
    try:
        for lapse in (True, False):
            held = await claimed(store)  # set once, never renewed: it runs out after 3 intervals
            # Out of step with the key, as a standby's beats are with its holder's renewals: one look
            # then falls in the last 0.9 intervals of the key's life (in step, the look at the end
            # of the third interval comes a moment too early — then the standby waits, to be safe).
            await asyncio.sleep(0.3 * INTERVAL)
            watched = keeper.watch(standby_request(held.exchange_id))
            with keeper.attached(watched):
                if not lapse:
                    await asyncio.sleep(0.5 * INTERVAL)
                    await store.client.delete(status_key(held.exchange_id))
                for _ in range(100):
                    if watched.vacant:
                        break
                    await asyncio.sleep(0.05)
                assert watched.vacant
                assert watched.holder_past_deadline is lapse
            keeper.stop_watching(watched)
    finally:
        await keeper.close()


class HeldLooks:
    """Lets a test choose when the watch's looks at the status key count: while held, what a look
    reads from Redis is dropped, as if the watch had not looked yet (its next beat comes later)."""

    def __init__(self, keeper: LeaseKeeper) -> None:
        self.held = False
        saw = keeper._saw

        def gated(watched: WatchedStandby, holder: HolderEpoch) -> None:
            if not self.held:
                saw(watched, holder)

        keeper._saw = gated  # type: ignore[method-assign]


async def test_a_lapse_reported_once_does_not_make_a_later_vacancy_look_lapsed(
    store: RedisStore, catalog: Catalog
) -> None:
    """The chaos suite's split brain (0.33 s): the watch saw its holder lapse and reported it; the
    claim-over race went to another standby, whose key Redis lost before this watch ever looked at
    it. That vacancy is a lost key, not the old holder's TTL running out: the next outcome must not
    say ``lapsed`` (which lets a standby act at once instead of waiting out the claim-over line)."""
    exchange_id = 900_000 + uuid.uuid4().int % 100_000
    key = status_key(exchange_id)
    ttl_ms = int(3 * INTERVAL * 1000)

    def holder(epoch: int) -> str:
        return json.dumps(
            {"instanceId": f"holder-{epoch}", "epoch": epoch, "hostname": "k", "ttlMs": ttl_ms,
             "heartbeatIntervalMs": int(INTERVAL * 1000)}
        )  # fmt: skip

    # The old holder, renewed 1.2 intervals ago... and never again: past its deadline plus the margin.
    await store.client.set(key, holder(3), px=int(ttl_ms - 2.4 * INTERVAL * 1000))
    keeper = LeaseKeeper(store, ConnectorHost())
    looks = HeldLooks(keeper)
    http = httpx.AsyncClient()
    host = host_activities(store, catalog, http, keeper, ConnectorHost())
    req = standby_request(exchange_id)
    try:
        watched = keeper.watch(req)
        await until(lambda: watched.wakes)
        looks.held = True  # from here the watch sees nothing until the test says so
        first = await ActivityEnvironment().run(host.hold_standby, req)
        assert first.vacant and first.lapsed and first.holder_silent
        # Another standby won the claim-over race (epoch 4) and Redis then lost its key, all before
        # this watch looked again.
        async with store.client.pipeline(transaction=True) as both:
            both.set(key, holder(4), px=ttl_ms)
            both.delete(key)
            await both.execute()
        looks.held = False
        second = await ActivityEnvironment().run(host.hold_standby, req)
        assert second.vacant and not second.holder_silent
        assert not second.lapsed, "a lost key read as the old holder's lapse: the standby would act at once"
    finally:
        await keeper.close()
        await http.aclose()


@pytest.mark.parametrize("declared_ms", [3400, None], ids=["declared", "undeclared"])
async def test_a_watch_sees_a_silent_holder_at_its_deadline_not_at_its_next_beat(
    store: RedisStore, declared_ms: int | None
) -> None:
    """A holder that stops renewing is seen the moment its key passes the holder's renew deadline plus
    the margin (Redis's clock), while the key is still there: the watch looks then, not at its next
    beat. Never earlier: the key's age is past the deadline whenever the watch says so. The deadline
    is the one the record declares (this release's 1.7 intervals: seen at 3.6 s at 2 s, before an
    undeclared holder's line), or 2 intervals for a record that declares none (4.2 s)."""
    interval = 2.0
    exchange_id = 900_000 + uuid.uuid4().int % 100_000
    doc = {"instanceId": "silent", "epoch": 3, "hostname": "k", "ttlMs": 6000, "heartbeatIntervalMs": 2000}
    if declared_ms is not None:
        doc["renewDeadlineMs"] = declared_ms
    line_ms = (declared_ms if declared_ms is not None else 2 * 2000) + 0.1 * 2000
    await store.client.set(status_key(exchange_id), json.dumps(doc), px=6000)  # its last renewal
    keeper = LeaseKeeper(store, ConnectorHost())
    base = standby_request(exchange_id)
    req = base.model_copy(update={"heartbeat_interval_s": interval})
    try:
        watched = keeper.watch(req)
        with keeper.attached(watched):
            await asyncio.sleep(0.1)
            assert watched.request is not None and not watched.holder_silent and not watched.vacant
            for _ in range(200):
                if watched.holder_silent or watched.vacant:
                    break
                await watched.beat.wait(0.05)
            pttl = await store.client.pttl(status_key(exchange_id))
            assert watched.holder_silent and not watched.vacant, "seen only once the key was gone"
            assert 0 < pttl < 6000 - line_ms  # past the deadline + margin, before the TTL
            assert pttl > 6000 - line_ms - 300, "seen well after the line"
        keeper.stop_watching(watched)
    finally:
        await keeper.close()


async def test_a_holder_that_missed_a_renewal_gets_its_standbys_workflow_a_heads_up_before_the_line(
    store: RedisStore,
) -> None:
    """The standby's looks drift to a fixed phase after the holder's renewals; a holder that stops
    right after one is then seen late well before the claim-over line, and the standby's workflow is
    told once (a task now, while nothing depends on it). Never while the holder renews."""
    interval = 1.0
    ttl_ms = int(3 * interval * 1000)
    exchange_id = 900_000 + uuid.uuid4().int % 100_000
    doc = {"instanceId": "h1", "epoch": 4, "hostname": "k", "ttlMs": ttl_ms, "heartbeatIntervalMs": 1000}
    told: list[tuple[str, str, float]] = []

    async def heads_up(workflow_id: str, reason: str) -> None:
        age = 3 * interval - await store.client.pttl(status_key(exchange_id)) / 1000
        told.append((workflow_id, reason, age))

    keeper = LeaseKeeper(store, ConnectorHost(), heads_up=heads_up)
    req = standby_request(exchange_id).model_copy(update={"heartbeat_interval_s": interval})
    try:
        await store.client.set(status_key(exchange_id), json.dumps(doc), px=ttl_ms)
        watched = keeper.watch(req)
        with keeper.attached(watched):
            # The holder renews on time for seven intervals (its looks move a tenth of one a beat).
            for _ in range(7):
                await asyncio.sleep(interval)
                await store.client.set(status_key(exchange_id), json.dumps(doc), px=ttl_ms)
            assert told == []
            assert watched.holder_renewed_ago is not None
            for _ in range(400):  # ...then stops right after that renewal
                if watched.holder_silent:
                    break
                await watched.beat.wait(0.02)
            assert watched.holder_silent
        keeper.stop_watching(watched)
        await asyncio.sleep(0)  # the heads-up runs in a task of its own
        assert [(w, r.startswith("the holder (epoch 4) has not renewed for")) for w, r, _ in told] == [
            (req.record.workflow_id, True)
        ], told
        # Late (past a missed renewal), and long enough before the claim-over line (2.1 intervals)
        # for a run cached on the dead holder's worker to move: not at a look just before the line.
        age = told[0][2]
        assert 1.2 * interval < age < 1.7 * interval, told
    finally:
        await keeper.close()


class Deadlines:
    """Stands in for the watchdog process: notes the deadlines it is handed."""

    def __init__(self) -> None:
        self.armed: list[int] = []
        self.disarmed: list[int] = []

    def arm(self, pgid: int, valid_until: float) -> None:
        self.armed.append(pgid)

    def disarm(self, pgid: int) -> None:
        self.disarmed.append(pgid)


class Grouped(SimulatedConnector):
    """A simulated connector with a process group, as a process connector's child has."""

    def process_group(self) -> int | None:
        return 4242


async def test_no_deadline_for_a_warm_standby_and_it_outlives_a_released_claim(store: RedisStore) -> None:
    watchdog = Deadlines()
    connectors = ConnectorHost()
    keeper = LeaseKeeper(store, connectors, watchdog=watchdog)  # type: ignore[arg-type]
    req = await claimed(store)
    try:
        standby = Grouped("k", ConnectorSpec(warm=True), role=Role.STANDBY)
        connectors.put(req.workflow_id, standby)
        keeper.guard(req.workflow_id)  # prepared as a warm standby: holds no claim, acts not
        assert watchdog.armed == []
        active = Grouped("k", ConnectorSpec(), role=Role.ACTIVE)
        connectors.put("other", active)
        keeper.guard("other")  # an active one without known renewals: the shortest deadline
        assert watchdog.armed == [4242]

        # A handback: the connector was demoted, then the key released. It keeps running (warm).
        held = keeper.hold(req)
        await asyncio.sleep(INTERVAL)
        await store.client.delete(status_key(req.exchange_id))
        for _ in range(40):
            if held.ended is not None:
                break
            await asyncio.sleep(0.05)
        assert held.ended is not None
        assert connectors.get(req.workflow_id) is standby and held.stopped_at is None

        # Mid-activation (ACTIVATE sent, not confirmed) it may act already: a lost claim stops it.
        req2 = await claimed(store)
        activating = Grouped("k", ConnectorSpec(warm=True), role=Role.STANDBY)
        activating.activating = True
        connectors.put(req2.workflow_id, activating)
        held2 = keeper.hold(req2)
        await asyncio.sleep(INTERVAL)
        await store.client.delete(status_key(req2.exchange_id))
        for _ in range(40):
            if held2.ended is not None:
                break
            await asyncio.sleep(0.05)
        assert connectors.get(req2.workflow_id) is None and held2.stopped_at is not None
    finally:
        await keeper.close()


class KilledAt(Grouped):
    """A connector whose child is seen dead of SIGKILL at ``killed_at`` (CLOCK_MONOTONIC), once set
    — and, as the exit poll makes it, only by the second renewal after that."""

    killed_at: float | None = None
    looks = 0

    def fault(self) -> ConnectorFailure | None:
        if self.killed_at is None:
            return None
        self.looks += 1
        if self.looks < 2:
            return None
        why = "was killed by signal SIGKILL"
        return ConnectorFailure(kind="crashed", reason=why, killed_at=self.killed_at)


async def _killed(store: RedisStore, at: Callable[[HeldClaim], float]) -> HeldClaim:
    """Hold a claim whose connector is seen killed at ``at(held)`` once a deadline was handed over;
    return when the keeper has judged it (ended, or a connector failure reported)."""
    connectors = ConnectorHost()
    keeper = LeaseKeeper(store, connectors, watchdog=Deadlines())  # type: ignore[arg-type]
    req = await claimed(store)
    connector = KilledAt("k", ConnectorSpec(), role=Role.ACTIVE)
    connectors.put(req.workflow_id, connector)
    try:
        held = keeper.hold(req)
        await until(lambda: len(held.terms) == 1)
        connector.killed_at = at(held)
        await until(lambda: held.ended is not None or held.report is not None)
        return held
    finally:
        await keeper.close()


async def test_a_connector_killed_at_the_deadline_before_a_late_renewal_rearmed_it_takes_the_deadline_path(
    store: RedisStore,
) -> None:
    """The watchdog killed the child at the deadline it held, and the renewal that would have moved
    it was answered too late to reach it: the claim is live but its connector dead. That is the renew
    deadline — the workflow takes the exchange again at once — not a crash left to the spec's restart
    policy (whose default leaves the exchange down)."""
    held = await _killed(store, lambda held: held.terms[0].until + 0.001)
    assert isinstance(held.ended, RenewDeadline), held.report
    assert "the watchdog stopped the connector at the renew deadline" in str(held.ended)
    assert held.stopped_at is not None  # the keeper stopped (cleaned up) the dead connector first


async def test_a_connector_killed_before_its_deadline_is_a_connector_failure(store: RedisStore) -> None:
    """Not the watchdog: a SIGKILL before any deadline it held had passed is the connector's crash."""
    held = await _killed(store, lambda held: held.terms[0].given_at)
    assert held.ended is None
    assert isinstance(held.report, ConnectorFailed) and "SIGKILL" in str(held.report)


# --- the renewal grid: one pipeline per slot, each claim its own outcome ------------------------------


class CountedStore(RedisStore):
    """The real store, noting each batch of renewals it sends (how many, and which exchanges)."""

    def __init__(self, client: RedisClient) -> None:
        super().__init__(client)
        self.batches: list[list[int]] = []
        self.failed_batches = 0

    async def renew_many(self, renewals: list[Renewal]) -> list[FenceReply | Exception]:
        self.batches.append([r.exchange_id for r in renewals])
        try:
            return await super().renew_many(renewals)
        except BaseException:
            self.failed_batches += 1
            raise


async def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_one_batch_ends_its_fenced_and_missing_claims_and_renews_the_rest(
    servers: Servers, store: RedisStore
) -> None:
    counted = CountedStore(make_client(servers.redis_url))
    await counted.client.script_flush()  # the first batch also meets a server that lost its scripts
    connectors = ConnectorHost()
    keeper = LeaseKeeper(counted, connectors)
    reqs = [await claimed(store) for _ in range(4)]
    kept, kept2, fenced, missing = reqs
    rival = {"instanceId": str(uuid.uuid4()), "epoch": 8, "hostname": "rival"}
    await store.client.set(status_key(fenced.exchange_id), json.dumps(rival), px=60_000)
    await store.client.delete(status_key(missing.exchange_id))
    for req in reqs:
        connectors.put(req.workflow_id, SimulatedConnector("k", ConnectorSpec(), role=Role.ACTIVE))
    try:
        # Held in one go: their first renewals leave in the same turn, so in one batch.
        held = [keeper.hold(req) for req in reqs]
        await until(lambda: held[2].ended is not None and held[3].ended is not None)
        assert sorted(counted.batches[0]) == sorted(r.exchange_id for r in reqs)
        assert isinstance(held[2].ended, ClaimLost) and not isinstance(held[2].ended, ClaimMissing)
        assert isinstance(held[3].ended, ClaimMissing)
        # Only those two claims ended: their connectors stopped, the others' run on.
        assert connectors.get(fenced.workflow_id) is None and connectors.get(missing.workflow_id) is None
        assert connectors.get(kept.workflow_id) is not None and connectors.get(kept2.workflow_id) is not None
        await until(lambda: min(held[0].renewals, held[1].renewals) >= 3)
        assert held[0].ended is None and held[1].ended is None
        for req in (kept, kept2):
            raw, pttl = await store.raw_status(req.exchange_id)
            assert raw is not None and json.loads(raw)["instanceId"] == req.claim.instance_id and pttl > 0
        # The rival's record is untouched (fencing), and the released key stays released.
        assert json.loads((await store.raw_status(fenced.exchange_id))[0] or "{}") == rival
        assert await store.client.get(status_key(missing.exchange_id)) is None
    finally:
        await keeper.close()
        await counted.client.aclose()


async def test_an_error_redis_answers_for_one_claim_stays_with_that_claim(
    servers: Servers, store: RedisStore
) -> None:
    counted = CountedStore(make_client(servers.redis_url))
    connectors = ConnectorHost()
    keeper = LeaseKeeper(counted, connectors)
    good, good2, broken = [await claimed(store) for _ in range(3)]
    # Not a string: the renewal's script fails on this key (WRONGTYPE), inside the batch.
    await store.client.delete(status_key(broken.exchange_id))
    await store.client.hset(status_key(broken.exchange_id), "instanceId", broken.claim.instance_id)
    await store.client.pexpire(status_key(broken.exchange_id), 60_000)
    connectors.put(broken.workflow_id, SimulatedConnector("k", ConnectorSpec(), role=Role.ACTIVE))
    try:
        held = [keeper.hold(req) for req in (good, good2, broken)]
        await until(lambda: min(held[0].renewals, held[1].renewals) >= 3)
        assert broken.exchange_id in counted.batches[0] and len(counted.batches[0]) == 3
        assert held[0].ended is None and held[1].ended is None
        assert held[2].renewals == 0
        assert counted.failed_batches == 0  # the round trip itself went through
        # A refused renewal is a failed one: the claim's loop goes on, and the renew deadline ends
        # it and stops its connector (before, the loop died and nothing ended the claim).
        await until(lambda: held[2].ended is not None)
        assert isinstance(held[2].ended, RenewDeadline)
        assert connectors.get(broken.workflow_id) is None
        assert held[0].ended is None and held[1].ended is None
    finally:
        await keeper.close()
        await counted.client.aclose()


async def test_a_batch_that_cannot_reach_redis_fails_its_claims_and_the_deadline_ends_them(
    servers: Servers, store: RedisStore
) -> None:
    """A hung Redis: the batch's round trip fails for every claim in it, no claim ends before its
    renew deadline, each one ends at it and stops its connector; once Redis answers again, the same
    keeper renews new claims as before."""
    redis_port = int(servers.redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = await StallableProxy(redis_port).start()
    # The same server (and its password) through the proxy.
    counted = CountedStore(make_client(servers.redis_url.replace(f":{redis_port}/", f":{proxy.port}/")))
    connectors = ConnectorHost()
    keeper = LeaseKeeper(counted, connectors)
    reqs = [await claimed(store, interval=1.0) for _ in range(3)]
    deadline_s = renew_deadline_s(1.0)  # 1.7 s
    for req in reqs:
        connectors.put(req.workflow_id, SimulatedConnector("k", ConnectorSpec(), role=Role.ACTIVE))
    try:
        held = [keeper.hold(req) for req in reqs]
        await until(lambda: min(h.renewals for h in held) >= 2)
        proxy.stall()
        # The round trip fails at the renewal's bound (an interval, or what is left of the deadline
        # if less): no claim has ended before its deadline, nor lost its connector while running.
        await until(lambda: counted.failed_batches >= 1)
        now = time.monotonic()  # no await from here on: the keeper cannot move meanwhile
        for req, h in zip(reqs, held, strict=True):
            assert h.ended is None or now > h.last_ok + deadline_s
            assert now > h.last_ok + deadline_s or connectors.get(req.workflow_id) is not None
        await until(lambda: all(h.ended is not None for h in held))
        assert all(isinstance(h.ended, RenewDeadline) for h in held)
        assert all(connectors.get(r.workflow_id) is None for r in reqs)

        proxy.resume()
        again = [keeper.hold(await claimed(store, interval=1.0)) for _ in range(2)]
        await until(lambda: min(h.renewals for h in again) >= 2)
        assert all(h.ended is None for h in again)
    finally:
        await keeper.close()
        await proxy.close()
        await counted.client.aclose()


async def test_a_paused_watch_keeps_watching_a_vacancy_until_the_pause_ends(store: RedisStore) -> None:
    """The pause key, read with each renewal, holds the watch back (standbys keep watching); so does
    a refused claim's pause before the watch has read it; its removal is seen at the next renewal."""
    exchange_id = 900_000 + uuid.uuid4().int % 100_000
    far = "2030-01-01T00:00:00.000Z"
    await store.set_pause(exchange_id, PauseRecord(until=far, since=far), 60_000)
    req = standby_request(exchange_id)
    keeper = LeaseKeeper(store, ConnectorHost())
    try:
        watched = keeper.watch(req)
        await until(lambda: watched.vacant and watched.paused)  # nobody holds it
        assert not watched.wakes and watched.ended is None
        await store.clear_pause(exchange_id)
        await until(lambda: watched.wakes)  # the next renewal: no pause, vacant
        # A claim refused for a pause this watch has not read yet holds it back at once.
        keeper.note_pause(req.record.workflow_id, 60_000)
        assert watched.paused and not watched.wakes
    finally:
        await keeper.close()


async def test_a_vacancy_handed_to_another_host_does_not_wake_the_watch(store: RedisStore) -> None:
    """A handoff's reservation, read with each renewal, leaves the vacancy to its target: the
    watch of another host's standby keeps watching until it ends; the target's own watch wakes."""
    exchange_id = 900_000 + uuid.uuid4().int % 100_000
    elsewhere = HandoffReservation(to_host="other", from_host="old", epoch=3)
    await store.reserve_handoff(exchange_id, elsewhere, 60_000)
    req = standby_request(exchange_id)  # host "h"
    keeper = LeaseKeeper(store, ConnectorHost())
    try:
        watched = keeper.watch(req)
        await until(lambda: watched.vacant and watched.handed_to == "other")  # nobody holds it
        assert not watched.wakes and watched.ended is None
        await store.reserve_handoff(exchange_id, elsewhere.model_copy(update={"to_host": "h"}), 60_000)
        await until(lambda: watched.wakes)  # handed to this host: its own race
        await store.reserve_handoff(exchange_id, elsewhere, 60_000)
        await until(lambda: not watched.wakes)
        await store.client.delete(handoff_key(exchange_id))  # ended (claimed, or expired)
        await until(lambda: watched.wakes)
    finally:
        await keeper.close()


async def test_a_renewal_counts_from_its_sending_not_from_its_slow_reply(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis runs a renewal between its sending and its reply, and a standby's claim-over line
    counts from when Redis ran it: the holder's validity (the connector's watchdog, its journal's
    "valid until") must count from the sending, or a slow reply would let it act past that line."""
    keeper = LeaseKeeper(store, ConnectorHost())
    grid_renew = keeper._grid.renew
    sent_at: list[float] = []
    reply_delay_s = 0.3 * INTERVAL

    async def slow_reply(renewal: Renewal, bound_s: float) -> FenceReply:
        sent_at.append(time.monotonic())
        reply = await grid_renew(renewal, bound_s)
        await asyncio.sleep(reply_delay_s)  # the answer takes its time on the way back
        return reply

    monkeypatch.setattr(keeper._grid, "renew", slow_reply)
    req = await claimed(store)
    try:
        before_claim = time.monotonic()
        held = keeper.hold(req, valid_from=before_claim)
        assert held.last_ok == before_claim  # the claim's own validity: from its request
        for _ in range(100):
            if held.renewals >= 2:
                break
            await asyncio.sleep(0.05)
        assert held.renewals >= 2
        assert held.last_ok <= sent_at[held.renewals - 1] + 0.01
        assert time.monotonic() - held.last_ok >= reply_delay_s  # not the moment the reply came
    finally:
        await keeper.close()


async def test_a_renewal_that_failed_at_once_is_tried_again_before_the_next_slot(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal that fails at once (a pooled connection a Redis restart closed) is tried again a
    quarter interval later, not only at the next slot: otherwise that slot's renewal is the last
    before the renew deadline, and a Redis pause of 0.4 intervals at that moment — which the chaos
    suite injects, and which must change no holder — ends the claim."""
    interval = 1.0  # renew deadline 1.7 s
    keeper = LeaseKeeper(store, ConnectorHost())
    grid_renew = keeper._grid.renew
    failed_at: list[float] = []
    sent_at: list[float] = []

    async def one_fast_failure_then_a_pause(renewal: Renewal, bound_s: float) -> FenceReply:
        now = time.monotonic()
        sent_at.append(now)
        if len(sent_at) == 3:  # two renewals got through; this one fails at once
            failed_at.append(now)
            raise ServiceUnavailable("Connection closed by server.", server=Server.REDIS)
        if failed_at and now >= failed_at[0] + 0.9 * interval and len(failed_at) == 1:
            failed_at.append(now)  # the next slot's renewal meets a Redis paused for 0.4 intervals
            await asyncio.sleep(0.4 * interval)
        return await grid_renew(renewal, bound_s)

    monkeypatch.setattr(keeper._grid, "renew", one_fast_failure_then_a_pause)
    held = keeper.hold(await claimed(store, interval=interval))
    try:
        await until(lambda: len(failed_at) == 2 and held.renewals >= 5 or held.ended is not None, 15.0)
        assert held.ended is None, held.ended
        # The retry went out between the failure and the next slot, a quarter interval on.
        retry = sent_at[3] - failed_at[0]
        assert 0.15 * interval <= retry <= 0.5 * interval, retry
    finally:
        await keeper.close()


async def test_a_granter_promises_only_without_redis_and_is_bound_before_it_answers(
    store: RedisStore, servers: Servers
) -> None:
    """The failsafe's granter side (docs/design.md, "Failsafe"): a keeper that starts is bound for a
    promise's length; a host that still reaches Redis refuses (so a Redis lost to the holder alone
    ends in a failover); one that does not grants, and is bound from then on whatever Redis says."""
    from perseus.models import GrantRequest
    from perseus.timing import failsafe_promise_s

    exchange_id = 900_000 + uuid.uuid4().int % 100_000
    ask = GrantRequest(
        workflow_id="instance-k-h",
        exchange_id=exchange_id,
        heartbeat_interval_s=INTERVAL,
        failsafe=True,
        holds_claim=False,
        asker_epoch=7,
        highest_epoch_seen=7,
    )
    reaching = LeaseKeeper(store, ConnectorHost())
    assert reaching.failsafe_refusal(exchange_id, INTERVAL) is not None  # it just started
    answer = await reaching.grant(ask)
    assert not answer.granted and "Redis answers here" in answer.reason
    assert (await reaching.grant(ask.model_copy(update={"holds_claim": True}))).reason == (
        "it holds the claim itself"
    )
    assert not (await reaching.grant(ask.model_copy(update={"asker_epoch": 6}))).granted
    await asyncio.sleep(failsafe_promise_s(INTERVAL))
    assert reaching.failsafe_refusal(exchange_id, INTERVAL) is None  # refusing bound it to nothing
    await reaching.close()

    proxy = await StallableProxy(servers.redis_port).start()
    client = make_client(servers.redis_url.replace(f":{servers.redis_port}/", f":{proxy.port}/"))
    try:
        cut_off = LeaseKeeper(RedisStore(client), ConnectorHost())
        await proxy.down()
        answer = await cut_off.grant(ask)
        assert answer.granted, answer.reason
        bound = cut_off.failsafe_bound(exchange_id, INTERVAL) - time.monotonic()
        assert bound > failsafe_promise_s(INTERVAL) - 0.5
        await proxy.up()
        await asyncio.sleep(failsafe_promise_s(INTERVAL) / 2)
        refusal = cut_off.failsafe_refusal(exchange_id, INTERVAL)
        assert refusal is not None and "failsafe promise" in refusal  # Redis answering changes nothing
        await asyncio.sleep(failsafe_promise_s(INTERVAL) / 2 + 0.1)
        assert cut_off.failsafe_refusal(exchange_id, INTERVAL) is None
        await cut_off.close()
    finally:
        await client.aclose()
        await proxy.close()


async def test_a_connector_is_not_let_act_under_a_claim_whose_renewals_ended(
    store: RedisStore, catalog: Catalog
) -> None:
    """A chaos run activated a warm standby 0.4 s after its claim's renew deadline (Redis paused):
    the workflow learns of the end from its lease, after it has asked for the activation. The host
    refuses to let a connector act under a claim the keeper has ended — warm or cold — and leaves
    the connector as it was."""
    req = await claimed(store)
    connectors = ConnectorHost()
    keeper = LeaseKeeper(store, connectors)
    http = httpx.AsyncClient()
    host = host_activities(store, catalog, http, keeper, connectors)
    try:
        held = keeper.hold(req)
        await store.client.delete(status_key(req.exchange_id))  # the claim vanishes: the loop ends
        await until(lambda: held.ended is not None)
        assert isinstance(keeper.ended(req.workflow_id, req.claim), ClaimMissing)
        other = Claim(instance_id=req.claim.instance_id, epoch=req.claim.epoch + 1)
        assert keeper.ended(req.workflow_id, other) is None  # a newer claim is not judged by it
        connector = SimulatedConnector("k", ConnectorSpec(), role=Role.ACTIVE)
        connectors.put(req.workflow_id, connector)
        asked = ConnectorRequest(
            workflow_id=req.workflow_id,
            exchange_id=req.exchange_id,
            exchange_name="k",
            spec=ConnectorSpec(),
            claim=req.claim,
            heartbeat_interval_s=req.heartbeat_interval_s,
        )
        # The prepare last: it replaces the connector the other two would refuse to use.
        for step in (host.connector_connect, host.connector_activate, host.connector_prepare):
            with pytest.raises(ApplicationError, match="ended here first") as refused:
                await ActivityEnvironment().run(step, asked)
            assert refused.value.type == "ClaimLost"
        assert not connector.connected
    finally:
        await keeper.close()
        await http.aclose()
