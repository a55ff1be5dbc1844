"""A Perseus error as the API answers it: a JSON :class:`~perseus.api.routes.ErrorBody` with the
status its class maps to (DESIGN §2.5). A leaf of the API package: the app's exception handlers and
the write routes' idempotent answers both use it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.responses import JSONResponse

from perseus.api.routes import ErrorBody
from perseus.errors import (
    ConfigError,
    Forbidden,
    InvalidQuery,
    MalformedFleet,
    NotRegistered,
    PerseusError,
    ServiceUnavailable,
    Unauthorized,
    UnknownExchange,
)

_STATUS: list[tuple[type[PerseusError], int]] = [
    (Unauthorized, 401),
    (Forbidden, 403),
    (UnknownExchange, 404),
    (NotRegistered, 404),
    (InvalidQuery, 422),
    (ConfigError, 422),
    (MalformedFleet, 422),
    (ServiceUnavailable, 503),
]
#: Any other Perseus error is a rule that refused the request (invalid transition, held elsewhere,
#: no standby): nothing changed.
REFUSED = 409


def _error(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        body.model_dump(mode="json", by_alias=True, exclude_none=True), status_code=status, headers=headers
    )


def error_response(exc: PerseusError) -> JSONResponse:
    """The JSON answer for a Perseus error, with the status its class maps to."""
    status = next((code for cls, code in _STATUS if isinstance(exc, cls)), REFUSED)
    body = ErrorBody(
        error=str(exc),
        type=type(exc).__name__,
        known=exc.known if isinstance(exc, UnknownExchange) else None,
        server_time=datetime.now(UTC),
    )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _error(status, body, headers)
