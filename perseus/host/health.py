"""A worker's own health, for systemd and Kubernetes: ``/healthz`` and ``/readyz`` beside
``/metrics`` on ``perseus worker --metrics-port``.

* ``/healthz`` — the process and its event loop answer. The request is served on the very loop that
  runs the keeper's renewals, so an answer at all is the check; nothing else is asked (a liveness
  probe that restarts a worker because Redis is down would only drop its standbys too).
* ``/readyz`` — the worker keeps its promises: Temporal sees it polling its host's queue, Redis
  answers, every claim it holds was renewed within :data:`perseus.timing.ALIVE_INTERVALS`
  intervals, and the connector watchdog is alive. A stalled keeper turns it unready half an
  interval before its renew deadline stops the connectors, a frozen Redis at the next probe —
  the "stalled leader with a green health check" is what this is for.

Each answers with a JSON body naming every check and which failed (200 ready, 503 not). The checks
that ask a server run side by side, each bounded by :data:`~perseus.timing.HEALTH_CHECK_TIMEOUT_S`,
so a probe's own timeout (Kubernetes' ``timeoutSeconds``) should be a little above it. The judgement
itself is plain functions over values (:func:`keeper_check`, :func:`watchdog_check`, :func:`readiness`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from perseus.core.decisions import renewal_overdue
from perseus.timing import ALIVE_INTERVALS, HEALTH_CHECK_TIMEOUT_S

if TYPE_CHECKING:
    from temporalio.client import Client

    from perseus.host.keeper import LeaseKeeper
    from perseus.host.watchdog import Watchdog
    from perseus.store.redis_store import RedisStore


class Check(BaseModel):
    """One readiness check: its name, whether it passed, and what it saw."""

    name: str
    ok: bool
    detail: str
    #: The measure judged, where there is one (``keeper``: the oldest renewal's age in seconds).
    seconds: float | None = None


class Readiness(BaseModel):
    """``/readyz``'s body."""

    status: Literal["ready", "unready"]
    failed: list[str]
    checks: list[Check]


class Liveness(BaseModel):
    """``/healthz``'s body."""

    status: Literal["ok"] = "ok"
    uptime_s: float


# --- judgement (plain values) ---------------------------------------------------------------------


def keeper_check(ages: Sequence[tuple[str, float, float]]) -> Check:
    """``ages``: each live claim's workflow id, seconds since its last renewal, and interval."""
    if not ages:
        return Check(name="keeper", ok=True, detail="no claims held")
    worst_id, worst_age, worst_interval = max(ages, key=lambda a: a[1] / a[2])
    late = [a for a in ages if renewal_overdue(a[1], a[2])]
    if not late:
        return Check(
            name="keeper", ok=True, detail=f"{len(ages)} claim(s) renewed on time", seconds=worst_age
        )
    return Check(
        name="keeper",
        ok=False,
        detail=(
            f"{len(late)} of {len(ages)} claim(s) unrenewed for over {ALIVE_INTERVALS:g} intervals; "
            f"{worst_id}: {worst_age:.1f}s at a {worst_interval:g}s interval"
        ),
        seconds=worst_age,
    )


def watchdog_check(state: str) -> Check:
    ok = state in ("idle", "running")
    detail = "not needed yet (no process connector)" if state == "idle" else state
    return Check(name="watchdog", ok=ok, detail=detail)


def readiness(checks: Sequence[Check]) -> Readiness:
    failed = [c.name for c in checks if not c.ok]
    return Readiness(status="unready" if failed else "ready", failed=failed, checks=list(checks))


# --- gathering (the edge) -------------------------------------------------------------------------


async def redis_check(store: RedisStore) -> Check:
    try:
        async with asyncio.timeout(HEALTH_CHECK_TIMEOUT_S):
            await store.ping()
    except TimeoutError:
        return Check(name="redis", ok=False, detail=f"no answer within {HEALTH_CHECK_TIMEOUT_S:g}s")
    except Exception as exc:  # noqa: BLE001 - any failure is the answer this check reports
        return Check(name="redis", ok=False, detail=str(exc) or type(exc).__name__)
    return Check(name="redis", ok=True, detail="answers")


async def temporal_check(client: Client, host: str) -> Check:
    """Whether Temporal saw this worker (its client's identity) poll the host's activity queue
    within the window an idle long poll needs to come round again."""
    from perseus.host.workers import LIVE_POLL_WINDOW, pollers_within

    try:
        async with asyncio.timeout(HEALTH_CHECK_TIMEOUT_S):
            seen = await pollers_within(client, host, LIVE_POLL_WINDOW, identity=client.identity)
    except TimeoutError:
        return Check(name="temporal", ok=False, detail=f"no answer within {HEALTH_CHECK_TIMEOUT_S:g}s")
    except Exception as exc:  # noqa: BLE001 - unreachable, refused: the check's answer
        return Check(name="temporal", ok=False, detail=str(exc) or type(exc).__name__)
    window = LIVE_POLL_WINDOW.total_seconds()
    if not seen:
        return Check(name="temporal", ok=False, detail=f"no poll of this worker's queue in {window:g}s")
    return Check(name="temporal", ok=True, detail=f"polled within {window:g}s")


class WorkerHealth:
    """What ``/healthz`` and ``/readyz`` ask of one worker process."""

    def __init__(
        self, *, host: str, client: Client, store: RedisStore, keeper: LeaseKeeper, watchdog: Watchdog
    ) -> None:
        self._host = host
        self._client = client
        self._store = store
        self._keeper = keeper
        self._watchdog = watchdog
        self._started = time.monotonic()

    def liveness(self) -> Liveness:
        return Liveness(uptime_s=round(time.monotonic() - self._started, 3))

    async def readiness(self) -> Readiness:
        # The keeper as it is when asked, not after the servers answered (up to
        # HEALTH_CHECK_TIMEOUT_S later): a claim that lapsed meanwhile has left the keeper and would
        # read as "on time".
        keeper = keeper_check(self._keeper.renewal_ages())
        watchdog = watchdog_check(self._watchdog.state())
        temporal, redis = await asyncio.gather(
            temporal_check(self._client, self._host), redis_check(self._store)
        )
        return readiness([temporal, redis, keeper, watchdog])
