"""The target of a planned handoff, asked before anything stops here: is its worker answering, could
our connector start there, is a warm target warm yet (waited for, bounded).

Holds no memory: it reads the target's standby record (refreshed through the standbys part) and
asks the target's own host queue.
"""

from __future__ import annotations

from perseus.core.actions import Activity, Answer, Call, Log, Patched, Retry, Sleep, ask
from perseus.core.context import Context
from perseus.core.standbys import Standbys
from perseus.decisions import seconds_until, target_not_ready
from perseus.errors import StepFailed
from perseus.keys import host_task_queue
from perseus.lifecycle import Role
from perseus.models import ConnectorPreflight, ConnectorRequest, IdentityRequest, StandbyRecord
from perseus.timing import WARM_WAIT_SLACK_INTERVALS


class Target:
    """What the handing-over instance finds out about its target."""

    def __init__(self, ctx: Context, standbys: Standbys) -> None:
        self.ctx, self.standbys = ctx, standbys

    def not_ready(self, target: StandbyRecord, *, waited_s: float | None = None) -> str | None:
        """Why the target's record says its connector is not ready (decisions.target_not_ready)."""
        return target_not_ready(
            host=target.host,
            warm=target.warm,
            warm_ready=target.warm_ready,
            warm_error=target.warm_error,
            retry_in_s=seconds_until(target.warm_retry_at, self.ctx.clock.now()),
            waited_s=waited_s,
        )

    def silent(self, target: StandbyRecord) -> Answer[tuple[str | None, bool]]:
        """Why the target cannot take over now, or None; and whether its readiness is checked.

        Asked before anything stops here (patched ``handoff-asks-target-first``): a frozen or
        partitioned target otherwise leaves the exchange with nobody until the handoff times out.
        Since ``handoff-checks-target-ready`` the target's host is asked whether our connector could
        start there (its worker answering proves it alive, as the identity call did), and the
        caller refuses a warm target that is not ready: a handoff whose cold start then fails left
        the exchange without a connector for half a minute before it was taken back."""
        if not (yield Patched("handoff-asks-target-first")):
            return None, False
        checks_ready: bool = yield Patched("handoff-checks-target-ready")
        wait = self.ctx.host_wait()
        try:
            if not checks_ready:
                yield from ask(
                    Call(
                        Activity.DETECT_IDENTITY,
                        IdentityRequest(host=target.host),
                        queue=host_task_queue(target.host),
                        schedule_to_start_s=wait,
                        start_to_close_s=wait,
                        retry=Retry.ONCE,
                        summary=f"is {target.host} answering?",
                    )
                )
                return None, False
            resolved = self.ctx.resolved
            found: ConnectorPreflight = yield from ask(
                Call(
                    Activity.CONNECTOR_PREFLIGHT,
                    ConnectorRequest(
                        workflow_id=target.workflow_id,
                        exchange_id=resolved.exchange.id,
                        exchange_name=resolved.exchange.name,
                        spec=self.ctx.inp.connector,
                        heartbeat_interval_s=self.ctx.inp.heartbeat_interval_s,
                        role=Role.STANDBY,
                    ),
                    queue=host_task_queue(target.host),
                    schedule_to_start_s=wait,
                    start_to_close_s=wait,
                    retry=Retry.ONCE,
                    summary=f"can {target.host} start the connector?",
                )
            )
        except StepFailed as err:
            return f"the worker on {target.host} did not answer: {err.failure.message}", checks_ready
        if found.cannot_start is not None:
            return f"{target.host} cannot start the connector: {found.cannot_start}", True
        return None, True

    def until_warm(self, target: StandbyRecord) -> Answer[StandbyRecord]:
        """Wait (bounded by the connector's ready timeout) until the warm target says it is ready;
        the latest record of it either way — a target that never gets ready is handed over cold."""
        waited = 0.0
        limit = (
            self.ctx.inp.connector.ready_timeout_s
            + WARM_WAIT_SLACK_INTERVALS * self.ctx.inp.heartbeat_interval_s
        )
        step = max(1.0, self.ctx.inp.heartbeat_interval_s / 2)
        while not target.warm_ready and waited < limit:
            yield Sleep(step, summary=f"wait for {target.host} to be warm")
            waited += step
            standbys: list[StandbyRecord] = yield from self.standbys.others()
            found = next((x for x in standbys if x.instance_id == target.instance_id), None)
            if found is None:
                break  # gone meanwhile: the promote signal below finds out
            target = found
        if not target.warm_ready:
            yield Log(f"{self.ctx.wf_id}: {target.host} not warm after {waited:.0f}s: handing over cold")
        return target
