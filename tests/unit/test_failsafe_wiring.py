"""The failsafe's part of the instance core (``perseus/core/failsafe.py``) on its own, and the roster
workflow's names: with the failsafe off not one action (no patch marker, no activity, no signal),
so a run issues exactly today's commands; on, each command behind the ``failsafe-roster`` patch;
and a promise is asked of the member's own host, whose refusal or silence is a refusal."""

from __future__ import annotations

from typing import Any

import pytest

from perseus import keys
from perseus.core import actions as act
from perseus.core.failsafe import FAILSAFE_PATCH, Failsafe
from perseus.core.host import Host
from perseus.models import FailsafeHolding, PromiseAnswer, PromiseRequest, RosterAnswer, RosterMember
from perseus.timing import failsafe_counted_s
from tests.unit.part_driver import APP_ERROR, HOST, NOT_PICKED_UP, WF_ID, context, drive, world

pytestmark = pytest.mark.unit

ASK = PromiseRequest(
    exchange_id=1, exchange="coinbase", holder_instance_id="theirs", epoch=9, holder_workflow_id="instance-x"
)


def part(*, on: bool, holds: bool = False) -> Failsafe:
    ctx = context(interval_s=2.0)
    ctx.inp = ctx.inp.model_copy(update={"failsafe": on})
    return Failsafe(ctx, Host(ctx), holds_claim=lambda: holds, highest_epoch=lambda: 4)


@pytest.mark.parametrize("step", ["enrol", "leave", "promise"])
def test_with_the_failsafe_off_nothing_is_issued(step: str) -> None:
    fs = part(on=False)
    proc = fs.promise(ASK) if step == "promise" else getattr(fs, step)()
    result, actions = drive(proc, world())
    assert actions == []
    if step == "promise":
        assert result == PromiseAnswer(granted=False, reason="failsafe is off for this instance")


def test_enrol_runs_on_the_instances_host_behind_the_patch() -> None:
    roster = RosterAnswer(members=[RosterMember(workflow_id=WF_ID, host=HOST)])
    _, actions = drive(part(on=True).enrol(), world(on_call=lambda call: roster))
    assert isinstance(actions[0], act.Patched) and actions[0].patch_id == FAILSAFE_PATCH
    (call,) = actions[1:]
    assert isinstance(call, act.Call) and call.activity is act.Activity.FAILSAFE_ENROL
    assert call.queue == keys.host_task_queue(HOST)
    assert call.request.member == RosterMember(workflow_id=WF_ID, host=HOST)
    assert (call.request.exchange, call.request.exchange_id) == ("coinbase", 1)


def test_a_run_without_the_patch_neither_enrols_nor_leaves_nor_grants() -> None:
    def old(action: act.Action) -> Any:
        return False if isinstance(action, act.Patched) else None

    for proc in (part(on=True).enrol(), part(on=True).leave()):
        _, actions = drive(proc, old)
        assert [type(a) for a in actions] == [act.Patched]
    answer, actions = drive(part(on=True).promise(ASK), old)
    assert not answer.granted and [type(a) for a in actions] == [act.Patched]


def test_leave_signals_the_roster() -> None:
    _, actions = drive(part(on=True).leave(), world())
    signal = actions[-1]
    assert isinstance(signal, act.Signal)
    assert (signal.workflow_id, signal.signal) == (keys.roster_workflow_id("coinbase"), keys.ROSTER_LEAVE)
    assert signal.payload == RosterMember(workflow_id=WF_ID, host=HOST)


@pytest.mark.parametrize("holds", [True, False])
def test_a_promise_is_decided_on_the_members_own_host_with_what_its_workflow_knows(holds: bool) -> None:
    granted = PromiseAnswer(granted=True, reason="Redis does not answer here either")
    answer, actions = drive(part(on=True, holds=holds).promise(ASK), world(on_call=lambda call: granted))
    assert answer == granted
    call = actions[-1]
    assert isinstance(call, act.Call) and call.activity is act.Activity.FAILSAFE_GRANT
    assert call.queue == keys.host_task_queue(HOST) and call.retry is act.Retry.ONCE
    # Worth nothing to the holder past its count of it: neither waits longer for a worker.
    assert call.schedule_to_start_s == call.start_to_close_s == failsafe_counted_s(2.0)
    req = call.request
    assert (req.holds_claim, req.asker_epoch, req.highest_epoch_seen, req.failsafe) == (holds, 9, 4, True)


@pytest.mark.parametrize("failure", [NOT_PICKED_UP, APP_ERROR], ids=["no-worker", "app-error"])
def test_a_host_that_does_not_answer_refuses(failure: act.Failure) -> None:
    answer, _ = drive(part(on=True).promise(ASK), world(on_call=lambda call: failure))
    assert not answer.granted and failure.message in answer.reason


def test_a_holder_is_never_its_own_granter() -> None:
    own = ASK.model_copy(update={"holder_workflow_id": WF_ID})
    answer, actions = drive(part(on=True).promise(own), world())
    assert not answer.granted and actions == []


def test_the_roster_workflow_registers_the_names_its_callers_use() -> None:
    from temporalio import workflow

    from workflows.roster import RosterWorkflow

    definition = workflow._Definition.must_from_class(RosterWorkflow)
    assert definition.name == keys.ROSTER_WORKFLOW
    assert {keys.ROSTER_ENROL, keys.ROSTER_READ} <= set(definition.updates)
    assert keys.ROSTER_LEAVE in definition.signals


@pytest.mark.parametrize(
    ("details", "horizon"),
    [
        ([FailsafeHolding(holding=True, horizon_s=2.5, promised=2, members=2)], 2.5),
        ([FailsafeHolding(holding=False, horizon_s=0.9, promised=0, members=2)], None),
        ([], None),
        (["something else"], None),
    ],
    ids=["holding", "not-holding", "none", "other"],
)
def test_a_silent_lease_carries_the_horizon_it_last_reported_while_holding(
    details: list[Any], horizon: Any
) -> None:
    """The workflow reads the lease's last heartbeat details (as Temporal hands them back, through the
    payload converter) into the failure the core judges: a horizon only while holding."""
    from temporalio.exceptions import ActivityError, RetryState, TimeoutError, TimeoutType

    from perseus.temporal import converter
    from workflows.instance import failure_of

    decoded = converter.payload_converter.from_payloads(converter.payload_converter.to_payloads(details))
    cause = TimeoutError(
        "activity Heartbeat timeout", type=TimeoutType.HEARTBEAT, last_heartbeat_details=decoded
    )
    err = ActivityError(
        "activity timeout",
        scheduled_event_id=1,
        started_event_id=2,
        identity="w",
        activity_type="hold_lease",
        activity_id="1",
        retry_state=RetryState.TIMEOUT,
    )
    err.__cause__ = cause
    failure = failure_of(err)
    assert failure.timeout == "HEARTBEAT" and failure.failsafe_horizon_s == horizon
