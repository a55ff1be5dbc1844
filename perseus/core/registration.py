"""Registration: resolve the exchange and admin, learn the host's identity on its own queue, then
claim (active) or become visible as a standby. Why it failed, if it did, is this part's memory
(:class:`~perseus.core.state.RegistrationState`); the identity it learns goes to the context.
"""

from __future__ import annotations

from collections.abc import Callable

from perseus.core.actions import Activity, Answer, Call, Details, Proc, Retry, Search, ask
from perseus.core.context import Context
from perseus.core.host import Host
from perseus.core.leases import Leases
from perseus.core.state import Refusal, RegistrationState
from perseus.core.status import Status
from perseus.errors import ServiceUnavailable, StepFailed
from perseus.models import Identity, IdentityRequest, ResolveRequest
from perseus.timing import IDENTITY_TIMEOUT_S, STEP_TIMEOUT_S


class Registration:
    """How the instance came to be registered, or why it did not."""

    def __init__(
        self,
        ctx: Context,
        host: Host,
        st: RegistrationState,
        *,
        leases: Leases,
        status: Status,
        become_standby: Callable[..., Proc],
        details: Callable[[], Details],
        enrol: Callable[[], Answer[None]],
    ) -> None:
        self.ctx, self.host, self.st = ctx, host, st
        self.leases, self.status = leases, status
        self._become_standby, self._details = become_standby, details
        self._enrol = enrol

    @property
    def error(self) -> str | None:
        return self.st.error

    def refused(self, refusal: Refusal | None) -> None:
        """Why registration failed (None: it did not)."""
        self.st = (
            RegistrationState()
            if refusal is None
            else RegistrationState(error=refusal.message, error_type=refusal.error_type)
        )

    def refusal(self) -> Refusal:
        return Refusal(self.st.error or "registration failed", self.st.error_type or "RegistrationFailed")

    def register(self, *, standby: bool) -> Answer[bool]:
        return (yield from (self._register_standby() if standby else self._register()))

    def _identify(self) -> Answer[bool]:
        """Resolve the exchange and admin, and learn the host's identity on its own queue."""
        ctx = self.ctx
        try:
            resolved = yield from ask(
                Call(
                    Activity.RESOLVE_INSTANCE,
                    ResolveRequest(exchange=ctx.inp.exchange, admin_email=ctx.inp.admin_email),
                    start_to_close_s=STEP_TIMEOUT_S,
                    retry=Retry.SHARED,
                    summary="resolve exchange and admin",
                )
            )
            ctx.identify(resolved=resolved)
            identity: Identity = yield from self.host.on_host(
                Call(
                    Activity.DETECT_IDENTITY,
                    IdentityRequest(host=ctx.inp.host),
                    queue=ctx.host_queue,
                    schedule_to_start_s=ctx.host_wait(),
                    start_to_close_s=IDENTITY_TIMEOUT_S,
                    retry=Retry.HOST,
                    summary=f"identity on {ctx.inp.host}",
                )
            )
        except StepFailed as err:
            # A timeout (no worker for the host, a server that never answered) is unavailability.
            self.refused(
                Refusal(self.host.explain(err), err.failure.error_type or ServiceUnavailable.__name__)
            )
            return False
        ctx.identify(
            hostname=identity.hostname, ip_address=identity.ip_address, registered_at=ctx.clock.now()
        )
        try:
            # Failsafe on: in the exchange's roster before this instance watches or claims.
            yield from self._enrol()
        except StepFailed as err:
            why = f"could not enrol in the failsafe roster: {self.host.explain(err)}"
            self.refused(Refusal(why, err.failure.error_type or ServiceUnavailable.__name__))
            return False
        return True

    def _register(self) -> Answer[bool]:
        if not (yield from self._identify()):
            return False
        result = yield from self.leases.take_claim()
        if result is None:
            return False
        yield Search(state=self.status.state)
        yield self._details()
        return True

    def _register_standby(self) -> Answer[bool]:
        """Become visible as a standby: no claim, a record with a TTL, a ``standby_registered`` event."""
        if not (yield from self._identify()):
            return False
        try:
            yield from self._become_standby(required=True)
        except StepFailed as err:
            why = f"standby registration failed: {err.failure.message}"
            self.refused(Refusal(why, err.failure.error_type or ServiceUnavailable.__name__))
            return False
        return True
