"""The target of a planned handoff, asked before anything stops here: is its worker answering, could
our connector start there, is a warm target warm yet (waited for, bounded).

Holds no memory: it reads the target's standby record (refreshed through the standbys part) and
asks the target's own host queue.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from perseus.core.actions import Activity, Answer, Call, Log, Retry, Sleep, WaitUntil, ask, tolerated
from perseus.core.context import Context
from perseus.core.decisions import handoff_target_look, seconds_until, target_not_ready
from perseus.core.lifecycle import Role
from perseus.core.standbys import Standbys
from perseus.errors import StepFailed
from perseus.keys import host_task_queue
from perseus.models import (
    Claim,
    ClaimProbe,
    ClaimProbeRequest,
    ConnectorPreflight,
    ConnectorRequest,
    StandbyRecord,
)
from perseus.timing import (
    HANDOFF_TIMEOUT_S,
    LEASE_SLACK_INTERVALS,
    PROBE_TIMEOUT_S,
    WARM_POLL_FLOOR_S,
    WARM_WAIT_SLACK_INTERVALS,
)


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

    def silent(self, target: StandbyRecord) -> Answer[str | None]:
        """Why the target cannot take over now, or None.

        Asked before anything stops here: a frozen or partitioned target would otherwise leave the
        exchange with nobody until the handoff times out. The target's host is asked whether our
        connector could start there (its worker answering proves it alive), and the caller then
        refuses a warm target that is not ready: a handoff whose cold start then fails would leave
        the exchange without a connector for half a minute before it is taken back."""
        wait = self.ctx.host_wait()
        try:
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
            return f"the worker on {target.host} did not answer: {err.failure.message}"
        if found.cannot_start is not None:
            return f"{target.host} cannot start the connector: {found.cannot_start}"
        return None

    def until_warm(self, target: StandbyRecord) -> Answer[StandbyRecord]:
        """Wait (bounded by the connector's ready timeout) until the warm target says it is ready;
        the latest record of it either way — a target that never gets ready is handed over cold."""
        waited = 0.0
        limit = (
            self.ctx.inp.connector.ready_timeout_s
            + WARM_WAIT_SLACK_INTERVALS * self.ctx.inp.heartbeat_interval_s
        )
        step = max(WARM_POLL_FLOOR_S, self.ctx.inp.heartbeat_interval_s / 2)
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

    def await_confirmation(
        self, target: StandbyRecord, old_claim: Claim, released_at: datetime, *, answered: Callable[[], bool]
    ) -> Answer[tuple[str | None, bool, float]]:
        """Wait for the target's confirmation, looking at the key meanwhile
        (:func:`~perseus.core.decisions.handoff_target_look`): a target that died or froze midway is
        given up as soon as Redis shows it, not when its workflow hears of it. Returns why the target
        will not confirm (None: it ``answered``), whether the take-back may claim over the target's
        key, and how long it waits before it claims."""
        ctx = self.ctx
        interval = ctx.inp.heartbeat_interval_s
        limit = HANDOFF_TIMEOUT_S + LEASE_SLACK_INTERVALS * interval
        look_in = interval
        seen_target = False
        while True:
            waited = (ctx.clock.now() - released_at).total_seconds()
            if waited >= limit:
                return "no confirmation in time", False, 0.0
            if (
                yield WaitUntil(
                    answered,
                    timeout_s=min(look_in, limit - waited),
                    summary=f"confirmation from {target.host}",
                )
            ):
                return None, False, 0.0
            probe: ClaimProbe | None = yield from tolerated(
                Call(
                    Activity.PROBE_CLAIM,
                    ClaimProbeRequest(exchange_id=ctx.resolved.exchange.id, claim=old_claim),
                    start_to_close_s=PROBE_TIMEOUT_S,
                    retry=Retry.TWICE,
                    summary=f"has {target.host} claimed?",
                ),
                "claim probe failed",
            )
            if answered():
                return None, False, 0.0  # answered while we looked
            if probe is None:
                look_in = interval  # Redis did not answer: the target's workflow may still
                continue
            look = handoff_target_look(
                holder=probe.holder,
                renewed_ms_ago=probe.renewed_ms_ago,
                target_host=target.host,
                since_release_s=(ctx.clock.now() - released_at).total_seconds(),
                interval_s=interval,
                seen_target=seen_target,
            )
            if look.lost is not None:
                yield Log(f"{ctx.wf_id}: handoff to {target.host}: {look.lost}", warning=True)
                return look.lost, look.take_lapsed, look.act_after_s
            seen_target = seen_target or probe.holder == target.host
            look_in = look.look_again_s
