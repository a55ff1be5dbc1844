"""``/api/network/*``: the read API (DESIGN §2.5). Shapes follow Livermore's tRPC network router so its
admin UI could read them; Perseus only adds fields. Every route needs a Bearer API key and every
answer carries ``serverTime`` so that staleness is judged on this server's clock."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response, StreamingResponse

from perseus import metrics
from perseus.api.auth import require_api_key
from perseus.api.deps import CatalogDep, StoreDep, temporal
from perseus.api.live import LiveFeed
from perseus.models import EventKind, FailsafeView, Wire
from perseus.readmodel.log import (
    DEFAULT_COUNT,
    MAX_COUNT,
    ActivityPage,
    Timeline,
    Uptime,
    read_activity,
    read_timeline,
    read_uptime,
)
from perseus.readmodel.network import InstanceView, StatusBoard, read_board
from perseus.timing import FAILSAFE_PAGE_CACHE_S, FAILSAFE_VIEW_TIMEOUT_S


class ErrorBody(Wire):
    """Every error: one line of reason, the error's type and the server's clock."""

    error: str
    type: str
    #: For an unknown exchange: the names that would have been accepted.
    known: list[str] | None = None
    #: For a request that failed validation: FastAPI's list of problems.
    detail: list[dict[str, Any]] | None = None
    server_time: datetime


class ExchangeStatus(InstanceView):
    """One exchange: Livermore's ``{online, status}`` plus the judged view and ``serverTime``."""

    server_time: datetime


class FailsafeLine(Wire):
    """One exchange with its failsafe on, as the network page shows it."""

    exchange_name: str
    failsafe: FailsafeView
    #: What the page and ``perseus status EXCHANGE`` print: holding with its count of promises, or on.
    line: str


class FailsafeBoard(Wire):
    """Every exchange whose failsafe is on, read from Temporal only (Redis may be what is down)."""

    exchanges: list[FailsafeLine]
    #: False when Temporal did not answer in time: then ``exchanges`` is empty for want of an
    #: answer, not because no exchange has the failsafe.
    answered: bool
    #: When Temporal was read (the answer is shared by every caller for a couple of seconds).
    read_at: datetime
    server_time: datetime


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, invalid or revoked API key."},
    422: {"model": ErrorBody, "description": "Invalid query (count, cursor, window, filter)."},
    503: {"model": ErrorBody, "description": "Redis or PostgreSQL unreachable."},
}
_UNKNOWN: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown exchange; lists the known ones."}
}

router = APIRouter(
    prefix="/api/network", tags=["network"], dependencies=[Depends(require_api_key)], responses=_ERRORS
)


ExchangeIdPath = Annotated[int, Path(alias="exchangeId", description="The exchange's catalog id.")]


@router.get("/instances", response_model=StatusBoard, summary="Every active exchange with its status")
async def instances(store: StoreDep, catalog: CatalogDep) -> StatusBoard:
    """Every active exchange from PostgreSQL with `online`, `status` (the record or null), heartbeat
    age on the server's clock, and `heartbeat` / `late` / `health` judged against the instance's own
    interval (late past 1.5 intervals, stale past 2; `health` is `not_running` for an exchange that
    never ran). Offline ones carry `lastKnown` from their stream; a malformed record reads as offline
    with an `offlineReason`; when a stream is empty (Redis lost its data) `lastKnown` comes from the
    durable copy in PostgreSQL. `standbys` lists the live standbys, highest priority first."""
    return await read_board(store, catalog)


@router.get(
    "/activity", response_model=ActivityPage, responses=_UNKNOWN, summary="The activity log, newest first"
)
async def activity(
    store: StoreDep,
    catalog: CatalogDep,
    exchange: Annotated[
        str | None, Query(description="Exchange name or id; omitted: every active exchange, merged.")
    ] = None,
    count: Annotated[int, Query(ge=1, le=MAX_COUNT, description="Entries per page.")] = DEFAULT_COUNT,
    cursor: Annotated[
        str | None,
        Query(description="The previous page's `nextCursor`: the next page starts strictly after it."),
    ] = None,
    event: Annotated[
        list[EventKind] | None, Query(description="Only these event types (repeatable).")
    ] = None,
    admin_email: Annotated[
        str | None, Query(alias="adminEmail", description="Only transitions made for this admin.")
    ] = None,
    actor: Annotated[
        str | None, Query(description="Only entries this actor caused or tried (`api:NAME` or `NAME`).")
    ] = None,
) -> ActivityPage:
    """Entries are `{id, ...stream fields}`. `nextCursor` is null on the last page. With filters a
    page may come back short (even empty) with a `nextCursor`: it examined a bounded number of
    entries; keep following the cursor. A page also ends early once its entries reach 256 KiB.
    Entries the stream no longer holds (Redis lost its data) come from the durable copy in
    PostgreSQL. In all-exchanges mode the cursor is `<id>@<exchange>`, which
    breaks ties between streams holding the same ID."""
    return await read_activity(
        store,
        catalog,
        exchange=exchange,
        count=count,
        cursor=cursor,
        events=[e.value for e in event or []],
        admin=admin_email,
        actor=actor,
    )


@router.get(
    "/exchanges/{exchangeId}/status",
    response_model=ExchangeStatus,
    responses=_UNKNOWN,
    summary="One exchange's status",
)
async def exchange_status(
    request: Request,
    exchange_id: ExchangeIdPath,
    store: StoreDep,
    catalog: CatalogDep,
    failsafe: Annotated[
        bool,
        Query(
            description="Also read the exchange's failsafe from Temporal (its roster and its holder's "
            "state, which Redis may not be able to carry): `failsafe`, null when it is off. Bounded: "
            "a Temporal that does not answer in a few seconds leaves it null."
        ),
    ] = False,
) -> ExchangeStatus:
    board = await read_board(store, catalog, str(exchange_id))
    view = board.instances[0]
    if failsafe:
        view.failsafe = await _failsafe(request, view.exchange_name)
    return ExchangeStatus(**view.model_dump(), server_time=board.server_time)


async def _failsafe(request: Request, exchange: str) -> FailsafeView | None:
    from perseus.client import control

    try:
        async with asyncio.timeout(FAILSAFE_VIEW_TIMEOUT_S):
            return await control.failsafe_view(await temporal(request), exchange)
    except Exception:  # noqa: BLE001 - the status without the failsafe rather than no status
        return None


@router.get("/failsafe", response_model=FailsafeBoard, summary="Every exchange's failsafe line")
async def failsafe_lines(request: Request) -> FailsafeBoard:
    """Every exchange with its failsafe on (docs/design.md, "Failsafe"), with what its holder's
    lease last reported: `holding` through a Redis outage with promises from `promised` of
    `standbys`, or simply on. Read from Temporal alone — the roster workflows and the holders'
    leases — so it answers while Redis is down, when `/instances` cannot. One read of Temporal per
    couple of seconds serves every caller of this API process; an exchange without the failsafe
    costs nothing. `answered` is false when Temporal did not answer within a few seconds."""
    state = request.app.state
    async with state.failsafe_lock:
        cached: FailsafeBoard | None = state.failsafe_cache
        if cached is not None and time.monotonic() - state.failsafe_cached_at < FAILSAFE_PAGE_CACHE_S:
            return cached.model_copy(update={"server_time": datetime.now(UTC)})
        from perseus.client import control

        try:
            async with asyncio.timeout(FAILSAFE_VIEW_TIMEOUT_S):
                views = await control.failsafe_views(await temporal(request))
            answered = True
        except Exception:  # noqa: BLE001 - no lines rather than no page
            views, answered = {}, False
        now = datetime.now(UTC)
        board = FailsafeBoard(
            exchanges=[
                FailsafeLine(exchange_name=name, failsafe=view, line=view.line())
                for name, view in sorted(views.items())
            ],
            answered=answered,
            read_at=now,
            server_time=now,
        )
        state.failsafe_cache, state.failsafe_cached_at = board, time.monotonic()
        return board


@router.get(
    "/exchanges/{exchangeId}/uptime",
    response_model=Uptime,
    responses=_UNKNOWN,
    summary="Running time and % active over 24h / 7d / 30d",
)
async def exchange_uptime(
    request: Request, exchange_id: ExchangeIdPath, store: StoreDep, catalog: CatalogDep
) -> Uptime:
    """`runningFor` ("4h 23m") from `connectedAt` while active; per window `activePct`, the share of
    the *observed* time spent `active` — observed since the exchange's first recorded transition
    (`observedSince`, `observedS`; `knownPct` is that share of the window, `windowActivePct` the
    share of the whole window). Read from the state ledger in PostgreSQL, which holds every writer's
    transitions (Livermore v6 services' too, folded in from the stream); `source` says `stream`
    while the ledger has not caught up with the exchange's history yet."""
    return await read_uptime(store, catalog, str(exchange_id), request.app.state.fold)


@router.get(
    "/exchanges/{exchangeId}/timeline",
    response_model=Timeline,
    responses=_UNKNOWN,
    summary="State intervals over a window",
)
async def exchange_timeline(
    request: Request,
    exchange_id: ExchangeIdPath,
    store: StoreDep,
    catalog: CatalogDep,
    window: Annotated[
        str, Query(description="How far back: a number and s/m/h/d, at most 90d (stream retention).")
    ] = "24h",
) -> Timeline:
    """Consecutive `{state, start, end, durationS}` intervals covering the window, from the state
    ledger (every writer's transitions; `source` is `stream` while it catches up with a long history);
    time before the first recorded transition is `unknown`. At most 500 intervals (the newest;
    `truncated` says so, `totalsS` still covers the whole window)."""
    return await read_timeline(store, catalog, str(exchange_id), window, request.app.state.fold)


@router.get(
    "/events",
    summary="Live push: Server-Sent Events, one per network event",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An endless event stream."}},
)
async def events(request: Request) -> StreamingResponse:
    """`text/event-stream`. First `event: hello`, then for every new entry of any exchange's network
    stream one `event: network` whose data is `{"entry": {id, ...fields}, "instance": <the exchange's
    item as in /instances, read after the event>, "serverTime"}`; a `: keepalive` comment every 15 s.

    Authenticated like every route, with the `Authorization` header: the page reads the stream with
    `fetch` (not `EventSource`, which cannot send headers), so the key never appears in a URL or an
    access log. One Redis reader per API process serves every client."""
    live: LiveFeed = request.app.state.live
    return StreamingResponse(
        live.stream(),
        media_type="text/event-stream",
        # no-transform / X-Accel-Buffering: proxies must pass each message on at once.
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )


metrics_router = APIRouter(tags=["metrics"], dependencies=[Depends(require_api_key)], responses=_ERRORS)


@metrics_router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def prometheus_metrics(store: StoreDep, catalog: CatalogDep) -> Response:
    """Prometheus text format: this process's counters and gauges read from Redis now (instances by
    role and state, per exchange: active or not, heartbeat age and interval, standbys). Needs the
    API key like every route (Prometheus: `authorization: {credentials_file: ...}`)."""
    board = await read_board(store, catalog, with_last_known=False)
    return Response(metrics.exposition() + metrics.board_metrics(board), media_type=metrics.CONTENT_TYPE)
