"""What the world reads of an instance: its state walked one checked transition at a time, the
fenced status writes and the events that go with them, the operator's decision lines.

Owns :class:`~perseus.core.state.StatusState` (state, symbols, connected since, last error). The
claim that fences each write and the actor that events name are other parts' and are asked for
through the functions the core hands in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from perseus.core.actions import (
    Activity,
    Answer,
    Details,
    Log,
    Proc,
    Search,
    tolerated,
)
from perseus.core.context import Context
from perseus.core.host import Host
from perseus.core.lifecycle import State, check_transition, recovery_path
from perseus.core.record import Writer
from perseus.core.state import StatusState
from perseus.keys import iso
from perseus.models import (
    Claim,
    EventKind,
    InstanceStatus,
)
from perseus.timing import CONNECTOR_STOP_TIMEOUT_S, ttl_ms


class Status:
    """The instance's state and what it writes about it."""

    def __init__(
        self,
        ctx: Context,
        host: Host,
        st: StatusState,
        *,
        claim: Callable[[], Claim | None],
        actor: Callable[[], str | None],
        details: Callable[[], Details],
    ) -> None:
        self.ctx, self.host, self.st = ctx, host, st
        self._claim, self._details = claim, details
        self.writer = Writer(ctx, claim=claim, actor=actor)
        #: An event of this instance (``Writer.event``).
        self.event = self.writer.event

    @property
    def state(self) -> State:
        return self.st.state

    def _update(self, **changes: object) -> None:
        """Replace the slice: ``symbol_count``, ``connected_at``, ``last_error``."""
        self.st = replace(self.st, **changes)  # type: ignore[arg-type]

    def connected_now(self) -> None:
        self._update(connected_at=self.ctx.clock.now())

    def errored(self, reason: str) -> None:
        """The last error, as the status record and the operator's details show it."""
        self._update(last_error=reason)

    def symbols(self, count: int) -> None:
        self._update(symbol_count=count)

    def record_for(self, instance_id: str) -> InstanceStatus:
        """The whole status record a claim by ``instance_id`` writes."""
        ctx, st = self.ctx, self.st
        ident = ctx.identity
        assert ident.resolved and ident.hostname and ident.registered_at
        admin = ident.resolved.admin
        stamp = iso(ctx.clock.now())
        return InstanceStatus(
            exchange_id=ident.resolved.exchange.id,
            exchange_name=ident.resolved.exchange.name,
            hostname=ident.hostname,
            ip_address=ident.ip_address,
            admin_email=admin.email if admin else None,
            admin_display_name=admin.display_name if admin else None,
            connection_state=st.state,
            symbol_count=st.symbol_count,
            connected_at=iso(st.connected_at) if st.connected_at else None,
            last_heartbeat=stamp,
            last_state_change=stamp,
            registered_at=iso(ident.registered_at),
            last_error=st.last_error,
            instance_id=instance_id,
            epoch=0,
            workflow_id=ctx.wf_id,
            heartbeat_interval_ms=int(ctx.inp.heartbeat_interval_s * 1000),
            ttl_ms=ttl_ms(ctx.inp.heartbeat_interval_s),
        )

    def transition(self, target: State, *, at: datetime | None = None) -> Proc:
        """One fenced status write and one ``state_transition`` event; the state machine checked it.

        ``at``: when it happened, if earlier than now (a connector its keeper stopped at the deadline).
        """
        previous = self.st.state
        check_transition(previous, target)
        self._update(state=target)
        now = at or self.ctx.clock.now()
        fields: dict[str, object] = {
            "connectionState": target.value,
            "lastStateChange": iso(now),
            "symbolCount": self.st.symbol_count,
        }
        if target is State.ACTIVE:
            self._update(connected_at=self.st.connected_at or now)
            fields["connectedAt"] = iso(self.st.connected_at)  # type: ignore[arg-type]
        if target is State.IDLE:
            self._update(connected_at=None)
            fields["connectedAt"] = None
        event = self.writer.network_event(
            EventKind.STATE_TRANSITION, from_state=previous, to_state=target, at=at
        )
        yield from self.writer.record(event, self.writer.status_patch(fields))
        yield Log(f"{self.ctx.wf_id}: {previous.value} → {target.value}")
        yield Search(state=target)
        yield self._details()

    def recover(self) -> Proc:
        """Walk back to idle (a former active instance may still read stopped)."""
        for target in recovery_path(self.st.state):
            yield from self.transition(target)

    def walk_down(self, stopped_at: datetime | None) -> Proc:
        """Recover to idle after the connector stopped; ``stopping``/``stopped`` carry the moment it
        did (the keeper's clock), not the moment the workflow heard of it."""
        for target in recovery_path(self.st.state):
            at = stopped_at if target in (State.STOPPING, State.STOPPED) else None
            yield from self.transition(target, at=at)

    def fail(self, reason: str) -> Answer[bool]:
        """Retries are exhausted: record lastError + an error event, stop the connector, recover to
        idle. True when the connector is known stopped (its disconnect answered)."""
        self.errored(reason)
        fields: dict[str, object] = {"lastError": reason, "lastErrorAt": iso(self.ctx.clock.now())}
        event = self.writer.network_event(EventKind.ERROR, error=reason, state=self.st.state)
        yield from self.writer.record(event, self.writer.status_patch(fields))
        stopped = yield from tolerated(
            self.host.step(Activity.CONNECTOR_DISCONNECT, self._claim(), timeout_s=CONNECTOR_STOP_TIMEOUT_S),
            "connector_disconnect after failure",
        )
        yield from self.recover()
        return stopped is not None

    def decided(self, line: str) -> Proc:
        """One decision, as one line for the operator: in the worker's log, and in the Web UI's
        current details until the next one."""
        self._update(last_decision=line)
        yield Log(f"{self.ctx.wf_id}: {line}")
        yield self._details()
