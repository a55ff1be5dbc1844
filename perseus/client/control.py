"""Client-side control of instance workflows: register, start/stop/shutdown (waiting for them, or
signalled and left to run), handoff, and finding the instance a command is for.

Used by the CLI, the API and ``perseus dev --demo``; converts Temporal's failures back into the
Perseus error tree so every caller can print one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
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
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from perseus import errors
from perseus.core.lifecycle import Command, Role, State, plan, projected_state
from perseus.keys import (
    ROSTER_MEMBERS,
    ROSTER_WORKFLOW,
    SHARED_TASK_QUEUE,
    roster_workflow_id,
    valid_exchange,
    valid_host,
    workflow_id,
)
from perseus.models import (
    CommandRequest,
    CommandResult,
    ConnectorSpec,
    FailsafeHolding,
    FailsafeView,
    HandoffRequest,
    HeadsUp,
    InstanceInput,
    InstanceSnapshot,
    RegistrationResult,
    RosterAnswer,
    Wire,
)
from perseus.store.redis_store import RedisStore
from perseus.temporal import (
    INSTANCE_WORKFLOW,
    QUERY_SNAPSHOT,
    RPC_TIMEOUT,
    SIGNAL_COMMAND,
    SIGNAL_HEADS_UP,
    UPDATE_COMMAND,
    UPDATE_HANDOFF,
    UPDATE_WAIT_REGISTERED,
    instances_filter,
    search_attributes,
)
from perseus.timing import BOUNDS_TEXT, interval_in_bounds, ttl_s, workflow_task_timeout_s
from perseus.tracing import traced

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
    # The SDK carries a raised exception's class name as the failure's type and its text, unprefixed,
    # as the message: the class is found by name, the message is kept as it is.
    cls = getattr(errors, cause.type or "", None)
    if not (isinstance(cls, type) and issubclass(cls, errors.PerseusError)):
        cls = errors.PerseusError
    err = cls.__new__(cls)
    Exception.__init__(err, cause.message)
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
    if not interval_in_bounds(seconds):
        raise errors.ConfigError(f"heartbeat interval must be {BOUNDS_TEXT}, got {seconds:g}")


async def _running(handle: WorkflowHandle[Any, str]) -> bool:
    try:
        described = await handle.describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise errors.ServiceUnavailable(f"Temporal: {exc.message}", server=errors.Server.TEMPORAL) from None
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


@traced("perseus register")
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
    timeout_s: float = ANSWER_TIMEOUT_S,
    actor: str | None = None,
    failsafe: bool = False,
) -> RegistrationResult:
    """Start the instance workflow and wait until it holds the claim (or, as a standby, until it is
    visible), or refuses; ``timeout_s`` bounds the wait for a worker's answer."""
    if standby and start:
        raise errors.ConfigError("--standby and --start exclude each other: a standby starts when promoted")
    check_exchange(exchange)
    if not valid_host(host):
        raise errors.ConfigError(f"invalid host name {host!r}: use letters, digits, '.', '_' or '-'")
    check_timeout(timeout_s)
    check_heartbeat_interval(heartbeat_interval_s)
    wf_id = workflow_id(exchange, host)
    handle: WorkflowHandle[Any, str] = client.get_workflow_handle(wf_id)
    if await _running(handle) and not await _closing(handle):
        raise errors.AlreadyRegistered(
            f"{exchange} is already registered on host {host} (workflow {wf_id}); "
            f"use perseus start/stop/shutdown {exchange}"
        )
    await _failsafe_agrees(client, exchange.lower(), wf_id, failsafe=failsafe)
    inp = InstanceInput(
        exchange=exchange.lower(),
        host=host,
        admin_email=admin_email,
        heartbeat_interval_s=heartbeat_interval_s,
        start_immediately=start,
        standby=standby,
        priority=priority,
        connector=connector or ConnectorSpec(),
        actor=actor,
        failsafe=failsafe,
    )
    if history_limit is not None:
        inp.history_limit = history_limit
    try:
        handle = await client.start_workflow(
            INSTANCE_WORKFLOW,
            inp,
            id=wf_id,
            task_queue=SHARED_TASK_QUEUE,
            task_timeout=timedelta(seconds=workflow_task_timeout_s(heartbeat_interval_s)),
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=search_attributes(
                exchange.lower(), host, State.IDLE, Role.STANDBY if standby else Role.ACTIVE
            ),
            static_summary=f"{exchange.lower()} on {host}",
            static_details=f"Exchange instance **{exchange.lower()}** on host **{host}**, "
            f"heartbeat every {heartbeat_interval_s:g}s (TTL {ttl_s(heartbeat_interval_s):g}s).",
            rpc_timeout=RPC_TIMEOUT,
        )
    except RPCError as exc:
        raise errors.ServiceUnavailable(
            f"Temporal refused to start {wf_id}: {exc.message}", server=errors.Server.TEMPORAL
        ) from None
    return await _answer(
        handle.execute_update(
            UPDATE_WAIT_REGISTERED,
            result_type=RegistrationResult,
            rpc_timeout=timedelta(seconds=timeout_s),
        ),
        "registration",
        timeout_s,
    )


class CommandSent(Wire):
    """What ``start``/``stop``/``shutdown --no-wait`` did: signalled the instance and returned.

    ``state`` and ``pending`` are the instance's own answer just before the signal; the workflow
    validates the command once more when the signal arrives (a refusal then is only logged)."""

    command: Command
    workflow_id: str
    signal: str = SIGNAL_COMMAND
    state: State | None = None
    pending: list[Command] = []
    #: False when no worker answered the snapshot query in time: the signal waits in the history
    #: and runs, or is refused, once a worker picks the workflow up again.
    validated: bool = True


#: The longest wait a caller may ask for (a day): beyond it a wait is a mistake, not a plan.
MAX_TIMEOUT_S = 86_400.0


def check_timeout(timeout_s: float) -> float:
    """``timeout_s`` if it is a usable wait (0 < t <= a day); ConfigError (usage) otherwise."""
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise errors.ConfigError(
            f"--timeout must be greater than 0 and at most {MAX_TIMEOUT_S:g} seconds, got {timeout_s:g}"
        )
    return timeout_s


async def _answer(
    call: Awaitable[T],
    what: str,
    timeout_s: float = ANSWER_TIMEOUT_S,
    handle: WorkflowHandle[Any, str] | None = None,
) -> T:
    try:
        return await asyncio.wait_for(call, timeout_s)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise await _no_answer(what, timeout_s, handle) from None
    except WorkflowUpdateFailedError as exc:
        raise error_from_failure(exc) from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise errors.NotRegistered(f"the instance is no longer running ({exc.message})") from None
        raise errors.ServiceUnavailable(f"Temporal: {exc.message}", server=errors.Server.TEMPORAL) from None


async def _no_answer(
    what: str, timeout_s: float, handle: WorkflowHandle[Any, str] | None
) -> errors.ServiceUnavailable:
    """Why a wait ran out. The instance's own snapshot tells a worker that is still carrying the
    command out (a slow handoff waits for its target) from one that nobody runs: only the second
    is a missing `perseus worker`."""
    snapshot: InstanceSnapshot | None = None
    if handle is not None:
        try:
            snapshot = await handle.query(
                QUERY_SNAPSHOT,
                result_type=InstanceSnapshot,
                rpc_timeout=timedelta(seconds=SNAPSHOT_TIMEOUT_S),
            )
        except (RPCError, WorkflowQueryFailedError):
            snapshot = None
    if snapshot is None:
        return errors.ServiceUnavailable(
            f"no worker answered the {what} within {timeout_s:g}s: is `perseus worker` running? "
            "(the request stays queued; follow it with `perseus status`)"
        )
    queued = ", ".join(c.value for c in snapshot.pending)
    return errors.StillRunning(
        f"the {what} did not finish within {timeout_s:g}s; a worker runs {snapshot.workflow_id}, which "
        f"is still at it (now {snapshot.state.value}{f'; queued: {queued}' if queued else ''}): "
        "follow it with `perseus log` and `perseus status`, or wait longer with --timeout"
    )


async def _running_ids(client: Client, query: str) -> list[str]:
    """Ids of the workflows a list filter (built by :func:`instances_filter`) finds."""
    try:
        return [wf.id async for wf in client.list_workflows(query, limit=10, rpc_timeout=RPC_TIMEOUT)]
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:  # a filter bug, not the user's input
            raise errors.PerseusError(f"Temporal refused the list filter {query!r}: {exc.message}") from None
        raise errors.ServiceUnavailable(f"Temporal: {exc.message}", server=errors.Server.TEMPORAL) from None


async def holder_workflow_id(store: RedisStore, exchange_id: int) -> str | None:
    """The ``workflowId`` the exchange's status key names: the instance that holds the claim now.

    This is the truth for "the active instance". Search attributes lag behind it: right after a
    crash failover the dead host's workflow still reads ``InstanceRole = active``."""
    record = (await store.status(exchange_id)).record
    return record.workflow_id or None if record is not None else None


async def find_instance(
    client: Client, exchange: str, host: str | None, default_host: str, *, prefer: str | None = None
) -> WorkflowHandle[Any, str]:
    """The running workflow for ``exchange`` on ``host``; without ``host``: the one on
    ``default_host``, else the only one running, else ``prefer`` (the status key's holder) if it is
    among several."""
    check_exchange(exchange)
    wanted = host or default_host
    # No default host (the API runs on no instance's host): the holder or the only instance.
    if wanted:
        if not valid_host(wanted):
            raise errors.ConfigError(f"invalid host name {wanted!r}: use letters, digits, '.', '_' or '-'")
        handle: WorkflowHandle[Any, str] = client.get_workflow_handle(workflow_id(exchange, wanted))
        if await _running(handle):
            return handle
    if host is None:
        found = await _running_ids(client, instances_filter(exchange))
        if len(found) == 1:
            return client.get_workflow_handle(found[0])
        if prefer is not None and prefer in found:
            return client.get_workflow_handle(prefer)
        if len(found) > 1:
            raise errors.NotRegistered(
                f"{exchange} runs on several hosts ({', '.join(sorted(found))}): choose one with --host"
            )
    where = f"on host {wanted}" if wanted else "on any host"
    raise errors.NotRegistered(
        f"{exchange} is not registered {where}: run perseus register {exchange}"
        + ("" if host is None else f" --host {host}")
    )


@traced("perseus command")
async def command(
    client: Client,
    *,
    exchange: str,
    host: str | None,
    default_host: str,
    command: Command,
    timeout_s: float = ANSWER_TIMEOUT_S,
    holder: str | None = None,
    actor: str | None = None,
    request_id: str | None = None,
) -> CommandResult:
    """Run ``command`` on the instance and wait (at most ``timeout_s``) until its transitions are
    done. ``holder`` (the status key's workflowId) picks the instance among several for start/stop.
    ``actor`` is written into the events the command causes; ``request_id`` (an idempotency key)
    makes the update's id, so Temporal runs a retried request once."""
    check_timeout(timeout_s)
    handle = await find_instance(
        client, exchange, host, default_host, prefer=holder if command is not Command.SHUTDOWN else None
    )
    result: CommandResult = await _answer(
        handle.execute_update(
            UPDATE_COMMAND,
            CommandRequest(command=command, actor=actor),
            id=update_id(command.value, actor, request_id),
            result_type=CommandResult,
            rpc_timeout=timedelta(seconds=timeout_s),
        ),
        command.value,
        timeout_s,
        handle,
    )
    return result.model_copy(update={"workflow_id": handle.id})


def update_id(command: str, actor: str | None, request_id: str | None) -> str:
    """The update's id: what the Web UI shows of it, so it names the command and who asked. The
    same ``request_id`` gives the same id, and Temporal runs an update id once per run."""
    return f"{command} by {actor or 'unknown'} #{request_id or uuid.uuid4().hex}"


#: How long ``--no-wait`` waits for the instance's own snapshot before signalling unvalidated.
SNAPSHOT_TIMEOUT_S = 3.0


async def send_command(
    client: Client,
    *,
    exchange: str,
    host: str | None,
    default_host: str,
    command: Command,
    holder: str | None = None,
    actor: str | None = None,
) -> CommandSent:
    """Signal ``command`` to the instance (``command_signal``, payload :class:`CommandRequest`) and
    return without waiting for it to run.

    What can be checked first is checked: the instance runs, and (from its snapshot) the command is
    allowed from the state it will be in once its queue has run. A refusal raises here, as
    :func:`command` would; nothing is sent."""
    if command is Command.HANDOFF:
        raise errors.ConfigError("a handoff names its target: use perseus handoff EXCHANGE --to HOST")
    handle = await find_instance(
        client, exchange, host, default_host, prefer=holder if command is not Command.SHUTDOWN else None
    )
    snapshot: InstanceSnapshot | None
    try:
        snapshot = await handle.query(
            QUERY_SNAPSHOT, result_type=InstanceSnapshot, rpc_timeout=timedelta(seconds=SNAPSHOT_TIMEOUT_S)
        )
    except (RPCError, WorkflowQueryFailedError):
        snapshot = None  # no worker answered: the signal is durable and is validated when it runs
    if snapshot is not None:
        _check_command(snapshot, command)
    try:
        await handle.signal(SIGNAL_COMMAND, CommandRequest(command=command, actor=actor))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise errors.NotRegistered(f"the instance is no longer running ({exc.message})") from None
        raise errors.ServiceUnavailable(f"Temporal: {exc.message}", server=errors.Server.TEMPORAL) from None
    return CommandSent(
        command=command,
        workflow_id=handle.id,
        state=snapshot.state if snapshot else None,
        pending=snapshot.pending if snapshot else [],
        validated=snapshot is not None,
    )


def _check_command(snapshot: InstanceSnapshot, command: Command) -> None:
    """The refusals the workflow's command validator would make, judged from its snapshot."""
    if snapshot.outcome is not None:
        raise errors.InvalidTransition(
            f"instance {snapshot.workflow_id} is not registered any more ({snapshot.outcome})"
        )
    if Command.SHUTDOWN in snapshot.pending:
        raise errors.InvalidTransition(f"instance {snapshot.workflow_id} is shutting down")
    if snapshot.role is Role.STANDBY and command is not Command.SHUTDOWN:
        raise errors.InvalidTransition(
            f"{snapshot.exchange} on {snapshot.host} is a standby: it holds no claim and starts only "
            f"when promoted (perseus handoff {snapshot.exchange} --to {snapshot.host}); shutdown is allowed"
        )
    plan(command, projected_state(snapshot.state, list(snapshot.pending)))


@traced("perseus handoff")
async def handoff(
    client: Client,
    *,
    exchange: str,
    to_host: str,
    from_host: str | None,
    default_host: str,
    shutdown: bool,
    holder: str | None = None,
    timeout_s: float = ANSWER_TIMEOUT_S,
    actor: str | None = None,
    request_id: str | None = None,
    wait: bool = True,
) -> CommandResult:
    """Planned switchover of ``exchange`` to the live standby on ``to_host``, from ``from_host`` or
    else from ``holder`` (the workflowId in the status key, see :func:`holder_workflow_id`)."""
    check_timeout(timeout_s)
    if not valid_host(to_host):
        raise errors.ConfigError(f"invalid host name {to_host!r}: use letters, digits, '.', '_' or '-'")
    handle = await find_active(client, exchange, from_host, default_host, holder=holder)
    request = HandoffRequest(to_host=to_host, shutdown=shutdown, actor=actor)
    await tell_target(client, workflow_id(exchange, to_host), handle, actor)
    if not wait:
        # Accepted: the instance's validator said yes and the handoff is in its history; it runs
        # whether or not anyone waits for it.
        await _answer(
            handle.start_update(
                UPDATE_HANDOFF,
                request,
                id=update_id("handoff", actor, request_id),
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                result_type=CommandResult,
                rpc_timeout=timedelta(seconds=timeout_s),
            ),
            "handoff",
            timeout_s,
            handle,
        )
        return CommandResult(
            command=Command.HANDOFF,
            from_state=State.ACTIVE,
            state=State.ACTIVE,
            transitions=[],
            workflow_id=handle.id,
            detail=f"accepted: handing over to {to_host}",
        )
    result: CommandResult = await _answer(
        handle.execute_update(
            UPDATE_HANDOFF,
            request,
            id=update_id("handoff", actor, request_id),
            result_type=CommandResult,
            rpc_timeout=timedelta(seconds=timeout_s),
        ),
        "handoff",
        timeout_s,
        handle,
    )
    return result.model_copy(update={"workflow_id": handle.id})


async def tell_target(
    client: Client, target_id: str, holder: WorkflowHandle[Any, str], actor: str | None
) -> None:
    """Wake the handoff's target now (``SIGNAL_HEADS_UP``, which changes nothing there): if
    the worker that had its run cached has died, the target's first task waits out the sticky
    timeout and replays elsewhere while the holder stops its connector, not after its release (a
    killed workflow worker cost a handoff two such waits in a row, one per workflow). Best effort:
    a target that is not running is the holder's to refuse, with the reason."""
    if target_id == holder.id:
        return
    note = HeadsUp(reason=f"a handoff from {holder.id}" + (f" asked by {actor}" if actor else ""))
    with contextlib.suppress(RPCError):
        await client.get_workflow_handle(target_id).signal(SIGNAL_HEADS_UP, note, rpc_timeout=RPC_TIMEOUT)


async def find_active(
    client: Client, exchange: str, host: str | None, default_host: str, *, holder: str | None
) -> WorkflowHandle[Any, str]:
    """The instance of ``exchange`` that holds the claim: the one on ``host`` if given, else the
    workflow the status key names (``holder``). Search attributes are not asked: they lag."""
    check_exchange(exchange)
    if host is not None:
        return await find_instance(client, exchange, host, default_host)
    if holder is None:
        raise errors.NotRegistered(
            f"no instance holds {exchange}: its status key is empty (nothing registered, or the "
            "claim expired); name the old host with --from"
        )
    handle: WorkflowHandle[Any, str] = client.get_workflow_handle(holder)
    if not await _running(handle):
        raise errors.NotRegistered(
            f"the status key of {exchange} names {holder}, which is not running (its claim has not "
            "expired yet): wait for a standby to take over, or name the host with --from"
        )
    return handle


async def failsafe_view(client: Client, exchange: str) -> FailsafeView | None:
    """The exchange's failsafe for the status views, read from Temporal: None when it has no
    roster (failsafe off). Its holder's state is what the holder's lease last reported in its
    heartbeat details (sent at once whenever holding starts, ends or its count of promises moves)."""
    roster = await _roster(client, exchange)
    if roster is None:
        return None
    view = FailsafeView(enrolled=len(roster.members))
    for member in roster.members:
        try:
            described = await client.get_workflow_handle(member.workflow_id).describe(rpc_timeout=RPC_TIMEOUT)
        except RPCError:
            continue
        for pending in described.raw_description.pending_activities:
            if pending.activity_type.name != "hold_lease" or not pending.heartbeat_details.payloads:
                continue
            try:
                (state,) = await client.data_converter.decode(
                    pending.heartbeat_details.payloads, [FailsafeHolding]
                )
            except Exception:  # noqa: BLE001 - a lease's details of another shape: nothing to show
                continue
            if isinstance(state, FailsafeHolding) and state.holding:
                return view.model_copy(
                    update={
                        "holding": True,
                        "promised": state.promised,
                        "standbys": state.members,
                        "horizon_s": state.horizon_s,
                    }
                )
    return view


async def failsafe_views(client: Client) -> dict[str, FailsafeView]:
    """Every exchange with a failsafe roster, by exchange name, for the network page: one list of
    the running roster workflows (visibility may miss a roster started a second ago: a view, not a
    guard), then :func:`failsafe_view` for each of them only — an exchange without the failsafe
    costs nothing. A roster stays when its last member leaves; an empty one is left out (no running
    instance of the exchange has the failsafe)."""
    query = f"WorkflowType = '{ROSTER_WORKFLOW}' AND ExecutionStatus = 'Running'"
    prefix = roster_workflow_id("")
    names = [
        wf.id[len(prefix) :]
        async for wf in client.list_workflows(query, rpc_timeout=RPC_TIMEOUT)
        if wf.id.startswith(prefix)
    ]
    views = await asyncio.gather(*(failsafe_view(client, name) for name in names))
    return {name: view for name, view in zip(names, views, strict=True) if view is not None and view.enrolled}


async def failsafe_members(client: Client, exchange: str) -> frozenset[str]:
    """The workflow ids in the exchange's roster (the instances running with the failsafe), for the
    fleet's plan: no roster is none; a roster that does not answer raises ServiceUnavailable
    instead of reading as "nobody has it" (a plan must not decide on a guess)."""
    try:
        roster: RosterAnswer = await client.get_workflow_handle(roster_workflow_id(exchange)).query(
            ROSTER_MEMBERS, result_type=RosterAnswer, rpc_timeout=RPC_TIMEOUT
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return frozenset()
        raise errors.ServiceUnavailable(f"Temporal: {exc.message}", server=errors.Server.TEMPORAL) from None
    except WorkflowQueryFailedError as exc:
        raise errors.ServiceUnavailable(
            f"the failsafe roster of {exchange} did not answer: {exc}", server=errors.Server.TEMPORAL
        ) from None
    return frozenset(m.workflow_id for m in roster.members)


async def _roster(client: Client, exchange: str) -> RosterAnswer | None:
    try:
        roster: RosterAnswer = await client.get_workflow_handle(roster_workflow_id(exchange)).query(
            ROSTER_MEMBERS, result_type=RosterAnswer, rpc_timeout=RPC_TIMEOUT
        )
    except (RPCError, WorkflowQueryFailedError):
        return None
    return roster


async def _failsafe_agrees(client: Client, exchange: str, wf_id: str, *, failsafe: bool) -> None:
    """Every instance of an exchange has the failsafe, or none has: a holder asks only the instances
    in its roster, so one registered without the failsafe beside failsafe ones could claim while the
    holder holds on the others' promises. A guard at the door, read from the roster and Temporal's
    list of running instances (which may lag a second behind a registration): the fleet file, with
    ``failsafe`` per exchange, is what keeps a fleet consistent."""
    roster = await _roster(client, exchange)
    enrolled = {m.workflow_id for m in roster.members} if roster is not None else set()
    others = enrolled - {wf_id}
    if not failsafe:
        if others:
            raise errors.ConfigError(
                f"{exchange} has its failsafe on ({len(others)} other instance(s) in its roster): "
                "register with --failsafe (every instance of an exchange must have it)"
            )
        return
    query = instances_filter(exchange)
    running = [wf.id async for wf in client.list_workflows(query, limit=100, rpc_timeout=RPC_TIMEOUT)]
    without = sorted(set(running) - enrolled - {wf_id})
    if without:
        raise errors.ConfigError(
            f"{exchange} runs without the failsafe in {', '.join(without)}: every instance of an exchange "
            "must have it (shut those down and register them again with --failsafe)"
        )
