"""The write routes (DESIGN §2.5, scopes §2.10): start/stop/shutdown, handoff, drain and the fleet
file. They run the CLI's own code (:mod:`perseus.client.operate`, :mod:`perseus.fleet.enrol`), so validation,
refusals and messages are the CLI's; errors become JSON with the status of their class (app.py).

Every command carries the calling key as its actor (``api:<key name>``); an admin key may name
another actor (``actor`` in the body), for a tool acting on someone's behalf. A POST with an
``Idempotency-Key`` header acts once: a retry gets the first answer back, stored in Redis for a day.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field
from temporalio.client import Client

from perseus.api.auth import AdminDep, ApiKeyDep, OperateDep
from perseus.api.deps import CatalogDep, StoreDep, temporal
from perseus.api.errors import error_response
from perseus.api.routes import _ERRORS, ErrorBody
from perseus.client import maintenance, operate
from perseus.client.control import ANSWER_TIMEOUT_S, MAX_TIMEOUT_S, CommandSent
from perseus.client.maintenance import PauseView
from perseus.core.lifecycle import Command
from perseus.errors import (
    ConfigError,
    Forbidden,
    InvalidFleet,
    MalformedFleet,
    PerseusError,
    RequestInProgress,
    ServiceUnavailable,
)
from perseus.keys import idempotency_key, valid_host
from perseus.models import CallerKey, CommandResult, Exchange, Wire
from perseus.store.db import Catalog
from perseus.store.redis_store import RedisStore
from perseus.timing import DEFAULT_PAUSE_S

#: How long a write request's answer is kept for its retries.
IDEMPOTENCY_TTL_S = 86_400

_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    403: {"model": ErrorBody, "description": "The key's scope or exchanges do not cover this."},
    404: {"model": ErrorBody, "description": "Unknown exchange (lists the known ones), host or instance."},
    409: {"model": ErrorBody, "description": "Refused by a rule; nothing changed (also recorded)."},
    503: {"model": ErrorBody, "description": "A server is down, or no worker answered in time."},
}

router = APIRouter(prefix="/api", tags=["commands"], responses=_WRITE_ERRORS)


class CommandBody(Wire):
    command: Literal["start", "stop", "shutdown"]
    #: The instance's host; omitted: the one holding the claim (or the only one).
    host: str | None = None
    wait: bool = True
    timeout_s: float = Field(default=ANSWER_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S)
    #: Admin keys only: the actor to record instead of the key's name.
    actor: str | None = Field(default=None, max_length=200)


class HandoffBody(Wire):
    to: str
    from_: str | None = Field(default=None, alias="from")
    shutdown: bool = False
    wait: bool = True
    timeout_s: float = Field(default=ANSWER_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S)
    actor: str | None = Field(default=None, max_length=200)


class DrainBody(Wire):
    force: bool = False
    actor: str | None = Field(default=None, max_length=200)


class PauseBody(Wire):
    #: How long the pause lasts, in seconds (default 30 minutes, at most 7 days).
    for_s: float | None = Field(default=None, gt=0)
    actor: str | None = Field(default=None, max_length=200)


class CommandAnswer(Wire):
    """A command's answer: the path its transitions took (``wait``), or that it was sent."""

    exchange: str
    workflow_id: str
    command: str
    from_: str | None = Field(default=None, serialization_alias="from")
    to: str | None = None
    path: list[str] = []
    detail: str | None = None
    actor: str
    #: False: sent without waiting (202); follow it on the live stream.
    done: bool = True
    server_time: datetime


class DrainAnswer(Wire):
    host: str
    done: list[str]
    actor: str
    server_time: datetime


class KeyInfo(Wire):
    """The calling key as the page needs it (which controls to show); never the key itself."""

    name: str
    scope: str
    exchanges: list[str]
    server_time: datetime


@router.get("/key", response_model=KeyInfo, summary="The calling key: name, scope, exchanges")
async def key_info(caller: ApiKeyDep) -> KeyInfo:
    """Any valid key may read its own scope; the page shows controls from it (every POST is
    checked again on the server)."""
    return KeyInfo(
        name=caller.name, scope=caller.scope.value, exchanges=caller.exchanges, server_time=datetime.now(UTC)
    )


def _actor(caller: CallerKey, asked: str | None) -> str:
    if asked is None or asked == operate.api_actor(caller.name):
        return operate.api_actor(caller.name)
    if caller.scope.value != "admin":
        raise Forbidden("only an admin key may name another actor")
    if not asked.strip() or any(c in asked for c in "\r\n"):
        raise ConfigError("actor must be one line of text")
    return asked


def _allowed(caller: CallerKey, exchange: str) -> None:
    if not caller.may_command(exchange):
        raise Forbidden(
            f"the key {caller.name!r} may not command {exchange} "
            f"(its exchanges: {', '.join(caller.exchanges)})"
        )


async def _commanded(catalog: Catalog, caller: CallerKey, exchange: str) -> Exchange:
    """The exchange a route acts on, once the key may command it (404 unknown, 403 not its)."""
    known = await operate.resolve(catalog, exchange)
    _allowed(caller, known.name)
    return known


def _json(status: int, body: Wire) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json", by_alias=True, exclude_none=True), status_code=status)


async def _once(
    store: RedisStore, caller: CallerKey, request_key: str | None, act: Callable[[], Awaitable[JSONResponse]]
) -> JSONResponse:
    """Run ``act`` once per ``Idempotency-Key``: a retry gets the stored answer; a retry while the
    first still runs gets 409. An error that decided nothing (503) frees the key for a retry."""
    if request_key is None:
        return await act()
    if not 1 <= len(request_key) <= 200:
        raise ConfigError("Idempotency-Key must be 1 to 200 characters")
    key = idempotency_key(caller.name, request_key)
    held = await store.claim_request(key, IDEMPOTENCY_TTL_S)
    if held == "pending":
        raise RequestInProgress(
            "a request with this Idempotency-Key is still running: retry once it has answered"
        )
    if held is not None:
        stored = json.loads(held)
        return JSONResponse(
            stored["body"], status_code=stored["status"], headers={"Idempotent-Replayed": "true"}
        )
    try:
        response = await act()
    except ServiceUnavailable:
        await store.settle_request(key, None, IDEMPOTENCY_TTL_S)
        raise
    except PerseusError as exc:
        response = error_response(exc)
    except BaseException:
        await store.settle_request(key, None, IDEMPOTENCY_TTL_S)
        raise
    answer = {"status": response.status_code, "body": json.loads(bytes(response.body))}
    await store.settle_request(key, json.dumps(answer), IDEMPOTENCY_TTL_S)
    return response


def _operator(client: Client, store: RedisStore, catalog: Catalog, actor: str) -> operate.Operator:
    async def connect() -> Client:
        return client

    # The API runs on no instance's host: a command names its host or goes to the claim's holder.
    return operate.Operator(connect, store, catalog, default_host="", actor=actor)


ExchangePath = Annotated[str, Path(description="The exchange's catalog name or numeric id.")]
IdempotencyHeader = Annotated[
    str | None, Header(alias="Idempotency-Key", description="A retried POST with the same key acts once.")
]


@router.post(
    "/network/exchanges/{exchange}/commands",
    response_model=CommandAnswer,
    responses={202: {"model": CommandAnswer, "description": "Sent (wait=false)."}},
    summary="start, stop or shutdown an exchange's instance (scope operate)",
)
async def exchange_command(
    request: Request,
    exchange: ExchangePath,
    body: Annotated[CommandBody, Body()],
    caller: OperateDep,
    store: StoreDep,
    catalog: CatalogDep,
    idempotency: IdempotencyHeader = None,
) -> JSONResponse:
    """With `wait` (default) the answer comes once the transitions are done, with their `path`;
    `wait: false` answers 202 once the command signal is sent (checked first against the instance's
    own state). A refusal (409) changes nothing and is recorded as `command_refused`."""
    actor = _actor(caller, body.actor)
    if body.host is not None and not valid_host(body.host):
        raise ConfigError(f"invalid host name {body.host[:80]!r}: use letters, digits, '.', '_' or '-'")
    known = await _commanded(catalog, caller, exchange)

    async def act() -> JSONResponse:
        op = _operator(await temporal(request), store, catalog, actor)
        _, result = await operate.command(
            op,
            known.name,
            Command(body.command),
            host=body.host,
            wait=body.wait,
            timeout_s=body.timeout_s,
            request_id=idempotency,
        )
        return _command_answer(known.name, body.command, actor, result)

    return await _once(store, caller, idempotency, act)


def _command_answer(
    exchange: str, command: str, actor: str, result: CommandResult | CommandSent
) -> JSONResponse:
    now = datetime.now(UTC)
    if isinstance(result, CommandSent):
        sent = CommandAnswer(
            exchange=exchange,
            workflow_id=result.workflow_id,
            command=command,
            from_=result.state.value if result.state else None,
            actor=actor,
            done=False,
            server_time=now,
        )
        return _json(202, sent)
    path = [result.from_state.value, *(s.value for s in result.transitions)]
    answer = CommandAnswer(
        exchange=exchange,
        workflow_id=result.workflow_id or "",
        command=command,
        from_=result.from_state.value,
        to=result.state.value,
        path=path,
        detail=result.detail,
        actor=actor,
        server_time=now,
    )
    return _json(200, answer)


@router.post(
    "/network/exchanges/{exchange}/handoff",
    response_model=CommandAnswer,
    responses={202: {"model": CommandAnswer, "description": "Accepted (wait=false)."}},
    summary="Planned switchover to a live standby (scope operate)",
)
async def exchange_handoff(
    request: Request,
    exchange: ExchangePath,
    body: Annotated[HandoffBody, Body()],
    caller: OperateDep,
    store: StoreDep,
    catalog: CatalogDep,
    idempotency: IdempotencyHeader = None,
) -> JSONResponse:
    """Hands the exchange from its active host (`from`, default: the claim's holder) to the live
    standby on `to`; the old one becomes a standby (or shuts down with `shutdown`). `wait: false`
    answers 202 once the instance accepted the handoff."""
    actor = _actor(caller, body.actor)
    for host in (body.to, body.from_):
        if host is not None and not valid_host(host):
            raise ConfigError(f"invalid host name {host[:80]!r}: use letters, digits, '.', '_' or '-'")
    known = await _commanded(catalog, caller, exchange)

    async def act() -> JSONResponse:
        op = _operator(await temporal(request), store, catalog, actor)
        _, result = await operate.handoff(
            op,
            known.name,
            to_host=body.to,
            from_host=body.from_,
            shutdown=body.shutdown,
            timeout_s=body.timeout_s,
            request_id=idempotency,
            wait=body.wait,
        )
        answer = CommandAnswer(
            exchange=known.name,
            workflow_id=result.workflow_id or "",
            command="handoff",
            from_=result.from_state.value if body.wait else None,
            to=result.state.value if body.wait else None,
            path=[result.from_state.value, *(s.value for s in result.transitions)] if body.wait else [],
            detail=result.detail,
            actor=actor,
            done=body.wait,
            server_time=datetime.now(UTC),
        )
        return _json(200 if body.wait else 202, answer)

    return await _once(store, caller, idempotency, act)


@router.post(
    "/network/hosts/{host}/drain",
    response_model=DrainAnswer,
    summary="Hand every exchange active on a host to its best standby (scope operate)",
)
async def host_drain(
    request: Request,
    host: Annotated[str, Path(description="The host to empty.")],
    caller: OperateDep,
    store: StoreDep,
    catalog: CatalogDep,
    body: Annotated[DrainBody | None, Body()] = None,
    idempotency: IdempotencyHeader = None,
) -> JSONResponse:
    """One exchange at a time; refuses (409) before changing anything when one has no standby,
    unless `force` (then it is shut down). A key limited to some exchanges needs every exchange
    active on the host."""
    from perseus.fleet.enrol import drain_host, exchanges_held

    body = body or DrainBody()
    actor = _actor(caller, body.actor)
    if not valid_host(host):
        raise ConfigError(f"invalid host name {host[:80]!r}: use letters, digits, '.', '_' or '-'")
    for name in await exchanges_held(catalog, store, host):
        _allowed(caller, name)

    async def act() -> JSONResponse:
        done = await drain_host(await temporal(request), catalog, store, host, force=body.force, actor=actor)
        return _json(200, DrainAnswer(host=host, done=done, actor=actor, server_time=datetime.now(UTC)))

    return await _once(store, caller, idempotency, act)


@router.post("/fleet", summary="Apply (or with dryRun, diff) a fleet file (scope admin)")
async def fleet(
    request: Request,
    caller: AdminDep,
    store: StoreDep,
    catalog: CatalogDep,
    toml: Annotated[str, Body(media_type="application/toml", description="The fleet file.")],
    dry_run: Annotated[bool, Query(alias="dryRun", description="Only say what would change.")] = False,
    prune: Annotated[bool, Query(description="Shut down instances the file no longer names.")] = False,
    idempotency: IdempotencyHeader = None,
) -> JSONResponse:
    """The body is the fleet file's TOML, validated whole like `perseus fleet apply`. Answers
    `{"actions": [...], "done", "waiting", "failed"}` (with `dryRun`: only `actions`)."""
    from perseus.fleet.enrol import apply_fleet, check_admins, plan_fleet
    from perseus.fleet.file import parse_fleet

    known = [e.name for e in await catalog.exchanges(active_only=True)]
    try:
        placements = parse_fleet(toml, known)
        await check_admins(catalog, placements)
    except InvalidFleet as exc:
        # A file that cannot be applied is a malformed request (422); a drain's refusal, also an
        # InvalidFleet, is a rule (409). Its class keeps the CLI's exit code in API mode.
        raise MalformedFleet(str(exc)) from None

    async def act() -> JSONResponse:
        client = await temporal(request)
        if dry_run:
            actions, _ = await plan_fleet(client, catalog, store, placements, prune=prune)
            return JSONResponse({"actions": [a.model_dump(mode="json") for a in actions]})
        actions, report = await apply_fleet(
            client, catalog, store, placements, prune=prune, actor=operate.api_actor(caller.name)
        )
        return JSONResponse(
            {
                "actions": [a.model_dump(mode="json") for a in actions],
                "done": report.done,
                "waiting": report.waiting,
                "failed": report.failed,
            }
        )

    return await _once(store, caller, None if dry_run else idempotency, act)


@router.post(
    "/network/exchanges/{exchange}/pause",
    response_model=PauseView,
    summary="Pause automatic failover for an exchange (scope operate)",
)
async def exchange_pause(
    exchange: ExchangePath,
    body: Annotated[PauseBody, Body()],
    caller: OperateDep,
    store: StoreDep,
    catalog: CatalogDep,
    idempotency: IdempotencyHeader = None,
) -> JSONResponse:
    """Maintenance mode, as ``perseus pause``: no automatic promotion or claim-over until resumed
    or the deadline passes; the active instance keeps running. A pause in force gets the new
    deadline. Written to Redis and the stream only: no Temporal needed."""
    actor = _actor(caller, body.actor)
    known = await _commanded(catalog, caller, exchange)
    seconds = DEFAULT_PAUSE_S if body.for_s is None else body.for_s

    async def act() -> JSONResponse:
        view = await maintenance.pause(store, catalog, known.name, actor=actor, for_s=seconds)
        return _json(200, view)

    return await _once(store, caller, idempotency, act)


@router.delete(
    "/network/exchanges/{exchange}/pause",
    response_model=PauseView,
    summary="End an exchange's pause now (scope operate)",
)
async def exchange_resume(
    exchange: ExchangePath,
    caller: OperateDep,
    store: StoreDep,
    catalog: CatalogDep,
    actor: Annotated[str | None, Query(max_length=200, description="Admin keys: who asked.")] = None,
    idempotency: IdempotencyHeader = None,
) -> JSONResponse:
    """As ``perseus resume``: refused (409, nothing changes) when the exchange is not paused."""
    who = _actor(caller, actor)
    known = await _commanded(catalog, caller, exchange)

    async def act() -> JSONResponse:
        view = await maintenance.resume(store, catalog, known.name, actor=who)
        return _json(200, view)

    return await _once(store, caller, idempotency, act)
