"""One exception tree for Perseus.

Everything Perseus raises on purpose derives from :class:`PerseusError`. Errors are converted at the
edges: a CLI command prints ``str(error)`` on one line and exits with the class's ``exit_code``
(DESIGN §2.4: 1 refused, 2 usage, 3 a server unreachable, 4 not found), the API answers with a JSON
error, and activities re-raise them as Temporal ``ApplicationError`` with ``type`` set to the class
name, so a workflow can list permanent ones in ``non_retryable_error_types``.

    PerseusError
    ├── ConfigError                 bad settings or environment (permanent)
    ├── PayloadKeyError             a Temporal payload this process cannot decrypt (permanent)
    ├── ServiceUnavailable          Redis / PostgreSQL / Temporal not reachable (transient; ``server``)
    │   ├── StillRunning            a command outlived the wait while its worker still answers
    │   └── PortInUse               a server we started lost its port to another process
    ├── UnknownExchange             name or id not in the catalog (permanent)
    ├── UnknownAdmin                email not in users (permanent)
    ├── InvalidTransition           the state machine refuses (permanent)
    ├── ClaimConflict               another instance holds the exchange (permanent)
    ├── ClaimLost                   our fencing token no longer matches (permanent)
    │   ├── ClaimMissing            the key vanished under us (expired, or Redis lost its data)
    │   ├── RenewDeadline           no renewal succeeded within the renew deadline
    │   └── StaleEpoch              a child's fenced write refused: its epoch is no longer current
    ├── InvalidFleet                a fleet file or drain refused whole (permanent)
    │   └── MalformedFleet          a fleet file sent to the API that cannot be applied as written
    ├── LeaseDetached               a lease or watch activity ended, its renewals go on (permanent)
    ├── StandbyGone                 a standby's record vanished under its host (permanent)
    ├── NotRegistered               no workflow for that exchange / host (permanent)
    ├── AlreadyRegistered           this host already runs that exchange (permanent)
    ├── InvalidQuery                a malformed read request: count, cursor, window, filter (HTTP 422)
    ├── Unauthorized                no API key, or not an active one (HTTP 401)
    ├── Forbidden                   the key's scope or exchanges do not cover the request (HTTP 403)
    ├── RequestInProgress           a retried POST whose first attempt has not answered yet (HTTP 409)
    ├── NotifyRetry                 a notification not delivered this time (transient)
    ├── WebhookRejected             a channel refused the message for good (permanent)
    └── ConnectorError              the connector failed (transient: retried, then recorded)
        ├── ConnectorFailed         it died while running (reported by the lease; not retried)
        │   ├── ConnectorUnhealthy  failed its health checks: restart in place
        │   └── ConnectorFailover   failed its health checks: a standby takes over
        ├── ConnectorNotReady       could not start, died before ready, or not ready in time
        │   └── ExecRefused         this host's exec allow-list does not permit the command
        ├── ConnectorNotActive      a warm child did not answer ACTIVATE with ACTIVE in time
        └── ConnectorGone           the workflow thinks a connector runs here; this process has none
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from perseus.core.actions import Failure


class PerseusError(Exception):
    """Root of every error Perseus raises deliberately.

    ``details``, when set, is a model that travels with the error across the activity edge (as the
    ``ApplicationError``'s first detail), for a workflow that needs more than the message.
    """

    retryable: bool = False
    details: object | None = None
    #: The CLI's exit status for this error (DESIGN §2.4); subclasses say when it is not "refused".
    exit_code: int = 1
    #: Already told the operator where it happened (one line per event): the activity edge does
    #: not log it again.
    reported: bool = False


class ConfigError(PerseusError):
    """Settings or environment are invalid; fixing them needs a human."""

    exit_code = 2  # usage: the invocation or its settings must change


class PayloadKeyError(PerseusError, ValueError):
    """A Temporal payload is encrypted with a key this process does not have, or does not
    authenticate (:mod:`perseus.codec`). Still a ValueError, as the SDK and older callers expect of a
    codec that cannot decode."""

    exit_code = 2  # the process' PERSEUS_PAYLOAD_KEY must change


class Server(StrEnum):
    """The servers Perseus depends on, as :class:`ServiceUnavailable` names them."""

    TEMPORAL = "Temporal"
    REDIS = "Redis"
    POSTGRESQL = "PostgreSQL"


class ServiceUnavailable(PerseusError):
    """A server Perseus depends on did not answer; ``server`` says which, when it is known where the
    error is raised (None for one rebuilt from a Temporal failure, or a wait on no one server)."""

    retryable = True
    exit_code = 3
    server: Server | None = None

    def __init__(self, message: str, *, server: Server | None = None) -> None:
        super().__init__(message)
        self.server = server


class StillRunning(ServiceUnavailable):
    """A command outlived the caller's wait while its instance's worker still answers: it is being
    carried out (slowly), not lost — unlike a wait nobody answered."""


class PortInUse(ServiceUnavailable):
    """A server we started exited because another process holds its port (its log says so)."""


class UnknownExchange(PerseusError):
    """The exchange is not in the catalog (or is inactive)."""

    exit_code = 4

    def __init__(self, wanted: str, known: list[str]) -> None:
        super().__init__(f"unknown exchange {wanted!r}; known exchanges: {', '.join(known) or '(none)'}")
        self.wanted = wanted
        self.known = known


class UnknownAdmin(PerseusError):
    """The admin e-mail is not a user."""

    exit_code = 4


class InvalidTransition(PerseusError):
    """A transition or command the state machine does not allow from the current state."""


class ClaimConflict(PerseusError):
    """Another instance holds the exchange's claim."""


class ClaimLost(PerseusError):
    """Our instanceId/epoch no longer match the status key: someone else holds it now, or it expired."""


class ClaimMissing(ClaimLost):
    """The status key vanished while we held it (expired during a pause, or Redis lost its data)."""


class RenewDeadline(ClaimLost):
    """We could not renew in time (Redis unreachable or too slow): our connector stopped itself."""


class LeaseDetached(PerseusError):
    """A lease or standby watch activity was ended by something other than its workflow (the worker
    shutting down, its workflow closed, Temporal unreachable for the heartbeat timeout). The keeper's
    renewals go on; the activity only stops watching them — an expected event, not a failure."""


class InvalidFleet(PerseusError):
    """A fleet file (or a drain of it) refused as a whole: the key and why in one line (exit 1)."""


class MalformedFleet(InvalidFleet):
    """A fleet file sent to the API that cannot be applied as written (HTTP 422; exit 1 as ever)."""


class StandbyGone(PerseusError):
    """A standby's record vanished while its host renewed it (dropped, or expired during an outage)."""


class StaleEpoch(ClaimLost):
    """A connector's fenced write was refused: the status key no longer names its instance and epoch
    (:mod:`perseus.fencing`). The writer must stop acting as the active connector."""


class NotRegistered(PerseusError):
    """No running instance workflow matches the request."""

    exit_code = 4


class AlreadyRegistered(PerseusError):
    """This host already has an instance workflow for the exchange."""


class ConnectorError(PerseusError):
    """The market-data connector failed to prepare, warm up, connect or stay healthy."""

    retryable = True


class ConnectorFailed(ConnectorError):
    """The connector stopped working while it should have been running (crash, exit, health)."""

    retryable = False


class ConnectorUnhealthy(ConnectorFailed):
    """It failed its health checks; its policy is to restart it in place (``--on-unhealthy restart``)."""


class ConnectorFailover(ConnectorFailed):
    """It failed its health checks; its policy is to let a standby take over (``--on-unhealthy failover``)."""


class InvalidQuery(PerseusError):
    """A read request is malformed: bad count, cursor, window or filter (HTTP 422)."""

    exit_code = 2


class Unauthorized(PerseusError):
    """No API key, or one that is not an active, unexpired row of ``api_keys`` (HTTP 401)."""


class Forbidden(PerseusError):
    """The key is valid but its scope or its exchanges do not cover the request (HTTP 403)."""


class RequestInProgress(PerseusError):
    """A POST retried with the Idempotency-Key of one that has not answered yet (HTTP 409)."""


class NotifyRetry(PerseusError):
    """The message was not delivered this time; the activity's retry will try again."""

    retryable = True


class WebhookRejected(PerseusError):
    """A channel refused the message for good (bad URL or key, deleted webhook, invalid payload)."""


class ConnectorNotReady(ConnectorError):
    """The child could not be started, died before it was ready, or was not ready in time.

    Not retryable: running the same step again cannot change the answer, so it is recorded once and
    the instance recovers to idle (``--restart on-failure`` covers crashes once active).
    """

    retryable = False


class ExecRefused(ConnectorNotReady):
    """This host's exec allow-list (``PERSEUS_EXEC_ALLOW``) does not permit the connector's command.

    Not retryable: only a change to the host's own file (and a worker restart) can change the answer.
    """


class ConnectorNotActive(ConnectorError):
    """A warm standby's child did not confirm ``ACTIVATE <epoch>`` with ``ACTIVE`` in time (or exited).

    Not retryable: the child was stopped, since it may be half-active; the promotion must fall back
    to a cold start or to another standby.
    """

    retryable = False


class ConnectorGone(ConnectorError):
    """The workflow believes a connector runs here, but this process has none (it was restarted)."""

    retryable = False


def _tree(root: type[PerseusError]) -> Iterator[type[PerseusError]]:
    """``root`` and every class below it, parents first, in definition order."""
    yield root
    for sub in root.__subclasses__():
        yield from _tree(sub)


#: Error type names a workflow must not retry: retrying cannot change their outcome. Decided by each
#: class's ``retryable`` (the activity edge marks the same failures non-retryable by it), never by a
#: list kept by hand: a new permanent error is in here the moment it is defined.
NON_RETRYABLE_ERROR_TYPES: list[str] = [cls.__name__ for cls in _tree(PerseusError) if not cls.retryable]


#: Every class of the tree by name: an activity's failure names its class (ApplicationError.type).
_BY_NAME: dict[str, type[PerseusError]] = {cls.__name__: cls for cls in _tree(PerseusError)}


def error_class(name: str | None) -> type[PerseusError] | None:
    """The class of the tree an error type name stands for (None: not one of ours)."""
    return _BY_NAME.get(name) if name is not None else None


class StepFailed(Exception):
    """Inside the instance core only: the activity behind the action just yielded failed.

    ``workflows/instance.py`` throws it into the core's procedure with the failure as plain values
    (``perseus.core.actions.Failure``); it never crosses an activity or API edge, so it stands
    outside the :class:`PerseusError` tree and its retry list.
    """

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure
