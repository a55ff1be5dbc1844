"""Where a transition's record is written (issue 24): tried briefly by the worker that runs the
workflow task, then handed to a worker that can write it — the instance's own host, then the shared
queue if no worker picks it up there — never retried in place until Redis returns. Pure: no servers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, TimeoutType

from perseus.core import actions as act
from perseus.core.decisions import RecordRoute, record_moves_to, record_starts
from perseus.core.record import RECORD_MOVES, Writer
from perseus.errors import NON_RETRYABLE_ERROR_TYPES
from perseus.keys import host_task_queue
from perseus.models import EventKind, PatchResult, Recorded
from perseus.timing import RECORD_AWAY_S, RECORD_HERE_S
from tests.unit.part_driver import CLAIM, HOST, NOT_PICKED_UP, context, drive
from workflows.instance import failure_of

pytestmark = pytest.mark.unit

#: Redis did not answer the worker (the error the store raises for it), and a timeout.
REDIS_AWAY = act.Failure(message="Redis did not answer", error_type="ServiceUnavailable")
TIMED_OUT = act.Failure(message="timed out (SCHEDULE_TO_CLOSE)", timeout="SCHEDULE_TO_CLOSE")
#: An answer no retry can mend.
FINAL = act.Failure(message="bad request", error_type=NON_RETRYABLE_ERROR_TYPES[0])
RECORDED = Recorded(stream_id="1-0", patch=PatchResult(applied=True), notify=True)
REFUSED = Recorded(stream_id="1-0", patch=PatchResult(applied=False, reason="stale"), notify=False)


@pytest.mark.parametrize(
    ("tried", "retryable", "not_picked_up", "moves_to"),
    [
        (RecordRoute.HERE, True, False, RecordRoute.HOST),
        (RecordRoute.HERE, False, False, None),
        (RecordRoute.HOST, True, True, RecordRoute.SHARED),
        (RecordRoute.HOST, False, False, None),
        (RecordRoute.HOST, True, False, None),
        (RecordRoute.SHARED, True, True, None),
        (RecordRoute.SHARED, False, False, None),
    ],
)
def test_record_moves_to(tried: RecordRoute, retryable: bool, not_picked_up: bool, moves_to: Any) -> None:
    assert record_moves_to(tried, retryable=retryable, not_picked_up=not_picked_up) is moves_to


def test_every_route_ends() -> None:
    """Whatever fails, the record moves at most twice: it cannot bounce between routes."""
    for retryable in (True, False):
        for not_picked_up in (True, False):
            route: RecordRoute | None = RecordRoute.HERE
            seen = []
            while route is not None:
                seen.append(route)
                route = record_moves_to(route, retryable=retryable, not_picked_up=not_picked_up)
            assert len(seen) == len(set(seen)) <= 3


def run(answers: list[Any], *, patched: bool = True) -> tuple[list[act.Action], list[act.Call[Any, Any]]]:
    """Record one event through the Writer; each record call answered in turn from ``answers``."""
    ctx = context()
    writer = Writer(ctx, claim=lambda: CLAIM, actor=lambda: None)
    event = writer.network_event(EventKind.STATE_TRANSITION)
    pending = list(answers)

    def answer(action: act.Action) -> Any:
        if isinstance(action, act.Patched):
            assert action.patch_id == RECORD_MOVES
            return patched
        if isinstance(action, act.Call):
            return pending.pop(0)
        return None

    _, actions = drive(writer.record(event, writer.status_patch({"x": 1})), answer)
    assert pending == []
    return actions, [a for a in actions if isinstance(a, act.Call)]


def test_a_healthy_worker_writes_it_here_in_one_bounded_attempt() -> None:
    actions, (call,) = run([RECORDED])
    assert call.local and call.retry is act.Retry.ONCE
    assert call.schedule_to_close_s == RECORD_HERE_S
    assert not any(isinstance(a, act.Patched) for a in actions)  # no marker on the happy path
    assert any(isinstance(a, act.Notify) for a in actions)


@pytest.mark.parametrize("failure", [REDIS_AWAY, TIMED_OUT], ids=["redis-away", "timed-out"])
def test_a_worker_that_cannot_write_hands_it_to_the_instances_host(failure: act.Failure) -> None:
    actions, (here, there) = run([failure, RECORDED])
    assert here.local
    assert not there.local and there.queue == host_task_queue(HOST) and there.retry is act.Retry.DURABLE
    assert there.schedule_to_start_s is not None  # a host with no worker is found out
    assert there.request == here.request  # the same write: same eventId, same fenced merge
    assert isinstance(actions[actions.index(here) + 1], act.Patched)
    assert any(isinstance(a, act.Notify) for a in actions)


def test_a_host_with_no_worker_leaves_it_to_the_shared_queue() -> None:
    _, (_, on_host, shared) = run([REDIS_AWAY, NOT_PICKED_UP, RECORDED])
    assert on_host.queue == host_task_queue(HOST)
    assert not shared.local and shared.queue is None and shared.retry is act.Retry.DURABLE
    assert shared.request == on_host.request


def test_a_run_begun_before_the_patch_gives_up_as_it_always_did() -> None:
    actions, (call,) = run([REDIS_AWAY], patched=False)
    assert call.local
    assert any(isinstance(a, act.Log) and a.warning and "not recorded" in a.message for a in actions)
    assert not any(isinstance(a, act.Notify) for a in actions)


def test_a_final_answer_is_final_here_too() -> None:
    """A non-retryable failure is not moved (and asks no patch: its meaning is unchanged)."""
    actions, (call,) = run([FINAL])
    assert call.local
    assert not any(isinstance(a, act.Patched) for a in actions)
    assert not any(isinstance(a, act.Notify) for a in actions)


def test_a_refused_merge_is_an_answer_not_a_failure() -> None:
    actions, (call,) = run([REFUSED])
    assert call.local
    assert any(isinstance(a, act.Log) and "refused" in a.message for a in actions)


def test_records_start_here_unless_one_had_to_leave_lately() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert record_starts(now, None) is RecordRoute.HERE
    assert record_starts(now, now + timedelta(seconds=1)) is RecordRoute.HOST
    assert record_starts(now, now) is RecordRoute.HERE


def test_after_a_move_the_next_records_skip_this_worker_for_a_while() -> None:
    """The next workflow tasks stay on the cut-off worker (its cache): trying each record there first
    would cost the bound again for every transition while the partition lasts."""
    ctx = context()
    writer = Writer(ctx, claim=lambda: CLAIM, actor=lambda: None)
    pending: list[Any] = [REDIS_AWAY, RECORDED, RECORDED, RECORDED]

    def answer(action: act.Action) -> Any:
        if isinstance(action, act.Patched):
            return True
        return pending.pop(0) if isinstance(action, act.Call) else None

    def record() -> list[act.Call[Any, Any]]:
        event = writer.network_event(EventKind.STATE_TRANSITION)
        _, actions = drive(writer.record(event), answer)
        return [a for a in actions if isinstance(a, act.Call)]

    assert [c.local for c in record()] == [True, False]
    ctx.clock.advance(RECORD_AWAY_S - 1)  # type: ignore[attr-defined]
    assert [c.local for c in record()] == [False]  # straight to the host
    ctx.clock.advance(2)  # type: ignore[attr-defined]
    assert [c.local for c in record()] == [True]  # here again
    assert pending == []


def wrapped(cause: BaseException) -> ActivityError:
    """``cause`` as a running local activity's failure reaches the workflow: an ActivityError."""
    err = ActivityError(
        "activity failed",
        scheduled_event_id=0,
        started_event_id=0,
        identity="",
        activity_type="record",
        activity_id="1",
        retry_state=None,
    )
    err.__cause__ = cause
    return err


def test_a_local_timeout_reads_the_same_run_or_replayed() -> None:
    """Run, a local activity's timeout is an ActivityError caused by it; replayed from its marker, the
    bare TimeoutError. Read differently, a replay of a moved record failed the workflow instead."""
    timeout = TimeoutError(
        "Activity timed out", type=TimeoutType.SCHEDULE_TO_CLOSE, last_heartbeat_details=[]
    )
    run_as = wrapped(timeout)
    assert failure_of(timeout) == failure_of(run_as)
    assert failure_of(timeout).timeout == "SCHEDULE_TO_CLOSE"


def test_a_local_failure_reads_the_same_wrapped_or_bare() -> None:
    """A local activity's ApplicationError reached a bench run's workflow unwrapped (Redis refused
    both attempts): read as anything but the activity's failure, it failed the whole run instead of
    moving the record."""
    refused = ApplicationError("Redis unreachable", type="ServiceUnavailable")
    assert failure_of(refused) == failure_of(wrapped(refused))
    assert failure_of(refused).error_type == "ServiceUnavailable"
