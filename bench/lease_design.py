"""The steady state of Perseus' heartbeat without the instance workflow's way there (bench-only).

``bench.fleet --designs lease`` measures what one host worker spends per beat once every instance is
active, without registering a thousand instances through the whole lifecycle first (that takes the
better part of half an hour on a loaded 2-core machine, and in steady state the instance workflow
does nothing at all: 0 workflow tasks per second). The bench driver takes each claim in Redis itself
(the same Lua claim as the registry activity), then starts one :class:`LeaseOnlyWorkflow` per claim,
which runs the real ``hold_lease`` on the host's queue with the options the instance workflow gives
it (heartbeat timeout, one attempt, TRY_CANCEL). The measured process is the real host worker
(``worker.run_worker`` serving only the host queue), so everything a beat costs there — the keeper's
renewal, the activity's heartbeat, the SDK's heartbeat RPC — is in the figure.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from perseus.core.decisions import lease_heartbeat_timeout_s
    from perseus.keys import host_task_queue
    from perseus.models import Claim, LeaseOutcome, LeaseRequest

LEASE_QUEUE = "bench-lease"


class LeaseInput(BaseModel):
    exchange_id: int
    instance_id: str
    epoch: int
    heartbeat_interval_s: float
    host: str
    term_s: float = 6 * 3600


@workflow.defn(name="BenchLeaseOnly")
class LeaseOnlyWorkflow:
    @workflow.run
    async def run(self, inp: LeaseInput) -> str:
        interval = inp.heartbeat_interval_s
        outcome: LeaseOutcome = await workflow.execute_activity(
            "hold_lease",
            LeaseRequest(
                workflow_id=workflow.info().workflow_id,
                exchange_id=inp.exchange_id,
                claim=Claim(instance_id=inp.instance_id, epoch=inp.epoch),
                heartbeat_interval_s=interval,
                term_s=inp.term_s,
            ),
            result_type=LeaseOutcome,
            task_queue=host_task_queue(inp.host),
            start_to_close_timeout=timedelta(seconds=inp.term_s + 4 * interval),
            # The instance workflow's own rule: the lease heartbeats at the cadence it is given.
            heartbeat_timeout=timedelta(seconds=lease_heartbeat_timeout_s(interval)),
            retry_policy=RetryPolicy(maximum_attempts=1),
            cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
        )
        return f"term ended after {outcome.renewals} renewals"
