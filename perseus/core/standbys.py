"""A standby: its watch, its promotion (cold or warm), and the confirmation a handoff waits for.

Invariants 4 and 5 of :mod:`perseus.decisions` rule here: after a Redis outage the holder goes
first, and a warm standby's connector acts only under a claim just taken.
"""

from __future__ import annotations

from datetime import timedelta

from perseus.core.actions import (
    Activity,
    CancelWarmUp,
    Log,
    Patched,
    Proc,
    Search,
    Sleep,
    SpawnWarmUp,
    WaitUntil,
)
from perseus.core.state import Ending, WarmUp
from perseus.core.steps import InstanceSteps
from perseus.decisions import (
    StartPath,
    act_after_vacancy_s,
    holders_release,
    released_by_holder,
    standbys_ahead,
    start_path,
    vacancy_delay,
    warm_retry_delay,
    warm_up_standby,
)
from perseus.errors import StandbyGone, StepFailed
from perseus.lifecycle import Command, Role, State, recovery_path
from perseus.models import (
    Claim,
    CommandResult,
    ConnectorReport,
    EventKind,
    PromoteRequest,
    StandbyOutcome,
    StandbyRecord,
)


class StandbyProcedures(InstanceSteps):
    """A standby waiting, woken, promoted."""

    def _after_watch(self) -> Proc:
        """A standby's watch ended: the exchange fell vacant (TTL fallback), the term ran out, the
        record vanished, or this standby's host stopped heartbeating to Temporal."""
        s = self.s
        try:
            outcome: StandbyOutcome = yield from self._take_lease()
        except StepFailed as err:
            if err.failure.kind is StandbyGone and (yield Patched("standby-reattach")):
                # Redis lost the record (an outage longer than its TTL): make it visible again.
                yield from self._put_standby()
                return True
            if (
                err.failure.error_type is None
                and (yield Patched("standby-reattach"))
                and (yield from self._standby_live())
            ):
                # Its host still renews the record: it only lost Temporal. Watch again.
                return True
            yield from self._drop_standby()
            why = f"host {self.inp.host} stopped heartbeating ({err.failure.message})"
            s.outcome = f"{Ending.STANDBY_LOST}: {why}"
            return False
        if outcome.warm_lost:
            # The warm connector stopped while it waited (the host saw it go): the loop warms it up
            # again, and a promotion before that starts cold instead of failing to activate it.
            s.warm_here, s.warm_task = False, None
            yield from self._event(
                EventKind.ERROR,
                claim=Claim(instance_id=s.standby_id or "", epoch=0),
                error=f"warm standby on {self.inp.host}: its connector stopped while waiting; "
                "warming it up again",
            )
        if outcome.vacant:
            # Nobody told us (the holder's workflow would have): the key expired. Higher priorities go
            # first; the rest give them a head start, then race — the claim script admits one. Right
            # after a Redis outage the holder itself goes first: a healthy holder whose key lapsed
            # while Redis was away must not be replaced by a race.
            standbys: list[StandbyRecord] = yield from self._standbys()
            now = self.clock.now()
            ahead = standbys_ahead(
                self.inp.priority,
                backing_off_here=s.start_retry_at is not None and s.start_retry_at > now,
                others=standbys,
                now=now,
            )
            wait = vacancy_delay(ahead, self.inp.heartbeat_interval_s, after_outage=outcome.after_outage)
            if wait:
                # Patched: runs begun before it slept the head start out even when woken meanwhile —
                # the standby that went first and could not start its connector woke us, and we
                # still waited (3.75 s at 15 s).
                if (yield Patched("woken-ends-head-start")):
                    yield WaitUntil(lambda: bool(s.promotions), timeout_s=wait, summary="head start")
                else:
                    yield Sleep(wait)
            # Patched: runs begun before it acted right after the claim (see act_after_vacancy_s).
            hold = yield Patched("vacancy-waits-out-deadline")
            # Patched: runs begun before it waited even when the key had lapsed by its TTL.
            lapsed = outcome.lapsed and (yield Patched("lapsed-key-acts-at-once"))
            yield from self._promote(
                PromoteRequest(
                    reason=(
                        "the holder stopped renewing its claim (past its renew deadline)"
                        if outcome.holder_silent
                        else "the holder's claim expired (TTL)"
                    ),
                    min_epoch=outcome.last_epoch,
                    act_after_s=(
                        act_after_vacancy_s(self.inp.heartbeat_interval_s, lapsed=lapsed) if hold else 0.0
                    ),
                    take_lapsed=outcome.holder_silent,
                )
            )
        return True

    def _standby_live(self) -> Proc:
        """Whether our standby record is still renewed (by a host that may have lost only Temporal)."""
        standbys: list[StandbyRecord] = yield from self._standbys(include_self=True)
        return any(x.instance_id == self.s.standby_id for x in standbys)

    def _promote(self, req: PromoteRequest) -> Proc:
        """Try to take the exchange. Won: drop the standby record, ``promoted``, start. Lost: stay.

        A warm standby is activated right after the claim — the one step fencing requires first —
        and the status walks starting → warming → active behind it; if it cannot be, it starts cold.
        """
        s = self.s
        s.highest_epoch = max(s.highest_epoch, req.min_epoch)
        # Only a handoff (or drain) has someone waiting for the answer: anything else promotes
        # this standby on its own, which a pause forbids.
        automatic = req.confirm_to is None
        result = yield from self._claim(quiet=True, take_lapsed=req.take_lapsed, automatic=automatic)
        if result is None:
            if req.confirm_to:
                yield from self._reply(req.confirm_to, ok=False, detail="the exchange was not free to claim")
            return
        s.role = Role.ACTIVE
        yield from self._start_lease()  # renew the fresh claim at once
        reason = req.reason
        if req.act_after_s:
            # The holder whose key vanished may act until its renew deadline: ours must not yet —
            # unless that holder tells us meanwhile that it stopped and released (a graceful stop
            # or shutdown wakes us; our watch may have seen the key go first).
            if (yield Patched("release-ends-deadline-wait")):
                yield WaitUntil(
                    lambda: released_by_holder(s.promotions, req.min_epoch),
                    timeout_s=req.act_after_s,
                    summary="wait out the old deadline",
                )
                # The event says why we act now: the holder's word, not the vacancy our watch saw
                # first (under load it usually is first: the release deletes the key at once).
                release = holders_release(s.promotions, req.min_epoch)
                if release is not None:
                    reason = f"{release.reason} (its key was seen gone first)"
            else:
                yield Sleep(req.act_after_s, summary="wait out the old deadline")
        task, s.warm_task = s.warm_task, None
        warming = task is not None and not task.done
        if task is not None and warming:
            # Still warming up: the start goes cold (its prepare replaces the half-warm connector).
            yield CancelWarmUp()
            s.warm_here = False
        cold_because: str | None = None
        no_worker = False
        warm = start_path(warm_here=s.warm_here, warming=warming) is StartPath.WARM and (
            yield Patched("warm-activate-on-promotion")
        )
        if warm:
            cold_because, no_worker = yield from self._activate_warm()
        yield from self._drop_standby()
        yield Search(role=Role.ACTIVE)
        how = ""
        if warm:
            how = f" (warm: {'activated' if cold_because is None else 'not activated'})"
        over = f"; claimed over {result.took_over}" if result.took_over else ""
        yield from self._event(EventKind.PROMOTED, detail=reason + over + how)
        for target in recovery_path(s.state):  # a former active one may still read stopped
            yield from self._transition(target)
        if warm and cold_because is None:
            s.connected_at = self.clock.now()
            self._started()
            for target in (State.STARTING, State.WARMING, State.ACTIVE):
                yield from self._transition(target)
            if req.confirm_to:
                yield from self._reply(req.confirm_to, ok=True, detail=f"active on {self.inp.host} (warm)")
            return
        if cold_because is not None and no_worker:
            # Our host has no worker: a cold start would only wait for it again. A handoff hears at
            # once (and keeps its exchange); otherwise the lease on this host fails like any other.
            yield from self._event(EventKind.ERROR, error=f"warm activation failed: {cold_because}")
            if req.confirm_to:
                failed = CommandResult(
                    command=Command.START,
                    from_state=s.state,
                    state=s.state,
                    transitions=[],
                    error=cold_because,
                )
                yield from self._confirm_takeover(req.confirm_to, failed)
            return
        if cold_because is not None:
            yield from self._event(
                EventKind.ERROR, error=f"warm activation failed, starting cold: {cold_because}"
            )
        self.enqueue(Command.START, first=True, internal=True, confirm_to=req.confirm_to, promoted=True)

    def _started(self) -> None:
        """Our connector is active: whatever failed before on this host is forgotten."""
        s = self.s
        s.start_failures, s.start_error, s.start_retry_at = 0, None, None

    def _after_failed_promotion(self, reason: str) -> Proc:
        """We took the exchange but our connector could not start: a claim is held only by an
        instance that runs its connector. With another live standby, release and wake the best
        one (ours stopped: it may act at once) and wait here as a standby, behind every other one
        until a backoff has passed. Alone, keep the claim and try again here after that backoff."""
        s = self.s
        s.start_failures += 1
        backoff = warm_retry_delay(s.start_failures)
        s.start_error = reason
        s.start_retry_at = self.clock.now() + timedelta(seconds=backoff)
        others = yield from self._standbys()
        if not others:
            yield from self._event(
                EventKind.ERROR,
                error=f"promoted on {self.inp.host}, but its connector could not start ({reason}); "
                f"no other standby: trying again here in {backoff:g}s",
                state=s.state,
            )
            # A command (or the host going down) meanwhile is the operator's say: it goes first.
            yield WaitUntil(lambda: bool(s.queue) or s.host_going_down, timeout_s=backoff)
            if not s.queue and not s.host_going_down and s.claim is not None and s.state is State.IDLE:
                self.enqueue(Command.START, first=True, internal=True, promoted=True)
            return
        # Stopped for sure (the failed start's own disconnect may not have answered)? Then the next
        # standby may act the moment it claims; otherwise it waits out our renew deadline first.
        stopped = (
            yield from self._tolerated(
                self._host_step(Activity.CONNECTOR_DISCONNECT, timeout_s=10), "connector_disconnect"
            )
        ) is not None
        yield from self._cancel_lease()
        released = yield from self._release_claim()
        yield from self._event(
            EventKind.ERROR,
            error=f"promoted on {self.inp.host}, but its connector could not start ({reason}); "
            f"released the exchange for the next standby; {self.inp.host} goes behind the others "
            f"for {backoff:g}s",
            state=s.state,
        )
        if released:
            woken = yield from self._wake_standby(
                f"{self.inp.exchange} on {self.inp.host} could not start its connector: {reason}",
                act_after_s=0.0 if stopped else act_after_vacancy_s(self.inp.heartbeat_interval_s),
                standbys=others,
            )
            if woken is None:
                yield Log(f"{self.wf_id}: no standby answered; the vacancy is theirs to find")
        yield from self._become_standby()

    def _owe_confirmation(self, req: PromoteRequest) -> Proc:
        """A promotion for an exchange we already took: answer the handoff that sent it."""
        s = self.s
        if req.confirm_to is None:
            return
        starting = next((t for t in s.queue if t.command is Command.START), None)
        if starting is not None:
            starting.confirm_to = req.confirm_to  # answered once that start is done
        elif s.state is State.ACTIVE:
            yield from self._reply(req.confirm_to, ok=True, detail=f"active on {self.inp.host}")
        else:
            yield from self._reply(req.confirm_to, ok=False, detail=f"{self.inp.host} is {s.state.value}")

    def _confirm_takeover(self, confirm_to: str, result: CommandResult) -> Proc:
        """After a promoted START: tell the handing-over instance; on failure give the claim back."""
        if result.error is None and self.s.state is State.ACTIVE:
            yield from self._reply(confirm_to, ok=True, detail=f"active on {self.inp.host}")
            return
        yield from self._cancel_lease()
        yield from self._release_claim()
        yield from self._reply(confirm_to, ok=False, detail=result.error or f"ended {self.s.state.value}")
        yield from self._become_standby()

    def _maybe_warm_standby(self) -> Proc:
        """A warm standby keeps its connector prepared and warmed while it waits (in the background:
        the watch must renew the record meanwhile, and a warm-up can take minutes)."""
        s = self.s
        if s.standby_id is None or not warm_up_standby(
            role=s.role, warm=self.inp.connector.warm, warm_here=s.warm_here, warming=s.warm_task is not None
        ):
            return
        if (yield Patched("warm-standby")):
            s.warm_task = task = WarmUp()
            yield SpawnWarmUp(self._warm_up_standby(task))

    def _warm_up_standby(self, task: WarmUp) -> Proc:
        s = self.s
        failures = 0
        try:
            while True:
                reason = yield from self._warm_up_once(attempt=failures + 1)
                if reason is None:
                    break
                failures += 1
                # Patched: runs begun before it gave up after one failed warm-up, for good.
                retry = warm_retry_delay(failures) if (yield Patched("warm-retry")) else None
                yield Log(f"{self.wf_id}: warm standby not warmed: {reason}", warning=True)
                yield from self._event(
                    EventKind.ERROR,
                    claim=Claim(instance_id=s.standby_id or "", epoch=0),
                    error=f"warm standby on {self.inp.host} not warmed (a promotion starts cold): {reason}"
                    + (f"; trying again in {retry:g}s" if retry is not None else ""),
                )
                if retry is None or s.role is not Role.STANDBY:
                    return
                yield Sleep(retry, summary=f"warm up again in {retry:g}s")
                if s.role is not Role.STANDBY:
                    return
        finally:
            task.done = True
        if s.role is Role.STANDBY:
            s.warm_here = True
            yield Log(f"{self.wf_id}: warm standby ready on {self.inp.host}")

    def _warm_up_once(self, *, attempt: int) -> Proc:
        """Prepare and warm up a warm standby's connector: None once it is warm, else why not. The
        first attempt first asks whether it is warm already (a run that continued as new while, or
        after, it warmed up)."""
        s = self.s
        try:
            if attempt == 1:
                found: ConnectorReport = yield from self._host_step(
                    Activity.CONNECTOR_CHECK, timeout_s=10, standby=True
                )
                if found.warm_ready:
                    return None
            report: ConnectorReport = yield from self._host_step(
                Activity.CONNECTOR_PREPARE, standby=True, warm_attempt=attempt
            )
            s.symbol_count = report.symbol_count
            yield from self._host_step(Activity.CONNECTOR_WARM_UP, standby=True, warm_attempt=attempt)
        except StepFailed as err:
            return self._explain(err)
        return None
