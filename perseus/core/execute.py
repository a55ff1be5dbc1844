"""A command carried out: the state machine's path walked one transition at a time, the connector
started cold (prepare → warm up → connect) or, for a warm standby just promoted, activated; and the
graceful release when the host's worker shuts down.

Holds no memory of its own: the walk is the status part's, the connector the host's.
"""

from __future__ import annotations

from perseus.core.actions import Activity, Answer, Retry, tolerated
from perseus.core.decisions import StartPath, start_path
from perseus.core.host import Host
from perseus.core.leases import Leases
from perseus.core.lifecycle import Command, State, plan, release_path
from perseus.core.standbys import Standbys
from perseus.core.status import Status
from perseus.core.warm import Warm
from perseus.errors import InvalidTransition, StepFailed
from perseus.models import CommandResult, ConnectorReport, EventKind
from perseus.timing import CONNECTOR_STOP_TIMEOUT_S


class Execution:
    """Start, stop and release, step by step."""

    def __init__(self, host: Host, *, leases: Leases, status: Status, standbys: Standbys, warm: Warm) -> None:
        self.host, self.leases, self.status, self.standbys, self.warm = host, leases, status, standbys, warm

    def execute(self, command: Command, *, promoted: bool = False) -> Answer[CommandResult]:
        """Walk ``command``'s transitions. ``promoted``: the start of a standby that just took the
        exchange, whose connector steps get one attempt each — another standby may be waiting, and
        a failed promotion hands over to it (or, alone, tries again after a backoff) sooner than
        the host steps' own retries (1 s, then 2 s) would give up."""
        status = self.status
        start_state = status.state
        try:
            path = plan(command, status.state)
        except InvalidTransition as exc:
            return CommandResult(
                command=command, from_state=start_state, state=status.state, transitions=[], error=str(exc)
            )
        done: list[State] = []
        try:
            if command is Command.START:
                activated = yield from self._start(done, retry=Retry.ONCE if promoted else Retry.HOST)
                if activated is not None:
                    return CommandResult(
                        command=command,
                        from_state=start_state,
                        state=status.state,
                        transitions=done,
                        detail=activated,
                    )
            else:
                for target in path:
                    if target is State.STOPPED:
                        yield from self.host.step(Activity.CONNECTOR_DISCONNECT, self.leases.claim)
                    yield from status.transition(target)
                    done.append(target)
        except StepFailed as err:
            reason = self.host.explain(err)
            yield from status.fail(reason)
            return CommandResult(
                command=command,
                from_state=start_state,
                state=status.state,
                transitions=done,
                error=f"{command.value} failed: {reason}; recovered to {status.state.value}",
            )
        return CommandResult(command=command, from_state=start_state, state=status.state, transitions=done)

    def _start(self, done: list[State], *, retry: Retry = Retry.HOST) -> Answer[str | None]:
        """idle → starting → warming → active, appending to ``done``; a warm standby's connector is
        activated instead of started (what it says, then), a cold one is started (None)."""
        status, host = self.status, self.host
        yield from status.transition(State.STARTING)
        done.append(State.STARTING)
        how = start_path(warm_here=self.warm.warm_here, warming=self.warm.warming)
        if how is StartPath.WARM:
            cold_because, _ = yield from self.warm.activate()
            if cold_because is None:
                status.connected_now()
                self.standbys.started()
                for state in (State.WARMING, State.ACTIVE):
                    yield from status.transition(state)
                    done.append(state)
                claim = self.leases.claim
                return f"warm standby activated at epoch {claim.epoch if claim else 0}"
            yield from status.event(
                EventKind.ERROR, error=f"warm activation failed, starting cold: {cold_because}"
            )
        report: ConnectorReport = yield from host.step(
            Activity.CONNECTOR_PREPARE, self.leases.claim, retry=retry
        )
        status.symbols(report.symbol_count)
        yield from status.transition(State.WARMING)
        done.append(State.WARMING)
        yield from host.step(Activity.CONNECTOR_WARM_UP, self.leases.claim, retry=retry)
        yield from host.step(Activity.CONNECTOR_CONNECT, self.leases.claim, retry=retry)
        status.connected_now()
        self.standbys.started()
        yield from status.transition(State.ACTIVE)
        done.append(State.ACTIVE)
        return None

    def release(self) -> Answer[bool]:
        """Stop whatever runs, then let go of the claim (graceful worker shutdown). True when the
        connector stopped and the key was ours and is gone: only then may a standby act at once."""
        stopped = True
        for target in release_path(self.status.state):
            if target is State.STOPPED:
                stopped = (
                    yield from tolerated(
                        self.host.step(
                            Activity.CONNECTOR_DISCONNECT,
                            self.leases.claim,
                            timeout_s=CONNECTOR_STOP_TIMEOUT_S,
                        ),
                        "connector_disconnect",
                    )
                ) is not None
            yield from self.status.transition(target)
        released = yield from self.leases.release()
        return stopped and released
