"""Client-side control of instance workflows: register, start/stop/shutdown, find.

Used by the CLI, the API and ``perseus dev --demo``; converts Temporal's failures back into the
Perseus error tree so every caller can print one clear line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from perseus import errors
from perseus.keys import SHARED_TASK_QUEUE, list_query_value, valid_exchange, valid_host, workflow_id
from perseus.lifecycle import Command, State
from perseus.models import (
    MAX_HEARTBEAT_INTERVAL_S,
    MIN_HEARTBEAT_INTERVAL_S,
    CommandRequest,
    CommandResult,
    ConnectorSpec,
    HandoffRequest,
    InstanceInput,
    InstanceSnapshot,
    RegistrationResult,
)
from perseus.temporal import (
    INSTANCE_WORKFLOW,
    QUERY_SNAPSHOT,
    RPC_TIMEOUT,
    UPDATE_COMMAND,
    UPDATE_HANDOFF,
    UPDATE_WAIT_REGISTERED,
    search_attributes,
)

T = TypeVar("T")

#: How long a CLI call waits for a worker to answer before saying none does.
ANSWER_TIMEOUT_S = 90.0


def error_from_failure(exc: BaseException) -> errors.PerseusError:
    """Turn a workflow/update failure into the matching Perseus error (by type name)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.__cause__ or getattr(cause, "cause", None)
    if cause is None:
        return errors.PerseusError(str(exc))
    message = cause.message
    if message.startswith(("ValueError: ", "InvalidTransition: ")):
        message = message.split(": ", 1)[1]
    cls = getattr(errors, cause.type or "", None)
    if not (isinstance(cls, type) and issubclass(cls, errors.PerseusError)):
        cls = errors.PerseusError
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


def check_exchange(exchange: str) -> None:
    """Refuse a name that is not an exchange name or id before it reaches any query."""
    if not valid_exchange(exchange):
        raise errors.ConfigError(
            f"invalid exchange name {exchange[:80]!r}: use letters, digits, '_' or '-' "
            "(perseus exchanges lists them)"
        )


def check_heartbeat_interval(seconds: float) -> None:
    """The one rule for a heartbeat interval, wherever it comes from (CLI, settings, fleet file)."""
    if not (MIN_HEARTBEAT_INTERVAL_S <= seconds <= MAX_HEARTBEAT_INTERVAL_S):  # NaN fails too
        raise errors.ConfigError(
            f"heartbeat interval must be between {MIN_HEARTBEAT_INTERVAL_S:g} and "
            f"{MAX_HEARTBEAT_INTERVAL_S:g} seconds, got {seconds:g}"
        )


async def _running(handle: WorkflowHandle[Any, str]) -> bool:
    try:
        described = await handle.describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise errors.ServiceUnavailable(f"Temporal: {exc.message}") from None
    return described.status == WorkflowExecutionStatus.RUNNING


async def _closing(handle: WorkflowHandle[Any, str], wait_s: float = 10.0) -> bool:
    """True once a run that has already ended its instance (shut down, lost) has closed: a register
    right after a shutdown must not be refused because the old run is still writing its last event."""
    try:
        snapshot = await handle.query(QUERY_SNAPSHOT, result_type=InstanceSnapshot, rpc_timeout=RPC_TIMEOUT)
    except (RPCError, WorkflowQueryFailedError):
        return False
    if snapshot.outcome is None:
        return False
    deadline = asyncio.get_running_loop().time() + wait_s
    while asyncio.get_running_loop().time() < deadline:
        if not await _running(handle):
            return True
        await asyncio.sleep(0.05)
    return False


async def register(
    client: Client,
    *,
    exchange: str,
    host: str,
    admin_email: str | None,
    heartbeat_interval_s: float,
    start: bool,
    connector: ConnectorSpec | None = None,
    history_limit: int | None = None,
    standby: bool = False,
    priority: int = 0,
) -> RegistrationResult:
    """Start the instance workflow and wait until it holds the claim (or, as a standby, until it is
    visible), or refuses."""
    if standby and start:
        raise errors.ConfigError("--standby and --start exclude each other: a standby starts when promoted")
    check_exchange(exchange)
    if not valid_host(host):
        raise errors.ConfigError(f"invalid host name {host!r}: use letters, digits, '.', '_' or '-'")
    check_heartbeat_interval(heartbeat_interval_s)
    wf_id = workflow_id(exchange, host)
    handle: WorkflowHandle[Any, str] = client.get_workflow_handle(wf_id)
    if await _running(handle) and not await _closing(handle):
        raise errors.AlreadyRegistered(
            f"{exchange} is already registered on host {host} (workflow {wf_id}); "
            f"use perseus start/stop/shutdown {exchange}"
        )
    inp = InstanceInput(
        exchange=exchange.lower(),
        host=host,
        admin_email=admin_email,
        heartbeat_interval_s=heartbeat_interval_s,
        start_immediately=start,
        standby=standby,
        priority=priority,
        connector=connector or ConnectorSpec(),
    )
    if history_limit is not None:
        inp.history_limit = history_limit
    try:
        handle = await client.start_workflow(
            INSTANCE_WORKFLOW,
            inp,
            id=wf_id,
            task_queue=SHARED_TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=search_attributes(
                exchange.lower(), host, State.IDLE, "standby" if standby else "active"
            ),
            static_summary=f"{exchange.lower()} on {host}",
            static_details=f"Exchange instance **{exchange.lower()}** on host **{host}**, "
            f"heartbeat every {heartbeat_interval_s:g}s (TTL {3 * heartbeat_interval_s:g}s).",
            rpc_timeout=RPC_TIMEOUT,
        )
    except RPCError as exc:
        raise errors.ServiceUnavailable(f"Temporal refused to start {wf_id}: {exc.message}") from None
    return await _answer(
        handle.execute_update(
            UPDATE_WAIT_REGISTERED,
            result_type=RegistrationResult,
            rpc_timeout=timedelta(seconds=ANSWER_TIMEOUT_S),
        ),
        "registration",
    )


async def _answer(call: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(call, ANSWER_TIMEOUT_S)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise errors.ServiceUnavailable(
            f"no worker answered the {what} within {ANSWER_TIMEOUT_S:.0f}s: is `perseus worker` running?"
        ) from None
    except WorkflowUpdateFailedError as exc:
        raise error_from_failure(exc) from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise errors.NotRegistered(f"the instance is no longer running ({exc.message})") from None
        raise errors.ServiceUnavailable(f"Temporal: {exc.message}") from None


async def find_instance(
    client: Client, exchange: str, host: str | None, default_host: str
) -> WorkflowHandle[Any, str]:
    """The running workflow for ``exchange`` on ``host`` (or on the only host that runs it)."""
    check_exchange(exchange)
    wanted = host or default_host
    if not valid_host(wanted):
        raise errors.ConfigError(f"invalid host name {wanted!r}: use letters, digits, '.', '_' or '-'")
    handle: WorkflowHandle[Any, str] = client.get_workflow_handle(workflow_id(exchange, wanted))
    if await _running(handle):
        return handle
    if host is None:
        query = f"ExchangeName = {list_query_value(exchange.lower())} AND ExecutionStatus = 'Running'"
        found = [wf.id async for wf in client.list_workflows(query, limit=10, rpc_timeout=RPC_TIMEOUT)]
        if len(found) == 1:
            return client.get_workflow_handle(found[0])
        if len(found) > 1:
            raise errors.NotRegistered(
                f"{exchange} runs on several hosts ({', '.join(found)}): choose one with --host"
            )
    raise errors.NotRegistered(
        f"{exchange} is not registered on host {wanted}: run perseus register {exchange}"
    )


async def command(
    client: Client, *, exchange: str, host: str | None, default_host: str, command: Command
) -> CommandResult:
    handle = await find_instance(client, exchange, host, default_host)
    return await _answer(
        handle.execute_update(
            UPDATE_COMMAND,
            CommandRequest(command=command),
            result_type=CommandResult,
            rpc_timeout=timedelta(seconds=ANSWER_TIMEOUT_S),
        ),
        command.value,
    )


async def handoff(
    client: Client, *, exchange: str, to_host: str, from_host: str | None, default_host: str, shutdown: bool
) -> CommandResult:
    """Planned switchover of ``exchange`` to the live standby on ``to_host``."""
    if not valid_host(to_host):
        raise errors.ConfigError(f"invalid host name {to_host!r}")
    handle = await find_active(client, exchange, from_host, default_host)
    return await _answer(
        handle.execute_update(
            UPDATE_HANDOFF,
            HandoffRequest(to_host=to_host, shutdown=shutdown),
            result_type=CommandResult,
            rpc_timeout=timedelta(seconds=ANSWER_TIMEOUT_S),
        ),
        "handoff",
    )


async def find_active(
    client: Client, exchange: str, host: str | None, default_host: str
) -> WorkflowHandle[Any, str]:
    """The instance of ``exchange`` that holds the claim (on ``host`` if given)."""
    if host is not None:
        return await find_instance(client, exchange, host, default_host)
    check_exchange(exchange)
    query = (
        f"ExchangeName = {list_query_value(exchange.lower())} AND InstanceRole = 'active'"
        " AND ExecutionStatus = 'Running'"
    )
    found = [wf.id async for wf in client.list_workflows(query, limit=10, rpc_timeout=RPC_TIMEOUT)]
    if len(found) == 1:
        return client.get_workflow_handle(found[0])
    if not found:
        raise errors.NotRegistered(f"no active instance of {exchange} is running")
    raise errors.NotRegistered(
        f"several active instances of {exchange} ({', '.join(found)}): choose one with --from"
    )
