"""A warm standby's connector on our host: warmed up in the background while the standby waits,
activated under a claim just taken, demoted when handing over, stopped when the standby leaves.

Owns :class:`~perseus.core.state.WarmState`. Invariant 5 of :mod:`perseus.core.decisions` rules here: a
warm connector acts only under a claim just taken, and anything doubtful means a cold start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from perseus.core.actions import (
    Activity,
    Answer,
    CancelWarmUp,
    Log,
    Proc,
    Retry,
    Sleep,
    SpawnWarmUp,
    tolerated,
)
from perseus.core.context import Context
from perseus.core.decisions import warm_retry_delay, warm_up_standby
from perseus.core.host import Host
from perseus.core.lifecycle import Role
from perseus.core.state import WarmState, WarmUp
from perseus.errors import StepFailed
from perseus.models import Claim, ConnectorReport, EventKind
from perseus.timing import (
    CONNECTOR_CHECK_TIMEOUT_S,
    CONNECTOR_HEARTBEAT_TIMEOUT_S,
    DEMOTE_TIMEOUT_S,
    WARM_STOP_TIMEOUT_S,
)


class Warm:
    """The warm connector of a standby, from warm-up to activation or stop."""

    def __init__(
        self,
        ctx: Context,
        host: Host,
        st: WarmState,
        *,
        role: Callable[[], Role],
        own_claim: Callable[[], Claim],
        claim: Callable[[], Claim | None],
        symbols: Callable[[int], None],
        event: Callable[..., Proc],
    ) -> None:
        self.ctx, self.host, self.st = ctx, host, st
        self._role, self._own_claim, self._claim = role, own_claim, claim
        self._symbols, self._event = symbols, event

    @property
    def warm_here(self) -> bool:
        return self.st.warm_here

    @property
    def warming(self) -> bool:
        """A warm-up was started and not handed over yet."""
        return self.st.task is not None

    def _update(self, **changes: Any) -> None:
        """Replace the slice: ``warm_here``, ``task``."""
        self.st = replace(self.st, **changes)

    def consume(self) -> None:
        """Whatever the connector here was, it is not known warm any more."""
        self._update(warm_here=False)

    def lost(self) -> None:
        """The warm connector stopped, or the standby was left: warm it up again from scratch."""
        self._update(warm_here=False, task=None)

    def forget_task(self) -> None:
        """The loop warms the connector up again (unless it is still warm)."""
        self._update(task=None)

    def take_task(self) -> WarmUp | None:
        """The warm-up, handed over to a promotion (which decides what it means)."""
        task = self.st.task
        self._update(task=None)
        return task

    def maybe_warm(self, standby_id: str | None) -> Proc:
        """A warm standby keeps its connector prepared and warmed while it waits (in the background:
        the watch must renew the record meanwhile, and a warm-up can take minutes)."""
        st = self.st
        if standby_id is None or not warm_up_standby(
            role=self._role(),
            warm=self.ctx.inp.connector.warm,
            warm_here=st.warm_here,
            warming=st.task is not None,
        ):
            return
        task = WarmUp()
        self._update(task=task)
        yield SpawnWarmUp(self._warm_up(task))

    def _warm_up(self, task: WarmUp) -> Proc:
        ctx = self.ctx
        failures = 0
        try:
            while True:
                reason = yield from self._warm_up_once(attempt=failures + 1)
                if reason is None:
                    break
                failures += 1
                # Never given up for good: a standby that is not warm starts cold when promoted.
                retry = warm_retry_delay(failures)
                yield Log(f"{ctx.wf_id}: warm standby not warmed: {reason}", warning=True)
                yield from self._event(
                    EventKind.ERROR,
                    claim=self._own_claim(),
                    error=f"warm standby on {ctx.inp.host} not warmed (a promotion starts cold): {reason}"
                    + (f"; trying again in {retry:g}s" if retry is not None else ""),
                )
                if retry is None or self._role() is not Role.STANDBY:
                    return
                yield Sleep(retry, summary=f"warm up again in {retry:g}s")
                if self._role() is not Role.STANDBY:
                    return
        finally:
            task.done = True
        if self._role() is Role.STANDBY:
            self._update(warm_here=True)
            yield Log(f"{ctx.wf_id}: warm standby ready on {ctx.inp.host}")

    def _warm_up_once(self, *, attempt: int) -> Answer[str | None]:
        """Prepare and warm up a warm standby's connector: None once it is warm, else why not. The
        first attempt first asks whether it is warm already (a run that continued as new while, or
        after, it warmed up)."""
        try:
            if attempt == 1:
                found: ConnectorReport = yield from self.host.step(
                    Activity.CONNECTOR_CHECK,
                    self._own_claim(),
                    timeout_s=CONNECTOR_CHECK_TIMEOUT_S,
                    standby=True,
                )
                if found.warm_ready:
                    return None
            report: ConnectorReport = yield from self.host.step(
                Activity.CONNECTOR_PREPARE, self._own_claim(), standby=True, warm_attempt=attempt
            )
            self._symbols(report.symbol_count)
            yield from self.host.step(
                Activity.CONNECTOR_WARM_UP, self._own_claim(), standby=True, warm_attempt=attempt
            )
        except StepFailed as err:
            return self.host.explain(err)
        return None

    def activate(self) -> Answer[tuple[str | None, bool]]:
        """Promote the warm connector on our host under the claim just taken: ``ACTIVATE <epoch>``,
        confirmed by ``ACTIVE``. (None, False) when it is active; otherwise why not — the caller
        starts cold: the connector is gone, not ready, or did not confirm and was stopped — and
        whether no worker serves our host at all (a cold start cannot help then either)."""
        ctx = self.ctx
        self._update(warm_here=False)  # consumed either way: active now, or stopped / gone
        timeout = ctx.inp.connector.active_timeout_s + CONNECTOR_HEARTBEAT_TIMEOUT_S
        try:
            # Never retried: a child that did not confirm was stopped; only a cold start helps now.
            report: ConnectorReport = yield from self.host.step(
                Activity.CONNECTOR_ACTIVATE, self._claim(), timeout_s=timeout, retry=Retry.ONCE
            )
        except StepFailed as err:
            reason = self.host.explain(err)
            yield Log(f"{ctx.wf_id}: warm activation failed: {reason}")
            return reason, err.failure.not_picked_up
        if report.symbol_count:
            self._symbols(report.symbol_count)
        claim = self._claim()
        yield Log(f"{ctx.wf_id}: warm standby activated at epoch {claim.epoch if claim else 0}")
        return None, False

    def demote(self) -> Answer[bool]:
        """Deactivate our connector (it keeps running, warm); False if that failed (then stop it)."""
        try:
            report: ConnectorReport = yield from self.host.step(
                Activity.CONNECTOR_DEACTIVATE, self._claim(), timeout_s=DEMOTE_TIMEOUT_S, retry=Retry.ONCE
            )
        except StepFailed as err:
            yield Log(f"{self.ctx.wf_id}: connector not demoted, stopping it: {err.failure.message}")
            return False
        self._update(warm_here=report.warm_ready)
        return report.warm_ready

    def stop(self, reason: str) -> Proc:
        """Stop a warm standby's connector (the standby is leaving); no-op for a cold standby, and
        for an active instance (its connector was stopped on the way down)."""
        if not self.ctx.inp.connector.warm or self._role() is not Role.STANDBY:
            return
        task = self.take_task()
        if task is not None and not task.done:
            yield CancelWarmUp()
        self._update(warm_here=False)
        # Once: a worker that is shutting down stops its connectors itself, and one that is gone
        # took its children with it (parent-death signal); the standby must not wait on it.
        yield from tolerated(
            self.host.step(
                Activity.CONNECTOR_DISCONNECT, self._claim(), timeout_s=WARM_STOP_TIMEOUT_S, retry=Retry.ONCE
            ),
            f"{self.ctx.wf_id}: warm connector not stopped ({reason})",
        )
