"""Where a transition's record is written: here first, then on a worker that can reach Redis.

Here is the worker that runs the workflow task (a local activity); if it cannot write the record,
a worker that can does, so no workflow task is held.

A host's worker also serves the shared workflow queue, so it runs other hosts' instances' workflow
tasks. Cut off from Redis, it could only retry their records in place (a local activity), holding
the workflow of an instance whose own host is healthy. Past a short bound the record moves: to the
instance's own host (whose Redis is the one that matters for its claim; its worker serves its
queue), and, if no worker there picks it up (a host that is down), to the shared queue, where any
worker may take it. An answer no retry can mend (a non-retryable error) is final wherever it came
from, as it always was; a fenced merge refused is an answer, not a failure, and is not moved.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum


class RecordRoute(StrEnum):
    """Where one attempt at a record runs."""

    #: A local activity in the worker that runs the workflow task (one attempt, RECORD_HERE_S).
    HERE = "here"
    #: A regular activity on the instance's own host queue, retried until Redis answers.
    HOST = "host"
    #: A regular activity on the shared queue, retried until Redis answers.
    SHARED = "shared"


def record_moves_to(
    tried: RecordRoute, *, retryable: bool, not_picked_up: bool = False
) -> RecordRoute | None:
    """Where a record goes after ``tried`` failed; None: it is given up (logged, as before).

    ``retryable``: the failure is one a retry may mend (a timeout, Redis or PostgreSQL away);
    ``not_picked_up``: no worker started it within its schedule-to-start timeout.
    """
    if not retryable and not not_picked_up:
        return None
    if tried is RecordRoute.HERE:
        return RecordRoute.HOST
    if tried is RecordRoute.HOST and not_picked_up:
        return RecordRoute.SHARED
    # The durable routes fail only when no retry can mend it: nothing further to try.
    return None


def record_starts(now: datetime, away_until: datetime | None) -> RecordRoute:
    """Where a record is tried first: here, unless a record of this run had to leave this worker
    less than RECORD_AWAY_S ago (``away_until``) — then on the instance's host at once, rather than
    pay the bound here again for every record while the partition lasts."""
    return RecordRoute.HOST if away_until is not None and now < away_until else RecordRoute.HERE
