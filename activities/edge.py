"""Convert Perseus errors to Temporal failures at the activity edge."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from temporalio.exceptions import ApplicationError

from perseus.errors import PerseusError

P = ParamSpec("P")
R = TypeVar("R")


def edge(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Re-raise a PerseusError as an ApplicationError typed by its class name.

    Permanent errors are marked non-retryable here as well as by name in the workflows' retry
    policies, so a caller that forgets the list still does not retry them.
    """

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except PerseusError as exc:
            details = () if exc.details is None else (exc.details,)
            raise ApplicationError(
                str(exc), *details, type=type(exc).__name__, non_retryable=not exc.retryable
            ) from exc

    return wrapper
