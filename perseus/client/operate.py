"""The commands an operator gives (start, stop, shutdown, handoff), as one code path for the CLI and
the HTTP API: resolve the exchange in the catalog, find the instance the command is for, run it
through :mod:`perseus.client.control` with its actor, and record a refusal in the audit trail.

A refusal raises the same Perseus error either way (the CLI prints it and exits with its code, the
API answers with its status) and changes nothing; it is also written to the exchange's stream as a
``command_refused`` entry naming the command, the reason and the actor (DESIGN §2.10).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from temporalio.client import Client

from perseus import errors
from perseus.client import control
from perseus.client.actors import api_actor, cli_actor
from perseus.core.lifecycle import Command
from perseus.keys import retention_min_id
from perseus.models import CommandResult, EventKind, Exchange, NetworkEvent
from perseus.store.db import Catalog
from perseus.store.redis_store import RedisStore

log = logging.getLogger(__name__)

__all__ = ["Operator", "api_actor", "cli_actor", "command", "handoff", "record_refusal", "resolve"]


@dataclass
class Operator:
    """Everything a command needs, opened by the caller (the CLI per command, the API per process).
    Temporal is connected only once the exchange is known: an unknown one is "not found" even while
    Temporal is down."""

    connect: Callable[[], Awaitable[Client]]
    store: RedisStore
    catalog: Catalog
    #: The host a command without ``host`` is for (the CLI's machine; the API has none of its own).
    default_host: str
    actor: str


async def resolve(catalog: Catalog, exchange: str) -> Exchange:
    """The active catalog exchange for a name or id; UnknownExchange lists the known ones."""
    if not exchange.isdigit():
        control.check_exchange(exchange)
    return await catalog.exchange(exchange)


async def _holder(store: RedisStore, exchange_id: int) -> str | None:
    # Only a tie-breaker between several instances: with Redis down the command still works when
    # the choice is clear.
    with contextlib.suppress(errors.ServiceUnavailable):
        return await control.holder_workflow_id(store, exchange_id)
    return None


async def record_refusal(op: Operator, known: Exchange, command: str, reason: str, host: str | None) -> None:
    """Write ``command_refused`` to the exchange's stream and its durable copy. Best effort: a
    refusal is answered whether or not the audit entry could be written."""
    now = datetime.now(UTC)
    event = NetworkEvent(
        event=EventKind.COMMAND_REFUSED,
        event_id=str(uuid.uuid4()),
        timestamp=now,
        exchange_id=known.id,
        exchange_name=known.name,
        hostname=host or "",
        instance_id="",
        epoch=0,
        actor=op.actor,
        command=command,
        reason=reason,
    )
    fields = event.fields()
    log.info("%s refused for %s (%s): %s", command, known.name, op.actor, reason)
    try:
        stream_id = await op.store.append_event(known.name, event.event_id, retention_min_id(now), fields)
        await op.catalog.record_event(event, stream_id, fields)
    except errors.ServiceUnavailable as exc:
        log.warning("refusal of %s for %s not recorded: %s", command, known.name, exc)


def _refused(exc: errors.PerseusError) -> bool:
    """A domain or input refusal (recorded), not a server that did not answer (nothing was decided)."""
    return not isinstance(exc, errors.ServiceUnavailable)


async def command(
    op: Operator,
    exchange: str,
    command: Command,
    *,
    host: str | None = None,
    wait: bool = True,
    timeout_s: float = control.ANSWER_TIMEOUT_S,
    request_id: str | None = None,
) -> tuple[Exchange, CommandResult | control.CommandSent]:
    """start/stop/shutdown: waited for (an update: the transitions it took) or signalled."""
    control.check_timeout(timeout_s)
    known = await resolve(op.catalog, exchange)
    try:
        holder = await _holder(op.store, known.id) if host is None else None
        if not wait:
            return known, await control.send_command(
                await op.connect(),
                exchange=known.name,
                host=host,
                default_host=op.default_host,
                command=command,
                holder=holder,
                actor=op.actor,
            )
        return known, await control.command(
            await op.connect(),
            exchange=known.name,
            host=host,
            default_host=op.default_host,
            command=command,
            timeout_s=timeout_s,
            holder=holder,
            actor=op.actor,
            request_id=request_id,
        )
    except errors.PerseusError as exc:
        if _refused(exc):
            await record_refusal(op, known, command.value, str(exc), host)
        raise


async def handoff(
    op: Operator,
    exchange: str,
    *,
    to_host: str,
    from_host: str | None = None,
    shutdown: bool = False,
    timeout_s: float = control.ANSWER_TIMEOUT_S,
    request_id: str | None = None,
    wait: bool = True,
) -> tuple[Exchange, CommandResult]:
    """Planned switchover to the live standby on ``to_host``."""
    control.check_timeout(timeout_s)
    known = await resolve(op.catalog, exchange)
    try:
        holder = await control.holder_workflow_id(op.store, known.id) if from_host is None else None
        return known, await control.handoff(
            await op.connect(),
            exchange=known.name,
            to_host=to_host,
            from_host=from_host,
            default_host=op.default_host,
            shutdown=shutdown,
            holder=holder,
            timeout_s=timeout_s,
            actor=op.actor,
            request_id=request_id,
            wait=wait,
        )
    except errors.PerseusError as exc:
        if _refused(exc):
            await record_refusal(op, known, Command.HANDOFF.value, str(exc), from_host)
        raise
