"""The heartbeat design Perseus did *not* choose, kept here (bench-only) to measure it: a workflow
timer plus one short activity per beat (DESIGN §3, temporal-notes §2 "Option A").

Each beat: the workflow sleeps until the beat's due time (a durable timer), then runs
``bench_renew_once`` on the host queue, which does the very same fenced Lua renewal the lease
activity does. Due times are a fixed schedule (anchor + k × interval), so lateness does not
accumulate, exactly like ``hold_lease``. Every beat costs history events and two workflow tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from perseus.keys import iso

TIMER_QUEUE = "bench-timer"


def timer_host_queue(host: str) -> str:
    return f"bench-timer-host-{host}"


class TimerInput(BaseModel):
    exchange_id: int
    instance_id: str
    epoch: int
    heartbeat_interval_s: float
    ttl_ms: int
    host: str
    anchor: float | None = None  # epoch seconds of beat 0; set by the first run
    beats: int = 0


class RenewRequest(BaseModel):
    exchange_id: int
    instance_id: str
    epoch: int
    ttl_ms: int
    due: float  # epoch seconds at which this renewal is due


@workflow.defn(name="BenchTimerHeartbeat")
class TimerHeartbeatWorkflow:
    @workflow.run
    async def run(self, inp: TimerInput) -> str:
        anchor = inp.anchor if inp.anchor is not None else workflow.now().timestamp()
        beat = inp.beats
        while True:
            due = anchor + beat * inp.heartbeat_interval_s
            delay = due - workflow.now().timestamp()
            if delay > 0:
                await workflow.sleep(timedelta(seconds=delay), summary="next beat")
            outcome: str = await workflow.execute_activity(
                "bench_renew_once",
                RenewRequest(
                    exchange_id=inp.exchange_id,
                    instance_id=inp.instance_id,
                    epoch=inp.epoch,
                    ttl_ms=inp.ttl_ms,
                    due=due,
                ),
                result_type=str,
                task_queue=timer_host_queue(inp.host),
                schedule_to_start_timeout=timedelta(seconds=max(5.0, inp.heartbeat_interval_s)),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
            if outcome != "ok":
                return f"claim lost at beat {beat}: {outcome}"
            beat += 1
            if workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(inp.model_copy(update={"anchor": anchor, "beats": beat}))


class TimerActivities:
    """The per-beat activity; ``record(due, started_wall, started_mono, rtt, outcome)`` observes it."""

    def __init__(self, store: Any, record: Callable[[float, float, float, float, str], None]) -> None:
        self._store = store
        self._record = record

    @activity.defn(name="bench_renew_once")
    async def renew_once(self, req: RenewRequest) -> str:
        wall, mono = time.time(), time.monotonic()
        reply = await self._store.fenced(
            req.exchange_id,
            req.instance_id,
            req.epoch,
            mode="renew",
            patch={"lastHeartbeat": iso(datetime.now(UTC))},
            ttl_ms=req.ttl_ms,
        )
        self._record(req.due, wall, mono, time.monotonic() - mono, reply.outcome)
        return str(reply.outcome)
