"""The CLI in API mode (DESIGN §2.10): with ``PERSEUS_API_URL`` and ``PERSEUS_API_KEY`` set, the
commands that change something go to the HTTP API instead of Temporal, Redis and PostgreSQL, so an
operator's laptop needs only a key. Answers come back as the same models the direct path returns,
and errors as the same Perseus errors (found by the ``type`` the API names, else by status), so
the output, ``--json`` and the exit codes are the same either way.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from perseus import errors
from perseus.client.control import CommandSent
from perseus.config import Settings, is_loopback_host
from perseus.core.lifecycle import Command, State
from perseus.models import CommandResult

#: Status → the error raised when the API names no Perseus type (DESIGN §2.10's exit codes).
_BY_STATUS: dict[int, type[errors.PerseusError]] = {
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotRegistered,
    409: errors.PerseusError,
    422: errors.ConfigError,
    503: errors.ServiceUnavailable,
}


def enabled(settings: Settings) -> bool:
    return settings.api_url is not None


def _base(settings: Settings) -> str:
    url = str(settings.api_url).rstrip("/")
    parts = urlsplit(url)
    # The key travels in a header: only loopback may carry it in clear.
    if parts.scheme != "https" and not is_loopback_host(parts.hostname):
        raise errors.ConfigError(f"PERSEUS_API_URL must use https for a non-loopback host, got {url}")
    if settings.api_key is None:
        raise errors.ConfigError("PERSEUS_API_URL is set but PERSEUS_API_KEY is not: API mode needs both")
    return url


def _error(response: httpx.Response) -> errors.PerseusError:
    try:
        body = response.json()
        message, type_name = str(body["error"]), str(body.get("type", ""))
    except (ValueError, KeyError, TypeError):
        message, type_name = f"the API answered {response.status_code}", ""
    cls = getattr(errors, type_name, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.PerseusError)):
        cls = _BY_STATUS.get(response.status_code, errors.PerseusError)
    if type_name == "ValidationError":
        cls = errors.ConfigError
    if issubclass(cls, errors.UnknownExchange):
        # Its constructor builds the text from the known names; the API already sent the text.
        err: errors.PerseusError = cls.__new__(cls)
        Exception.__init__(err, message)
        err.known = list(body.get("known") or [])  # type: ignore[attr-defined]
        return err
    if issubclass(cls, errors.ServiceUnavailable):
        return cls(message)
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


async def post(
    settings: Settings,
    path: str,
    body: dict[str, Any] | str,
    *,
    timeout_s: float,
    params: dict[str, str] | None = None,
    method: str = "POST",
) -> Any:
    """POST (or ``method``) ``body`` (JSON, or a TOML text) to the API; the answer's JSON, or the
    Perseus error it stands for."""
    base = _base(settings)
    assert settings.api_key is not None
    headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}
    # The API waits up to timeoutS for the worker; give it a margin to answer.
    limit = httpx.Timeout(timeout_s + 15 if math.isfinite(timeout_s) else None, connect=10)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=limit) as http:
            if isinstance(body, str):
                headers["Content-Type"] = "application/toml"
                response = await http.request(
                    method, path, content=body.encode(), headers=headers, params=params
                )
            elif method == "DELETE":  # no body: what it needs is in the path and the query
                response = await http.request(method, path, headers=headers, params=params)
            else:
                response = await http.request(method, path, json=body, headers=headers, params=params)
    except httpx.HTTPError as exc:
        raise errors.ServiceUnavailable(f"the Perseus API at {base} did not answer: {exc}") from None
    if response.status_code >= 400:
        raise _error(response)
    return response.json()


def _exchange_path(exchange: str) -> str:
    return f"/api/network/exchanges/{quote(exchange, safe='')}"


async def command(
    settings: Settings,
    exchange: str,
    command: Command,
    *,
    host: str | None,
    wait: bool,
    timeout_s: float,
    actor: str | None = None,
) -> tuple[str, CommandResult | CommandSent]:
    body: dict[str, Any] = {"command": command.value, "wait": wait, "timeoutS": timeout_s}
    if actor is not None:
        body["actor"] = actor
    if host is not None:
        body["host"] = host
    answer = await post(settings, _exchange_path(exchange) + "/commands", body, timeout_s=timeout_s)
    if not wait:
        state = answer.get("from")
        return answer["exchange"], CommandSent(
            command=command,
            workflow_id=answer["workflowId"],
            state=State(state) if state else None,
            validated=state is not None,
        )
    return answer["exchange"], _result(command, answer)


def _result(command: Command, answer: dict[str, Any]) -> CommandResult:
    path = [State(s) for s in answer.get("path", [])]
    return CommandResult(
        command=command,
        from_state=path[0] if path else State(answer["from"]),
        state=State(answer["to"]),
        transitions=path[1:],
        detail=answer.get("detail"),
        workflow_id=answer.get("workflowId"),
    )


async def handoff(
    settings: Settings,
    exchange: str,
    *,
    to_host: str,
    from_host: str | None,
    shutdown: bool,
    timeout_s: float,
    actor: str | None = None,
) -> tuple[str, CommandResult]:
    body: dict[str, Any] = {"to": to_host, "shutdown": shutdown, "timeoutS": timeout_s}
    if actor is not None:
        body["actor"] = actor
    if from_host is not None:
        body["from"] = from_host
    answer = await post(settings, _exchange_path(exchange) + "/handoff", body, timeout_s=timeout_s)
    return answer["exchange"], _result(Command.HANDOFF, answer)


async def drain(settings: Settings, host: str, *, force: bool) -> list[str]:
    answer = await post(
        settings, f"/api/network/hosts/{quote(host, safe='')}/drain", {"force": force}, timeout_s=600
    )
    return list(answer["done"])


async def fleet(settings: Settings, text: str, *, dry_run: bool, prune: bool) -> dict[str, Any]:
    """``fleet diff`` (``dry_run``) or ``fleet apply`` through ``POST /api/fleet`` (an admin key)."""
    params = {"dryRun": str(dry_run).lower(), "prune": str(prune).lower()}
    answer: dict[str, Any] = await post(settings, "/api/fleet", text, timeout_s=600, params=params)
    return answer


async def pause(
    settings: Settings, exchange: str, *, for_s: float, actor: str | None = None
) -> dict[str, Any]:
    """``perseus pause`` through ``POST …/pause`` (an operate key for the exchange)."""
    body: dict[str, Any] = {"forS": for_s}
    if actor is not None:
        body["actor"] = actor
    answer: dict[str, Any] = await post(settings, _exchange_path(exchange) + "/pause", body, timeout_s=30)
    return answer


async def resume(settings: Settings, exchange: str, *, actor: str | None = None) -> dict[str, Any]:
    """``perseus resume`` through ``DELETE …/pause``."""
    params = None if actor is None else {"actor": actor}
    answer: dict[str, Any] = await post(
        settings, _exchange_path(exchange) + "/pause", {}, timeout_s=30, params=params, method="DELETE"
    )
    return answer
