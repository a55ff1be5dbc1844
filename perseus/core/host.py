"""The instance's host: a connector step on its own task queue, asked again while the host's worker
is busy rather than missing; whether the worker polls; what a step's failure means to an operator.
Holds no memory: the claim a step runs under is passed in.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

from perseus.core.actions import (
    Activity,
    ActivityRef,
    Answer,
    Call,
    Log,
    Retry,
    ask,
    tolerated,
)
from perseus.core.context import Context
from perseus.core.decisions import lease_heartbeat_timeout_s
from perseus.core.lifecycle import Role
from perseus.errors import NON_RETRYABLE_ERROR_TYPES, StepFailed
from perseus.models import Claim, ConnectorReport, ConnectorRequest, HostPresence, IdentityRequest
from perseus.timing import (
    CONNECTOR_CHECK_TIMEOUT_S,
    CONNECTOR_HEARTBEAT_TIMEOUT_S,
    CONNECTOR_STEP_TIMEOUT_S,
    HOST_BUSY_LIMIT_S,
    STEP_TIMEOUT_S,
)

R = TypeVar("R")


def on_host_first(ctx: Context, call: Call[Any, R]) -> Answer[R]:
    """A step of the shared queue (a Redis read or write any worker can make), tried once by the
    worker of our own host; if that attempt fails for any reason a retry may mend — nobody picked it
    up within the host wait, that host's Redis did not answer, a host worker of an older release
    has not registered the step — ``call`` runs on the shared queue as it says.

    For the steps of a standby taking over, whose host has just answered (its watch saw the
    vacancy; its claim was taken there): any worker of the shared queue may take a step, and one
    cut off from Redis fails it, one cut off from Temporal or paused holds it until its timeout, as
    it is handed the tasks its open polls ask for (issue 24; the lab's holder faults). The
    holder's worker is the likeliest such worker, and a standby's workflow is often cached there."""
    try:
        return (
            yield from ask(
                replace(
                    call,
                    queue=ctx.host_queue,
                    schedule_to_start_s=ctx.host_wait(),
                    retry=Retry.ONCE,
                    summary=f"{call.summary} on {ctx.inp.host}",
                )
            )
        )
    except StepFailed as err:
        if err.failure.error_type in NON_RETRYABLE_ERROR_TYPES:
            raise
        why = err.failure.message
    yield Log(f"{ctx.wf_id}: {call.activity} failed on {ctx.inp.host} ({why}): asking the shared queue")
    return (yield from ask(call))


class Host:
    """Steps on the instance's own host."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def explain(self, err: StepFailed) -> str:
        ctx = self.ctx
        if err.failure.not_picked_up:
            return (
                f"no worker is serving host {ctx.inp.host!r} (task queue {ctx.host_queue}); "
                f"start one with: perseus worker --host {ctx.inp.host}"
            )
        return err.failure.message

    def on_host(self, call: Call[Any, R]) -> Answer[R]:
        """Run a step on a host queue. One not picked up in time is tried again while the host's
        worker is seen polling its queue — busy, not missing — for at most ``HOST_BUSY_LIMIT_S``;
        with nobody polling, the failure stands (the caller reports it)."""
        ctx = self.ctx
        since = ctx.clock.now()
        while True:
            try:
                return (yield from ask(call))
            except StepFailed as err:
                late = ctx.clock.now() - since > timedelta(seconds=HOST_BUSY_LIMIT_S)
                if late or not err.failure.not_picked_up or not (yield from self._polled()):
                    raise
            yield Log(f"{ctx.wf_id}: the worker on {ctx.inp.host} is busy; asking it again")

    def _polled(self) -> Answer[bool]:
        presence: HostPresence | None = yield from tolerated(
            Call(
                Activity.HOST_POLLED,
                IdentityRequest(host=self.ctx.inp.host),
                start_to_close_s=STEP_TIMEOUT_S,
                retry=Retry.SHARED,
                summary=f"is {self.ctx.inp.host} polled?",
            ),
            "host presence unknown",
        )
        return presence is not None and presence.polled

    def step(
        self,
        activity: ActivityRef[ConnectorRequest, R],
        claim: Claim | None,
        timeout_s: float = CONNECTOR_STEP_TIMEOUT_S,
        *,
        standby: bool = False,
        retry: Retry = Retry.HOST,
        warm_attempt: int | None = None,
    ) -> Answer[R]:
        """One connector step on our host, under ``claim``. ``standby``: for a warm standby's
        connector, whose claim is its own standby id at epoch 0 (it holds none); ``warm_attempt``:
        which try of its warm-up this is (the host shows when the next one comes if it fails)."""
        ctx = self.ctx
        request = ConnectorRequest(
            workflow_id=ctx.wf_id,
            exchange_id=ctx.resolved.exchange.id,
            exchange_name=ctx.resolved.exchange.name,
            spec=ctx.inp.connector,
            claim=claim,
            heartbeat_interval_s=ctx.inp.heartbeat_interval_s,
            role=Role.STANDBY if standby else Role.ACTIVE,
            warm_attempt=warm_attempt,
        )
        return (
            yield from self.on_host(
                Call(
                    activity,
                    request,
                    queue=ctx.host_queue,
                    schedule_to_start_s=ctx.host_wait(),
                    start_to_close_s=timeout_s,
                    # Steps heartbeat every second: a host that stops mid-step is seen within seconds.
                    heartbeat_timeout_s=CONNECTOR_HEARTBEAT_TIMEOUT_S,
                    retry=retry,
                    summary=f"{activity.value} on {ctx.inp.host}" + (" (warm standby)" if standby else ""),
                )
            )
        )

    def alive(self, claim: Claim | None) -> Answer[bool]:
        try:
            report: ConnectorReport = yield from self.step(
                Activity.CONNECTOR_CHECK, claim, timeout_s=CONNECTOR_CHECK_TIMEOUT_S
            )
        except StepFailed:
            return False
        return report.running

    def heartbeat_timeout(self) -> float:
        # decisions.lease_heartbeat_timeout_s: 1.25 heartbeat periods, the period never under 5 s,
        # so the server's cost does not grow as the interval shrinks. Safety does not rest on it:
        # the claim is freed only once Redis shows it unrenewed past the renew deadline (the probe
        # in recovery.reattach), and a standby claims over from Redis alone. A longer timeout only
        # makes the workflow hear of a dead host later (docs/design.md gives the bound).
        return lease_heartbeat_timeout_s(self.ctx.inp.heartbeat_interval_s)
