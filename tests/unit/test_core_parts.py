"""Each part of the decision core on its own, exhaustively: every input it can be given, every
answer the world can send — and the part's own invariants after each.

``test_core.py`` runs the whole instance through every scenario; here each part is driven alone,
with only the functions it is handed (no other part), which is what the split into parts made
possible. A failed activity is thrown in as ``StepFailed``, as the workflow does.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest

from perseus.core import actions as act
from perseus.core.commands import Commands
from perseus.core.context import Context
from perseus.core.host import Host
from perseus.core.leases import Leases
from perseus.core.lifecycle import Command, Role, State, is_allowed, recovery_path
from perseus.core.standbys import Standbys
from perseus.core.state import (
    CommandState,
    LeaseState,
    Refusal,
    StandbyState,
    StatusState,
    WarmState,
)
from perseus.core.status import Status
from perseus.core.warm import Warm
from perseus.errors import InvalidTransition, StepFailed
from perseus.models import (
    Claim,
    ClaimResult,
    ConnectorReport,
    HostPresence,
    PromoteRequest,
)
from perseus.timing import WARM_RETRY_CAP_S, WARM_RETRY_FIRST_S
from tests.unit.part_driver import APP_ERROR, CLAIM, NOT_PICKED_UP, T0, calls, context, drive, world

pytestmark = pytest.mark.unit

# --- Status: every transition from every state, with and without a claim ----------------------------


@pytest.mark.parametrize("held", [True, False])
@pytest.mark.parametrize(("source", "target"), list(itertools.product(State, State)))
def test_status_walks_only_the_state_machine_and_fences_every_write(
    source: State, target: State, held: bool
) -> None:
    ctx = context()
    connected = T0 - timedelta(hours=1)
    status = Status(
        ctx,
        Host(ctx),
        StatusState(state=source, connected_at=connected),
        claim=lambda: CLAIM if held else None,
        actor=lambda: "cli:ops",
        details=lambda: act.Details("-"),
    )
    proc = status.transition(target)
    if not is_allowed(source, target):
        with pytest.raises(InvalidTransition):
            drive(proc, world())
        assert status.state is source  # refused before anything changed
        return
    _, actions = drive(proc, world())
    assert status.state is target
    assert status.st.connected_at == (None if target is State.IDLE else connected)
    recorded = [a.request for a in actions if isinstance(a, act.Call) and a.activity is act.Activity.RECORD]
    # One write per transition: the event, and the status merge riding with it.
    assert calls(actions) == ["record"]
    assert len(recorded) == 1 and recorded[0].event.to_state is target
    assert recorded[0].event.actor == "cli:ops"
    # The status merge rides with the event only under the claim that fences it.
    assert (recorded[0].patch is not None) is held
    if held:
        assert recorded[0].patch.claim == CLAIM
        assert recorded[0].patch.fields["connectionState"] == target.value
    assert act.Search(state=target) in actions


@pytest.mark.parametrize("disconnect_fails", [True, False])
@pytest.mark.parametrize("source", [State.STARTING, State.WARMING, State.ACTIVE, State.IDLE, State.STOPPED])
def test_status_fail_records_stops_and_recovers_to_idle(source: State, disconnect_fails: bool) -> None:
    ctx = context()
    status = Status(
        ctx,
        Host(ctx),
        StatusState(state=source),
        claim=lambda: CLAIM,
        actor=lambda: None,
        details=lambda: act.Details("-"),
    )

    def on_call(call: act.Call[Any, Any]) -> Any:
        if call.activity is act.Activity.CONNECTOR_DISCONNECT and disconnect_fails:
            return APP_ERROR
        return None

    stopped, actions = drive(status.fail("it broke"), world(on_call=on_call))
    assert stopped is not disconnect_fails
    assert status.st.last_error == "it broke"
    walked = [a.state for a in actions if isinstance(a, act.Search) and a.state is not None]
    assert walked == list(recovery_path(source))
    assert status.state is (recovery_path(source) or [source])[-1]


# --- Leases: a claim against every answer, quiet or not, on the instance's host -------------------

CLAIM_ANSWERS: list[Any] = [
    ClaimResult(claimed=True, epoch=9),
    ClaimResult(claimed=False, epoch=12, message="held by host-b"),
    APP_ERROR,
    NOT_PICKED_UP,
]


@pytest.mark.parametrize("quiet", [True, False])
@pytest.mark.parametrize("automatic", [True, False])
@pytest.mark.parametrize("answer", CLAIM_ANSWERS, ids=["claimed", "held", "error", "no-worker"])
def test_a_claim_holds_exactly_what_redis_granted(answer: Any, automatic: bool, quiet: bool) -> None:
    ctx = context()
    refusals: list[Refusal | None] = []
    events: list[dict[str, Any]] = []

    def event(kind: Any, **what: Any) -> act.Proc:
        events.append({"kind": kind, **what})
        yield act.Log("event")

    status = Status(
        ctx,
        Host(ctx),
        StatusState(),
        claim=lambda: None,
        actor=lambda: None,
        details=lambda: act.Details("-"),
    )
    leases = Leases(
        ctx,
        Host(ctx),
        LeaseState(highest_epoch=10),
        record_for=status.record_for,
        event=event,
        refused=refusals.append,
    )
    asked: list[act.Call[Any, Any]] = []

    def on_call(call: act.Call[Any, Any]) -> Any:
        if call.activity is act.Activity.CLAIM_AND_HOLD:
            asked.append(call)
            return answer
        if call.activity is act.Activity.HOST_POLLED:
            return HostPresence(polled=False, pollers=0)
        return None

    result, _ = drive(leases.take_claim(quiet=quiet, automatic=automatic), world(on_call=on_call))
    assert len(asked) == 1
    call = asked[0]
    # On the host, whose keeper renews the claim from the moment it is taken.
    assert call.queue == ctx.host_queue
    request = call.request.claim
    assert (request.highest_epoch, request.automatic) == (10, automatic)
    granted = isinstance(answer, ClaimResult) and answer.claimed
    assert (result is not None) is granted
    assert (leases.claim is not None) is granted
    if granted:
        assert leases.claim == Claim(instance_id=request.status.instance_id, epoch=9)
        assert refusals == [None]
    else:
        assert len(refusals) == (0 if quiet else 1)
        assert all(r is not None and r.message for r in refusals)
    # Every epoch heard of raises the floor; a refusal by a holder is a conflict event unless quiet.
    assert leases.highest_epoch == max(10, answer.epoch if isinstance(answer, ClaimResult) else 0)
    conflict = isinstance(answer, ClaimResult) and not answer.claimed and not quiet
    assert len(events) == (1 if conflict else 0)


# --- Commands: every sequence of queue operations up to four long ----------------------------------

OPS = ["user", "internal", "first", "next", "confirm", "close"]


@pytest.mark.parametrize("ops", list(itertools.product(OPS, repeat=4)), ids="-".join)
def test_the_queue_numbers_orders_and_answers_every_command(ops: tuple[str, ...]) -> None:
    commands = Commands(CommandState())
    model: list[Any] = []  # what the queue must hold, front first
    numbers = itertools.count()
    for op in ops:
        if op in ("user", "internal", "first"):
            ticket = commands.enqueue(Command.START, internal=op != "user", first=op == "first")
            assert ticket.number == (next(numbers) if op == "user" else -1)
            if op == "first":
                model.insert(0, ticket)
            else:
                model.append(ticket)
        elif op == "next" and model:
            assert commands.next() == model.pop(0)
        elif op == "confirm":
            found = commands.confirm_start("instance-x")
            assert found is bool(model)
            if model:
                model[0] = type(model[0])(**{**vars(model[0]), "confirm_to": "instance-x"})
        elif op == "close":
            closing = [t for t in model if t.number >= 0]
            commands.close("gone", State.IDLE)
            model.clear()
            for ticket in closing:
                assert commands.has_result(ticket)
                assert commands.take_result(ticket).error == "instance ended: gone"
                assert not commands.has_result(ticket)
        assert list(commands.st.queue) == model
        assert commands.pending == [t.command for t in model]


# --- Standbys: a failed start's backoff, the promotions, becoming a standby ------------------------


def standbys_part(ctx: Context) -> Standbys:
    def event(kind: Any, **what: Any) -> act.Proc:
        yield act.Log(f"event {kind}")

    return Standbys(
        ctx,
        StandbyState(role=Role.STANDBY, standby_id="sb-1"),
        event=event,
        highest_epoch=lambda: 7,
        state=lambda: State.IDLE,
    )


@pytest.mark.parametrize("failures", range(1, 10))
def test_a_failed_start_puts_the_host_behind_for_a_doubling_capped_backoff(failures: int) -> None:
    ctx = context()
    standbys = standbys_part(ctx)
    for n in range(1, failures + 1):
        backoff = standbys.start_failed(f"failure {n}")
        assert backoff == min(WARM_RETRY_CAP_S, WARM_RETRY_FIRST_S * 2 ** (n - 1))
    assert standbys.st.start_failures == failures and standbys.st.start_error == f"failure {failures}"
    assert standbys.backing_off(T0) and not standbys.backing_off(T0 + timedelta(seconds=WARM_RETRY_CAP_S))
    assert standbys.record().start_error == f"failure {failures}"
    standbys.started()
    forgotten: StandbyState = standbys.st
    assert forgotten.start_failures == 0 and forgotten.start_retry_at is None
    assert forgotten.start_error is None
    assert not standbys.backing_off(T0)


@pytest.mark.parametrize("required", [True, False])
@pytest.mark.parametrize("put_fails", [True, False])
def test_becoming_a_standby_is_visible_only_once_announced(required: bool, put_fails: bool) -> None:
    ctx = context()
    standbys = standbys_part(ctx)

    def on_call(call: act.Call[Any, Any]) -> Any:
        return APP_ERROR if call.activity is act.Activity.PUT_STANDBY and put_fails else None

    proc = standbys.become(required=required)
    if put_fails and required:
        with pytest.raises(StepFailed):
            drive(proc, world(on_call=on_call))
        assert not standbys.st.visible  # a registration that failed shows no standby
        return
    _, actions = drive(proc, world(on_call=on_call))
    assert standbys.role is Role.STANDBY and standbys.st.visible and standbys.standby_id
    assert act.Search(role=Role.STANDBY, state=State.IDLE) in actions
    assert any(isinstance(a, act.Log) and a.warning for a in actions) is put_fails


def test_promotions_are_taken_first_come_first_served() -> None:
    standbys = standbys_part(context())
    sent = [PromoteRequest(reason=f"r{i}", min_epoch=i) for i in range(4)]
    for req in sent:
        standbys.promoted(req)
    assert [standbys.next_promotion() for _ in sent] == sent
    assert standbys.promotions == ()


# --- Warm: activation against every answer ---------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        ConnectorReport(running=True, symbol_count=0),
        ConnectorReport(running=True, symbol_count=42),
        APP_ERROR,
        NOT_PICKED_UP,
    ],
    ids=["active", "active-symbols", "refused", "no-worker"],
)
@pytest.mark.parametrize("warm_here", [True, False])
def test_a_warm_activation_is_consumed_whatever_its_answer(answer: Any, warm_here: bool) -> None:
    ctx = context(warm=True)
    symbols: list[int] = []

    def event(kind: Any, **what: Any) -> act.Proc:
        yield act.Log("event")

    warm = Warm(
        ctx,
        Host(ctx),
        WarmState(warm_here=warm_here),
        role=lambda: Role.ACTIVE,
        own_claim=lambda: Claim(instance_id="standby", epoch=0),
        claim=lambda: CLAIM,
        symbols=symbols.append,
        event=event,
    )
    activations: list[act.Call[Any, Any]] = []

    def on_call(call: act.Call[Any, Any]) -> Any:
        if call.activity is act.Activity.CONNECTOR_ACTIVATE:
            activations.append(call)
            return answer
        if call.activity is act.Activity.HOST_POLLED:
            return HostPresence(polled=False, pollers=0)
        return None

    (why, no_worker), _ = drive(warm.activate(), world(on_call=on_call))
    assert not warm.warm_here  # consumed: active now, or a cold start follows
    assert len(activations) == 1 and activations[0].request.claim == CLAIM  # only under the claim
    assert activations[0].retry is act.Retry.ONCE
    if isinstance(answer, ConnectorReport):
        assert (why, no_worker) == (None, False)
        assert symbols == ([answer.symbol_count] if answer.symbol_count else [])
    else:
        assert why is not None and no_worker is answer.not_picked_up
