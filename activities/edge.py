"""Convert Perseus errors to Temporal failures at the activity edge."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from perseus.errors import PerseusError

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("perseus.activities")


def edge(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Re-raise a PerseusError as an ApplicationError typed by its class name.

    Permanent errors are marked non-retryable here as well as by name in the workflows' retry
    policies, so a caller that forgets the list still does not retry them.

    A PerseusError is an outcome the workflow expects and decides on (a claim lost or released, a
    connector not ready, Redis unreachable for a moment): it is logged here as one line — INFO, or
    WARNING when it is retryable (something is down) — and marked BENIGN, so the SDK does not log it
    again as "Completing activity as failed" with a traceback (it does so at DEBUG only).
    """

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except PerseusError as exc:
            name = type(exc).__name__
            if not exc.reported:
                log.log(
                    logging.WARNING if exc.retryable else logging.INFO, "%s: %s: %s", fn.__name__, name, exc
                )
            details = () if exc.details is None else (exc.details,)
            raise ApplicationError(
                str(exc),
                *details,
                type=name,
                non_retryable=not exc.retryable,
                category=ApplicationErrorCategory.BENIGN,
            ) from exc

    return wrapper
