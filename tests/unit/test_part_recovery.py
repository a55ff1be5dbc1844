"""The recovery part alone (``perseus.core.recovery``), exhaustively: every way a lease can end, every
answer the world can send at each step after it, and the part's invariants after each run.

Recovery is handed the leases, status and standbys parts and three hooks of the core (queue a
command, become a standby, end the run); here they are the real parts over a scripted world
(``part_driver.World``), the hooks recorded. Every ``Patched`` is answered True.

The invariants, from ``perseus/core/recovery.py``, invariant 1 of ``perseus.core.decisions`` and
``docs/design.md`` ("a heartbeat timeout proves nothing about Redis"):

1. **Silence proves nothing.** After a lease that only went silent (a timeout, an error that is not a
   verdict of the keeper), the claim is released and the instance declared lost only once Redis
   proved it gone or unrenewed past the renew deadline plus the margin (a probe), or a later lease
   brought a verdict of the keeper. A live claim is re-attached to, never given up.
2. **The run ends exactly when the instance is lost:** the part answers False if and only if it
   called ``end`` once, with ``instance lost``; then the ``instance_lost`` event is written, the
   status is walked down to idle, the lease is not left running, and its key is released.
3. **Recovery never starts a connector itself**: no connector step that acts (connect, activate) is
   asked; a restart is one START queued first, internal, and only while a claim is held.
4. **Every status write is fenced by a claim this instance held**, and once Redis granted it a fresh
   claim (a reclaim), only by that one. (A lost instance walks down under the claim it lost: Redis
   refuses those writes, which is the fence working, not a breach.)
5. **The status never says running over a stopped connector:** a run that ends in starting, warming
   or active saw no disconnect answered, no connector check say "not running", no connector failure.
6. **A standby is woken to act at once only over a connector known stopped** — its disconnect
   answered, its keeper stopped it (the lease's verdict), or Redis proved its claim dead.
7. **Restarts are bounded:** one counted restart per connector failure, never past ``max_restarts``,
   after the doubling backoff, with the claim renewed meanwhile (the lease started before the sleep).
8. **A reclaim claims above every epoch known, quietly** and renews the fresh claim at once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest

from perseus.core import actions as act
from perseus.core.decisions import LOSS_TYPES, LeaseVerdict, lease_verdict, restart_delay
from perseus.core.lifecycle import Command, State
from perseus.core.recovery import (
    LOST_WAITS_FOR_FAILSAFE_HORIZON,
    RUNNING_STATES,
    STEP_ASIDE_WAKES_FROM_ITS_LIST,
    Recovery,
)
from perseus.core.state import Ending, RecoveryState
from perseus.errors import ConnectorFailed, ConnectorFailover, ConnectorUnhealthy
from perseus.models import (
    Claim,
    ClaimProbe,
    ClaimResult,
    ConnectorReport,
    EventKind,
    LeaseOutcome,
    PatchResult,
    StandbyList,
)
from perseus.timing import ALIVE_INTERVALS, CLAIM_OVER_INTERVALS, claim_over_s
from tests.unit.part_driver import (
    ACTING,
    APP_ERROR,
    CLAIM,
    NOT_PICKED_UP,
    SILENT,
    T0,
    Parts,
    World,
    case,
    context,
    drive,
    parts,
    standby,
)

pytestmark = pytest.mark.unit

INTERVAL = 15.0
A = act.Activity
TERM = LeaseOutcome(renewals=3, last_renewed=T0)
STOPPED_AT = T0


def failure(error_type: str, stopped_at: Any = None) -> act.Failure:
    return act.Failure(message=f"lease: {error_type}", error_type=error_type, stopped_at=stopped_at)


CONNECTOR_DIED = failure("ConnectorFailed")
UNHEALTHY = failure("ConnectorUnhealthy")
FAILOVER = failure("ConnectorFailover")
KEY_MISSING = failure("ClaimMissing", STOPPED_AT)
DEADLINE = failure("RenewDeadline", STOPPED_AT)
CLAIM_LOST = failure("ClaimLost")
START_TO_CLOSE = act.Failure(message="timed out (START_TO_CLOSE)", timeout="START_TO_CLOSE")
FOREIGN = act.Failure(message="boom", error_type="SomethingElse")
#: Lease endings that prove nothing about Redis: the reattach verdict.
SILENCES = [SILENT, NOT_PICKED_UP, START_TO_CLOSE, APP_ERROR, FOREIGN]
SILENCE_IDS = ["heartbeat", "no-worker", "start-to-close", "untyped-verdict", "foreign-error"]

# What Redis can show of our claim while its host is silent.
ALIVE = ClaimProbe(held_by_us=True, renewed_ms_ago=500, holder="host-a")
UNSURE = ClaimProbe(
    held_by_us=True,
    renewed_ms_ago=int((ALIVE_INTERVALS + CLAIM_OVER_INTERVALS) / 2 * INTERVAL * 1000),
    holder="host-a",
)
STALE = ClaimProbe(held_by_us=True, renewed_ms_ago=int(claim_over_s(INTERVAL) * 1000) + 1000, holder="host-a")
NO_TTL = ClaimProbe(held_by_us=True, renewed_ms_ago=None, holder="host-a")
TAKEN = ClaimProbe(held_by_us=False, holder="host-b")
EXPIRED = ClaimProbe(held_by_us=False, holder=None)
PROBES: list[Any] = [APP_ERROR, ALIVE, UNSURE, STALE, NO_TTL, TAKEN, EXPIRED]
PROBE_IDS = ["no-answer", "alive", "unsure", "stale", "no-ttl", "taken", "expired"]
#: What Redis shows that proves the claim dead (invariant 1).
PROOFS = (STALE, NO_TTL, TAKEN, EXPIRED)
#: Lease errors whose keeper stopped the connector before it reported (``host/keeper.py``).
CONNECTOR_FAILURES = (ConnectorFailed, ConnectorUnhealthy, ConnectorFailover)
#: How a re-issued lease can end once picked up: not at all, or with each of these.
RETAKES: list[Any] = [None, TERM, SILENT, NOT_PICKED_UP, CLAIM_LOST, CONNECTOR_DIED, KEY_MISSING]
RETAKE_IDS = ["runs", "term", "silent", "no-worker", "lost", "died", "missing"]
CHECKS: list[Any] = [
    ConnectorReport(running=True),
    ConnectorReport(running=False),
    NOT_PICKED_UP,
]
CHECK_IDS = ["running", "stopped", "no-answer"]


@dataclass
class Run:
    value: Any
    world: World
    parts: Parts
    recovery: Recovery
    start_state: State
    #: The lease endings the part was given, the first one first.
    endings: list[Any]


def run(
    first: Any,
    *,
    state: State = State.ACTIVE,
    scripts: dict[Any, list[Any]] | None = None,
    retakes: list[Any] | None = None,
    waits: list[bool] | None = None,
    restarts: int = 0,
    host_restarted: bool = False,
    signals: list[str | None] | None = None,
    **spec: Any,
) -> Run:
    ctx = context(interval_s=INTERVAL, **spec)
    p = parts(ctx, state=state)
    # Once the script runs out Redis shows the key gone: every run settles.
    scripts = {A.PROBE_CLAIM: [], **(scripts or {})}
    scripts[A.PROBE_CLAIM] = [*scripts[A.PROBE_CLAIM], *[EXPIRED] * 50]
    endings = [] if host_restarted else [first]
    world = World(ctx, scripts, leases=[*endings, *(retakes or [])], waits=waits or [], signals=signals or [])
    recovery = Recovery(ctx, p.host, RecoveryState(restarts=restarts), **p.hooks(), **p.shared())
    proc = recovery.host_restarted() if host_restarted else recovery.after_lease()
    value, _ = drive(proc, world)
    return Run(value, world, p, recovery, state, [first, *(retakes or [])])


def _answered(seen: Any, activity: Any) -> bool:
    """``seen`` is a call of ``activity`` that succeeded."""
    return (
        isinstance(seen.action, act.Call)
        and seen.action.activity is activity
        and not isinstance(seen.answer, act.Failure)
    )


def _kind(answer: Any) -> Any:
    return answer.kind if isinstance(answer, act.Failure) else None


def check(r: Run) -> None:
    """The part's invariants (the module docstring), after any run."""
    w, p = r.world, r.parts
    seen = w.seen
    taken = [s.answer for s in seen if isinstance(s.action, act.TakeLease)]
    verdicts = {lease_verdict(_kind(a)) for a in taken if isinstance(a, act.Failure)}
    keeper_said = verdicts & {
        LeaseVerdict.CONNECTOR_FAILED,
        LeaseVerdict.RESTART_UNHEALTHY,
        LeaseVerdict.STEP_ASIDE,
        LeaseVerdict.RECLAIM,
        LeaseVerdict.LOST,
    }
    proofs = [
        i
        for i, s in enumerate(seen)
        if isinstance(s.action, act.Call) and s.action.activity is A.PROBE_CLAIM and s.answer in PROOFS
    ]
    proof_at = proofs[0] if proofs else None
    releases = [
        i
        for i, s in enumerate(seen)
        if isinstance(s.action, act.Call) and s.action.activity is A.RELEASE_CLAIM
    ]

    # 1. Silence proves nothing: no release, no loss, unless Redis or the keeper said so first.
    if not keeper_said:
        for i in releases:
            assert proof_at is not None and proof_at < i, "released a claim only silence spoke against"
        if p.ended:
            assert proof_at is not None, "declared lost on silence alone"
    # 2. The run ends exactly when the instance is lost.
    assert (r.value is False) == bool(p.ended)
    if r.value is False:
        assert len(p.ended) == 1 and p.ended[0].startswith(f"{Ending.INSTANCE_LOST}: ")
        assert len(w.events(EventKind.INSTANCE_LOST)) == 1
        assert p.status.state is State.IDLE
        assert not p.leases.leasing
        assert releases, "a lost instance frees its key if it is still ours"
        assert not p.enqueued and p.became_standby == 0
    else:
        assert r.value is True
    # 3. Never starts a connector itself; a restart is one START, first, internal, under a claim.
    assert not w.calls_of(*ACTING)
    assert len(p.enqueued) <= 1
    for q in p.enqueued:
        assert q.command is Command.START and q.first and q.internal and not q.promoted
        assert p.leases.claim is not None
    # 4. Every write fenced by a claim we held; once a fresh one is granted, only by that one.
    granted = [
        (i, Claim(instance_id=s.action.request.claim.status.instance_id, epoch=s.answer.epoch))  # type: ignore[union-attr]
        for i, s in enumerate(seen)
        if _answered(s, A.CLAIM_AND_HOLD) and s.answer.claimed
    ]
    held = [CLAIM, *(c for _, c in granted)]
    for at, claim in w.writes():
        assert claim in held
        assert all(claim == fresh for i, fresh in granted if i < at), "wrote under a claim given up"
    # 5. Running in the status only over a connector not known stopped.
    if p.status.state in RUNNING_STATES:
        assert not verdicts & {LeaseVerdict.CONNECTOR_FAILED, LeaseVerdict.RESTART_UNHEALTHY}
        assert not any(_answered(s, A.CONNECTOR_DISCONNECT) for s in seen)
        for s in w.calls_of(A.CONNECTOR_CHECK):
            assert isinstance(s.answer, ConnectorReport) and s.answer.running
    # 6. A standby woken to act at once only over a connector known stopped.
    stopped_by_keeper = any(_kind(a) in LOSS_TYPES or _kind(a) in CONNECTOR_FAILURES for a in taken)
    disconnected_at = [i for i, s in enumerate(seen) if _answered(s, A.CONNECTOR_DISCONNECT)]
    for i, signal in w.signals_sent("promote"):
        assert signal.payload.act_after_s == 0.0  # type: ignore[attr-defined]
        disconnected = bool(disconnected_at) and disconnected_at[0] < i
        assert stopped_by_keeper or disconnected or (proof_at is not None and proof_at < i)
        assert releases and releases[0] < i, "a standby woken before our key was let go"
    # 7. Restarts bounded, after the backoff, with the claim renewed meanwhile.
    counted = [i for i, s in enumerate(seen) if isinstance(s.action, act.CountRestart)]
    spec = p.ctx.inp.connector
    assert r.recovery.st.restarts <= spec.max_restarts
    for i in counted:
        lease_at = next(j for j in range(i, len(seen)) if isinstance(seen[j].action, act.StartLease))
        sleep_at = next(j for j in range(i, len(seen)) if isinstance(seen[j].action, act.Sleep))
        assert lease_at < sleep_at
        sleep = seen[sleep_at].action
        assert isinstance(sleep, act.Sleep)
        assert sleep.seconds == restart_delay(
            "on-failure", r.recovery.st.restarts - 1, spec.max_restarts, spec.restart_backoff_s
        )
    # 8. Every claim asked above every epoch known, quietly (no conflict event).
    for s in w.calls_of(A.CLAIM_AND_HOLD):
        assert s.action.request.claim.highest_epoch >= CLAIM.epoch  # type: ignore[union-attr]
    assert not w.events(EventKind.CLAIM_CONFLICT)


# --- a lease that ran its term, and a worker that started again between two leases --------------


def test_a_lease_that_ran_its_term_changes_nothing_but_the_last_renewal() -> None:
    r = run(TERM)
    check(r)
    assert r.value is True
    assert r.parts.leases.st.last_heartbeat_ok == TERM.last_renewed
    assert r.parts.leases.claim == CLAIM and r.parts.status.state is State.ACTIVE
    assert [type(a) for a in r.world.actions()] == [act.TakeLease]


def test_a_restarted_worker_with_no_lease_of_ours_running_changes_nothing() -> None:
    ctx = context()
    p = parts(ctx, leasing=False)
    recovery = Recovery(ctx, p.host, RecoveryState(), **p.hooks(), **p.shared())
    value, actions = drive(recovery.host_restarted(), World(ctx))
    assert value is True and actions == []


# --- a connector that failed while its claim is still ours -----------------------------------------


@pytest.mark.parametrize("disconnect", [None, NOT_PICKED_UP], ids=["stopped", "stop-unanswered"])
@pytest.mark.parametrize("restarts", [0, 2, 3])
@pytest.mark.parametrize("policy", ["no", "on-failure"])
@pytest.mark.parametrize("state", [State.STARTING, State.WARMING, State.ACTIVE, State.IDLE])
@pytest.mark.parametrize("ending", [CONNECTOR_DIED, UNHEALTHY], ids=["died", "unhealthy"])
def test_a_failed_connector_is_recorded_walked_down_and_restarted_within_its_budget(
    ending: act.Failure, state: State, policy: str, restarts: int, disconnect: Any
) -> None:
    scripts = {A.CONNECTOR_DISCONNECT: [disconnect]} if disconnect else {}
    r = run(ending, state=state, scripts=scripts, restarts=restarts, restart=policy, max_restarts=3)
    check(r)
    assert r.value is True and r.parts.status.state is State.IDLE
    assert r.parts.leases.claim == CLAIM  # the claim is still ours: nothing released
    assert not r.world.calls_of(A.RELEASE_CLAIM)
    assert r.parts.status.st.last_error == ending.message
    # Unhealthy restarts in place whatever the spec says; a dead connector as the spec says.
    again = (ending is UNHEALTHY or policy == "on-failure") and restarts < 3
    assert bool(r.parts.enqueued) is again
    assert r.recovery.st.restarts == restarts + (1 if again else 0)
    assert sum(isinstance(a, act.CountRestart) for a in r.world.actions()) == (1 if again else 0)


# --- a connector that failed its health checks under the failover policy ----------------------------

STANDBY_LISTS: list[Any] = [
    APP_ERROR,
    StandbyList(standbys=[]),
    StandbyList(standbys=[standby()]),
    StandbyList(standbys=[standby()], paused=True),
]


RELEASES: list[Any] = [None, PatchResult(applied=False), APP_ERROR]
RELEASE_IDS = ["released", "not-ours", "unanswered"]
SIGNALS: list[Any] = [None, "gone"]


@pytest.mark.parametrize("listed", STANDBY_LISTS, ids=["unknown", "none", "one", "paused"])
@pytest.mark.parametrize("disconnect", [None, NOT_PICKED_UP], ids=["stopped", "stop-unanswered"])
@pytest.mark.parametrize("state", [State.ACTIVE, State.WARMING])
def test_an_unhealthy_connector_steps_aside_only_to_a_standby_that_may_take_over(
    state: State, disconnect: Any, listed: Any
) -> None:
    for (release, rid), signal in itertools.product(zip(RELEASES, RELEASE_IDS, strict=True), SIGNALS):
        scripts: dict[Any, list[Any]] = {A.LIST_STANDBYS: [listed] * 2}
        if disconnect:
            scripts[A.CONNECTOR_DISCONNECT] = [disconnect]
        if release is not None:
            scripts[A.RELEASE_CLAIM] = [release]
        r = run(FAILOVER, state=state, scripts=scripts, signals=[signal])
        with case(f"release {rid}, signal {signal}"):
            check(r)
            assert r.value is True and r.parts.status.state is State.IDLE
            steps_aside = isinstance(listed, StandbyList) and bool(listed.standbys) and not listed.paused
            if steps_aside:
                # Lease cancelled, key released, best standby woken, and we wait here as a standby.
                kinds = [type(a) for a in r.world.actions()]
                assert kinds.index(act.CancelLease) < r.world.first_call(A.RELEASE_CLAIM)
                assert len(r.world.signals_sent("promote")) == 1
                assert r.parts.became_standby == 1 and r.parts.leases.claim is None
                assert not r.parts.enqueued
            else:
                # Nobody could take the exchange over: restart in place, claim kept.
                assert not r.world.signals_sent("promote") and not r.world.calls_of(A.RELEASE_CLAIM)
                assert r.parts.became_standby == 0 and r.parts.leases.claim == CLAIM
                assert len(r.parts.enqueued) == 1


@pytest.mark.parametrize("listed", STANDBY_LISTS, ids=["unknown", "none", "one", "paused"])
@pytest.mark.parametrize("state", [State.ACTIVE, State.WARMING])
def test_a_dead_connector_with_no_restart_left_hands_the_exchange_to_a_standby_that_may_take_it(
    state: State, listed: Any
) -> None:
    """A claim is held only by an instance that runs its connector (issue 24): with no restart in
    the spec (or none left), a live standby is woken to act at once and we wait as a standby; with
    none that may take it, the claim stays here, idle, as before."""
    for policy, restarts in (("no", 0), ("on-failure", 3)):
        scripts: dict[Any, list[Any]] = {A.LIST_STANDBYS: [listed]}
        r = run(
            CONNECTOR_DIED, state=state, scripts=scripts, restarts=restarts, restart=policy, max_restarts=3
        )
        with case(f"{policy}, {restarts} restarts"):
            check(r)
            assert r.value is True and r.parts.status.state is State.IDLE and not r.parts.enqueued
            hands_over = isinstance(listed, StandbyList) and bool(listed.standbys) and not listed.paused
            woken = [s.payload for _, s in r.world.signals_sent("promote")]
            if hands_over:
                assert len(woken) == 1 and woken[0].act_after_s == 0.0  # type: ignore[attr-defined]
                assert r.world.calls_of(A.RELEASE_CLAIM)
                assert r.parts.became_standby == 1 and r.parts.leases.claim is None
            else:
                assert not woken and not r.world.calls_of(A.RELEASE_CLAIM)
                assert r.parts.became_standby == 0 and r.parts.leases.claim == CLAIM


@pytest.mark.parametrize("state", [State.ACTIVE, State.WARMING])
def test_stepping_aside_wakes_the_standby_it_saw_though_redis_fails_after_the_release(state: State) -> None:
    """The standbys read before letting go are the ones woken: a Redis that stops answering once the
    key is released must not leave the exchange to the TTL while a live standby waits."""
    best = standby("host-b")
    listed = StandbyList(standbys=[best])
    r = run(FAILOVER, state=state, scripts={A.LIST_STANDBYS: [listed, APP_ERROR]})
    check(r)
    assert r.value is True and r.parts.became_standby == 1
    woken = r.world.signals_sent("promote")
    assert [signal.workflow_id for _, signal in woken] == [best.workflow_id]
    # One read: the list the decision to step aside was made on is the list the wake works from.
    assert len(r.world.calls_of(A.LIST_STANDBYS)) == 1
    assert r.world.first_call(A.RELEASE_CLAIM) < woken[0][0]


def test_a_run_begun_on_the_release_steps_aside_as_it_did_then() -> None:
    """Without the patch (a history recorded on 0.1.0, replayed) the list is read again after the
    release, so that history's commands replay in their order."""
    best = standby("host-b")
    ctx = context(interval_s=INTERVAL)
    p = parts(ctx, state=State.ACTIVE)
    listed = StandbyList(standbys=[best])
    world = World(ctx, {A.LIST_STANDBYS: [listed, listed]}, leases=[FAILOVER])
    recovery = Recovery(ctx, p.host, RecoveryState(), **p.hooks(), **p.shared())

    def unpatched(action: act.Action) -> Any:
        if isinstance(action, act.Patched):
            assert action.patch_id == STEP_ASIDE_WAKES_FROM_ITS_LIST
            return False
        return world(action)

    value, actions = drive(recovery.after_lease(), unpatched)
    assert value is True and p.became_standby == 1
    listed_at = [
        i for i, a in enumerate(actions) if isinstance(a, act.Call) and a.activity is A.LIST_STANDBYS
    ]
    released_at = next(
        i for i, a in enumerate(actions) if isinstance(a, act.Call) and a.activity is A.RELEASE_CLAIM
    )
    assert len(listed_at) == 2 and listed_at[0] < released_at < listed_at[1]
    assert [a.workflow_id for a in actions if isinstance(a, act.Signal)] == [best.workflow_id]


# --- our key vanished or lapsed: take the exchange back if nobody else did -------------------------

CLAIM_ANSWERS: list[Any] = [
    ClaimResult(claimed=True, epoch=9),
    ClaimResult(claimed=False, epoch=12, message="held by host-b"),
    APP_ERROR,
    NOT_PICKED_UP,
]


@pytest.mark.parametrize("release", [None, APP_ERROR], ids=["released", "unanswered"])
@pytest.mark.parametrize("answer", CLAIM_ANSWERS, ids=["claimed", "held", "error", "no-worker"])
@pytest.mark.parametrize("state", [State.IDLE, State.STARTING, State.WARMING, State.ACTIVE])
@pytest.mark.parametrize("ending", [KEY_MISSING, DEADLINE], ids=["missing", "deadline"])
def test_a_vanished_key_is_reclaimed_above_every_epoch_or_the_instance_is_lost(
    ending: act.Failure, state: State, answer: Any, release: Any
) -> None:
    scripts: dict[Any, list[Any]] = {A.CLAIM_AND_HOLD: [answer]}
    if release is not None:
        scripts[A.RELEASE_CLAIM] = [release]
    r = run(ending, state=state, scripts=scripts)
    check(r)
    claims = r.world.calls_of(A.CLAIM_AND_HOLD)
    assert len(claims) == 1
    assert claims[0].action.request.claim.highest_epoch == CLAIM.epoch  # type: ignore[union-attr]
    assert claims[0].action.retry is act.Retry.DURABLE  # type: ignore[union-attr]
    # The old key is freed (fenced) before the new claim: never two of ours.
    assert r.world.first_call(A.RELEASE_CLAIM) < r.world.first_call(A.CLAIM_AND_HOLD)
    # The stopping moment the keeper gave is the one recorded.
    stopping = [
        e for e in r.world.events(EventKind.STATE_TRANSITION) if e.to_state in (State.STOPPING, State.STOPPED)
    ]
    assert all(e.timestamp == STOPPED_AT for e in stopping)
    if isinstance(answer, ClaimResult) and answer.claimed:
        assert r.value is True and r.parts.status.state is State.IDLE
        fresh = r.parts.leases.claim
        assert fresh is not None and fresh.epoch == answer.epoch and fresh != CLAIM
        # Renewed at once, before the walk down writes anything under it.
        started = r.world.first(lambda a: isinstance(a, act.StartLease))
        assert all(at > started for at, claim in r.world.writes() if claim == fresh)
        assert bool(r.parts.enqueued) is (state in RUNNING_STATES)
    else:
        assert r.value is False  # lost: somebody else holds it, or Redis would not say
        assert r.parts.leases.highest_epoch >= (
            answer.epoch if isinstance(answer, ClaimResult) else CLAIM.epoch
        )


# --- somebody else holds the claim ---------------------------------------------------------------


@pytest.mark.parametrize("listed", STANDBY_LISTS[:3], ids=["unknown", "none", "one"])
@pytest.mark.parametrize("state", [State.IDLE, State.STARTING, State.ACTIVE])
def test_a_claim_held_by_another_is_the_instance_lost_and_the_best_standby_woken(
    state: State, listed: Any
) -> None:
    for (release, rid), signal in itertools.product(zip(RELEASES, RELEASE_IDS, strict=True), SIGNALS):
        scripts: dict[Any, list[Any]] = {A.LIST_STANDBYS: [listed]}
        if release is not None:
            scripts[A.RELEASE_CLAIM] = [release]
        r = run(CLAIM_LOST, state=state, scripts=scripts, signals=[signal])
        with case(f"release {rid}, signal {signal}"):
            check(r)
            assert r.value is False
            woken = r.world.signals_sent("promote")
            assert len(woken) == (1 if isinstance(listed, StandbyList) and listed.standbys else 0)


# --- a lease that went silent: re-attach, unless Redis proves the claim dead ------------------------


def silent_run(first: Any, probe: Any, retake: Any, then: Any, **how: Any) -> Run:
    """A lease that ended with ``first``; Redis then shows ``probe``, the lease issued again ends with
    ``retake`` (None: it runs on), and a second look shows ``then``."""
    return run(
        first,
        scripts={A.PROBE_CLAIM: [probe, then]},
        waits=[retake is not None],
        retakes=[] if retake is None else [retake],
        **how,
    )


def each_round(first: Any, probe: Any, *, thens: list[Any], **how: Any) -> list[tuple[str, Run]]:
    """Every way the world can go on after ``first`` and a first look at Redis showing ``probe``."""
    return [
        (
            f"{RETAKE_IDS[ti]}, then {PROBE_IDS[PROBES.index(then)]}",
            silent_run(first, probe, retake, then, **how),
        )
        for ti, retake in enumerate(RETAKES)
        for then in thens
    ]


@pytest.mark.parametrize("probe", PROBES, ids=PROBE_IDS)
@pytest.mark.parametrize("first", SILENCES, ids=SILENCE_IDS)
def test_a_silent_lease_is_reattached_unless_redis_proves_the_claim_dead(first: Any, probe: Any) -> None:
    # Every second look after a heartbeat timeout; after the other silences, the key then gone.
    thens = PROBES if first is SILENT else [EXPIRED]
    for label, r in each_round(first, probe, thens=thens):
        with case(f"re-issued lease {label}"):
            check(r)
            seen = r.world.seen
            # The lease is issued again at once, with the pickup window (one interval) to be picked up in.
            leases = [s.action for s in seen if isinstance(s.action, act.StartLease)]
            assert leases and leases[0].schedule_to_start_s == INTERVAL
            # Redis is asked at once, before any wait for the new lease.
            looked = r.world.index(lambda a: isinstance(a, act.Call) and a.activity is A.PROBE_CLAIM)
            waited = r.world.index(lambda a: isinstance(a, act.WaitLease))
            assert looked is not None and (waited is None or looked < waited)
            if probe in PROOFS:
                # Proven dead at the first look: the new lease is cancelled and the instance is lost.
                assert r.value is False
                assert not any(isinstance(s.action, act.WaitLease) for s in seen)
            if probe is ALIVE and label.startswith("runs"):
                # Still renewed and nothing ended: re-attached, no transition, same claim.
                assert r.value is True and r.parts.leases.leasing and r.parts.leases.claim == CLAIM
                assert not r.world.events(EventKind.STATE_TRANSITION) and not r.parts.enqueued


#: The failsafe's horizon a silent lease last reported while holding through a Redis outage (within
#: the re-issued lease's pickup window, so the part looks at Redis again at its end).
HORIZON_S = 1.5 * INTERVAL
HOLDING = act.Failure(message="timed out (HEARTBEAT)", timeout="HEARTBEAT", failsafe_horizon_s=HORIZON_S)


@pytest.mark.parametrize(
    "probe", [STALE, NO_TTL, EXPIRED, TAKEN], ids=["stale", "no-ttl", "expired", "taken"]
)
def test_a_silent_holder_that_reported_a_failsafe_horizon_is_lost_only_once_it_has_passed(probe: Any) -> None:
    # The holder's host lost Temporal while holding on promises: its lease went silent, and Redis
    # (reached by the workflow's probe, not by the holder) shows the claim unrenewed or gone
    # throughout; the re-issued lease is not picked up meanwhile.
    r = run(HOLDING, scripts={A.PROBE_CLAIM: [probe] * 20})
    check(r)
    assert r.value is False  # lost in the end
    start = r.world.seen[0].at
    (released,) = [s for s in r.world.calls_of(A.RELEASE_CLAIM)]
    waited = [s for s in r.world.seen if isinstance(s.action, act.Log) and "failsafe" in s.action.message]
    patched = [s.action for s in r.world.seen if isinstance(s.action, act.Patched)]
    if probe is TAKEN:
        # Held by another: a fencing answer the holder stops on at once; nothing to wait for.
        assert released.at == start and not waited and not patched
    else:
        # Not recorded lost, nor its key released, nor a standby woken, before the horizon passed.
        assert (released.at - start).total_seconds() >= HORIZON_S
        assert waited and patched == [act.Patched(LOST_WAITS_FOR_FAILSAFE_HORIZON)] * len(patched)
        for i, _ in r.world.signals_sent("promote"):
            assert (r.world.seen[i].at - start).total_seconds() >= HORIZON_S
    # Without a reported horizon (the failsafe off, or not holding) the same lease is lost at once.
    plain = run(
        SILENT, scripts={A.PROBE_CLAIM: [probe] * 20}, waits=[True] * 10, retakes=[NOT_PICKED_UP] * 10
    )
    check(plain)
    assert plain.value is False and plain.world.calls_of(A.RELEASE_CLAIM)[0].at == start
    assert not [s for s in plain.world.seen if isinstance(s.action, act.Patched)]


@pytest.mark.parametrize("answer", CHECKS, ids=CHECK_IDS)
@pytest.mark.parametrize("state", [State.IDLE, State.STARTING, State.WARMING, State.ACTIVE])
def test_reattached_a_running_connector_is_checked_and_brought_back_if_gone(
    state: State, answer: Any
) -> None:
    r = run(SILENT, state=state, scripts={A.PROBE_CLAIM: [ALIVE], A.CONNECTOR_CHECK: [answer]})
    check(r)
    assert r.value is True and r.parts.leases.claim == CLAIM and r.parts.leases.leasing
    checked = r.world.calls_of(A.CONNECTOR_CHECK)
    assert len(checked) == (1 if state in RUNNING_STATES else 0)
    gone = state in RUNNING_STATES and not (isinstance(answer, ConnectorReport) and answer.running)
    # Gone: recorded, walked down to idle and started again first (the claim is still ours).
    assert bool(r.parts.enqueued) is gone
    assert r.parts.status.state is (State.IDLE if gone else state)


@pytest.mark.parametrize("probe", PROBES, ids=PROBE_IDS)
def test_a_restarted_worker_is_judged_like_a_silent_lease_after_its_lease_is_cancelled(probe: Any) -> None:
    for label, r in each_round(None, probe, thens=[EXPIRED], host_restarted=True):
        with case(f"re-issued lease {label}"):
            check(r)
            # The old lease is cancelled, never waited for: it died with the old process.
            assert isinstance(r.world.seen[0].action, act.CancelLease)
            if probe in PROOFS:
                assert r.value is False
            if probe is ALIVE and label.startswith("runs"):
                assert r.value is True and r.parts.leases.leasing
