"""The data plane on one host: renew this host's claims and standby records, whatever Temporal does.

Temporal decides and remembers; this module keeps the promises already made. One
:class:`LeaseKeeper` lives in each worker process (built by ``worker.py``) and owns, per instance
workflow on this host, one renewal loop. The lease activities only *attach* to it: they start it
(or find it running), heartbeat while it renews, and report how it ended. An activity can end for
many reasons that say nothing about the claim — the SDK cancels it locally when it cannot reach the
server for the heartbeat timeout, the workflow cancels it before continue-as-new, a term runs out —
and none of them stops the renewals. So a Temporal outage of any length lapses no claim and stops no
connector while Redis answers, and the workflow re-attaches when it comes back. The claims' loops
renew on a shared grid (:mod:`perseus.host.grid`): those due in one 100 ms slot start together, up to a
slot early, and their renewals go to Redis as one pipeline; each loop still gets its own outcome.

Invariants (the reasons this module exists):

1. **A connector never outlives its claim.** Every loop stops its connector as soon as the claim is
   refused (fencing mismatch, key gone) or when no renewal has succeeded for the renew deadline
   (1.7 intervals, below the 3-interval TTL; the claim's record declares it), before it reports
   anything. The same deadline is handed to the :class:`~perseus.host.watchdog.Watchdog` process
   after every renewal, which kills a process connector's whole group on its own if this process is
   frozen or its loop is stuck.
2. **Nothing renews for a workflow that is gone.** A claim whose loop has had no activity attached
   for a while is checked against Temporal; only a definite "closed" ends it (connector stopped,
   claim released). "Unreachable" keeps renewing: that is the outage this module rides through.
3. **A standby record is renewed, never re-created,** by the loop (``SET … XX``): once its workflow
   dropped it, it stays dropped. A loop that finds it gone ends, and the attached activity says so.
4. **A standby sees a silent holder when it can be claimed over, not a beat later.** Each renewal
   reads the holder's key and its PTTL; the loop looks once more at the moment that key would pass
   its holder's renew deadline plus the margin (:func:`perseus.core.decisions.lapses_in_s`), so its
   workflow can claim over it then (:func:`perseus.core.decisions.takes_over_lapsed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from perseus import metrics
from perseus import version as release
from perseus.core.decisions import failsafe as fs
from perseus.core.decisions import (
    held_back_by_handoff,
    holder_late,
    lapses_in_s,
    past_renew_deadline,
    quick_retry_at,
    renewed_ago_s,
    runs_without_claim,
    standby_step_s,
    takes_over_lapsed,
)
from perseus.core.pause import in_force, paused_for_ms, watch_ends
from perseus.errors import (
    ClaimLost,
    ClaimMissing,
    ConnectorFailed,
    ConnectorFailover,
    ConnectorUnhealthy,
    PerseusError,
    RenewDeadline,
    ServiceUnavailable,
    StandbyGone,
)
from perseus.host.grid import Renewal, RenewalGrid
from perseus.host.watchdog import Term, boottime, killed_at_deadline
from perseus.keys import iso
from perseus.models import (
    Claim,
    ConnectorFailure,
    EventKind,
    GrantRequest,
    InstanceStatus,
    LeaseRequest,
    NetworkEvent,
    PromiseAnswer,
    PromiseRequest,
    RosterAnswer,
    StandbyLeaseRequest,
)
from perseus.timing import (
    DETACHED_FLOOR_S,
    DETACHED_INTERVALS,
    FAILSAFE_EVENT_GIVE_UP_S,
    HEADS_UP_TIMEOUT_S,
    LAPSE_LOOK_S,
    MIN_INTERVAL_S,
    OUTAGE_MEMORY_INTERVALS,
    RECANCEL_S,
    RENEWAL_BOUND_FLOOR_S,
    RENEWAL_BOUND_INTERVALS,
    failsafe_probe_s,
    renew_deadline_s,
    ttl_ms,
)

# boottime: CLOCK_BOOTTIME, the watchdog's clock, is also the holder's failsafe clock: it counts a
# suspended host's sleep, so a holder that wakes from a suspend finds its horizon passed
# (docs/design.md, "Failsafe", invariant 6).

if TYPE_CHECKING:
    from perseus.connectors.base import Connector, ConnectorHost
    from perseus.host.watchdog import Watchdog
    from perseus.store.redis_store import FenceReply, HolderEpoch, RedisStore, StatusRead

log = logging.getLogger(__name__)

#: Records one network event (the stream, then PostgreSQL): a connector's own reported errors.
RecordEvent = Callable[[NetworkEvent], Awaitable[object]]

#: Answers whether an instance workflow is definitely closed (True), running (False) or unknown
#: (None: Temporal did not answer — keep going).
WorkflowClosed = Callable[[str], Awaitable[bool | None]]

#: Sends an instance workflow (by id) a heads-up with its reason (``models.HeadsUp``).
HeadsUpSender = Callable[[str, str], Awaitable[object]]


class FailsafeCalls(Protocol):
    """The failsafe's messages through Temporal (``activities/failsafe.py`` over the worker's client)."""

    async def read(self, exchange: str) -> RosterAnswer | None: ...

    async def ask(self, workflow_id: str, req: PromiseRequest) -> PromiseAnswer: ...


class _Beat:
    """A pulse that wakes every waiter once: each renewal replaces the event it set."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def pulse(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        # asyncio.timeout, not wait_for: no task of its own per wait (this runs once per beat).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()


@dataclass
class _Loop:
    """What every kept loop shares: who watches it, and how it ended."""

    workflow_id: str
    interval_s: float
    #: Whether any activity has attached yet (a claim is held from the moment it is taken).
    ever_attached: bool = False
    detached_since: float | None = field(default_factory=time.monotonic)
    last_orphan_check: float = 0.0
    #: Set once Temporal said for certain that the workflow has closed.
    workflow_closed: bool = False
    #: The question to Temporal in flight, if any: never awaited by the renewal loop itself.
    orphan_check: asyncio.Task[None] | None = None
    ended: PerseusError | None = None
    #: A one-shot report for the next attached activity that does not end the loop (a connector
    #: that failed while the claim stays ours: renewals go on while the workflow recovers).
    report: PerseusError | None = None
    beat: _Beat = field(default_factory=_Beat)
    task: asyncio.Task[None] | None = None
    #: The tickets of the activities attached now (when the server scheduled each): the newest is the
    #: workflow's current activity, the only one a one-shot report goes to (``superseded``).
    tickets: list[float] = field(default_factory=list)

    @property
    def attached(self) -> int:
        """How many activities are attached now."""
        return len(self.tickets)

    def attach(self, ticket: float) -> None:
        self.tickets.append(ticket)
        self.ever_attached = True
        self.detached_since = None

    def superseded(self, ticket: float) -> bool:
        """Whether an activity scheduled after the one holding ``ticket`` is attached too: the
        workflow cancelled that one and started the next (a cancellation is heard only at a
        heartbeat), or it is an earlier attempt. It must take no one-shot report — its outcome would
        go nowhere, and the current activity would never hear it (a chaos run: a holder's lapse taken
        by a cancelled watch; the next one saw only the TTL run out, and waited out the old
        deadline). By schedule time, not by order of attaching: a cancelled activity may start after
        the next. Among the attached only: a server clock stepped back can misorder two tickets for
        as long as both are attached, never for longer."""
        return any(other > ticket for other in self.tickets)

    def detach(self, ticket: float) -> None:
        self.tickets.remove(ticket)  # attach put it there
        if not self.tickets:
            self.detached_since = time.monotonic()


#: Deadlines remembered per claim (``HeldClaim.terms``): the keeper sees a child's death at the
#: first renewal after its exit was noticed (the exit poll, then up to an interval), by which time
#: one or two more deadlines may have been handed over since the one that killed it.
TERMS_KEPT = 4


@dataclass
class HeldClaim(_Loop):
    """One claim this host holds and renews."""

    request: LeaseRequest | None = None
    last_ok: float = field(default_factory=time.monotonic)
    renewals: int = 0
    last_renewed: datetime | None = None
    #: Wall-clock time at which the connector was stopped for the reason in ``ended``: the
    #: transitions that follow are stamped with it, not with when the workflow heard of it.
    stopped_at: datetime | None = None
    #: Status fields a failed renewal could not deliver (a reported error), sent with the next one.
    unsent: dict[str, object] = field(default_factory=dict)
    #: The failsafe's memory on the holder's side, on CLOCK_BOOTTIME (None: the failsafe is off for
    #: this claim, and nothing of it runs): the last renewal, the rounds and the promises counted.
    facts: fs.HolderFacts | None = None
    #: When a renewal first failed (or went a quarter interval overdue) since the last one counted.
    failed_since: float | None = None
    last_round_at: float | None = None
    #: Acting past the renew deadline on promises alone (the status, the metric, the log).
    holding: bool = False
    #: Of the latest round, who refused and why (the status; the design keeps refusals for it).
    refusals: dict[str, str] = field(default_factory=dict)
    rounds: asyncio.Task[None] | None = None
    #: The record as the last counted renewal left it: what a re-establishment writes back.
    last_record: str | None = None
    #: The failsafe's events on their way to the stream, the latest last: each waits for the one
    #: before it, so that "ended" never lands before "holding".
    events: asyncio.Task[None] | None = None
    #: The latest deadlines handed to the watchdog for this claim's connector, oldest first: enough
    #: of them (TERMS_KEPT) to judge a death the keeper sees a renewal or two after it happened.
    terms: list[Term] = field(default_factory=list)

    @property
    def claim(self) -> Claim:
        assert self.request is not None
        return self.request.claim

    @property
    def timing(self) -> fs.FailsafeTiming:
        return fs.FailsafeTiming.of(self.interval_s)

    def until(self) -> float:
        """Until when (CLOCK_MONOTONIC) the connector may act: the renew deadline, or — failsafe on
        — the horizon its promises give it (``failsafe.acts_until``), whichever is later."""
        deadline = self.last_ok + renew_deadline_s(self.interval_s)
        if self.facts is None:
            return deadline
        horizon = fs.acts_until(self.facts, self.timing, failsafe=True)
        return max(deadline, time.monotonic() + (horizon - boottime()))

    def within_deadline(self) -> bool:
        return time.monotonic() <= self.until()


@dataclass
class WatchedStandby(_Loop):
    """One standby record this host renews, and the exchange it watches."""

    request: StandbyLeaseRequest | None = None
    vacant: bool = False
    last_epoch: int = 0
    #: The last look at the holder's key found it unrenewed past the holder's renew deadline (plus
    #: the margin): its connector has stopped, and its keeper renews no more. Kept when the key then
    #: vanishes — that vacancy is the TTL running out, not Redis losing a live holder's key.
    holder_past_deadline: bool = False
    #: ...and that was no Redis outage, and the holder's record says its interval: the watch ends
    #: and its workflow claims over the key (``decisions.takes_over_lapsed``).
    holder_silent: bool = False
    #: Monotonic time at which the holder's key, as last seen, passes its renew deadline plus the
    #: margin: the watch looks again then (None: nothing to look for).
    lapse_at: float | None = None
    #: Seconds since the holder renewed, as last seen (None: no holder, or one on another
    #: interval, whose renewals this watch's looks cannot keep a phase to).
    holder_renewed_ago: float | None = None
    #: The workflow was told that this holder missed a renewal (:attr:`holder_overdue`): once.
    told_late: bool = False
    #: Monotonic time of the last renewal that failed (Redis unreachable or too slow).
    last_failure: float = float("-inf")
    #: A warm standby's connector was seen warm and ready at a renewal.
    warm_seen: bool = False
    #: ...and at a later one it was not (it died, or was stopped): the watch reports it once, so
    #: that the workflow warms it up again rather than learn of it only when a promotion fails.
    warm_lost: bool = False
    #: Monotonic time at which the exchange's pause, as last read, ends (None: not paused). Kept
    #: through a Redis outage: a pause is honoured until its deadline even when it cannot be re-read.
    paused_until: float | None = None
    #: The host a handoff under way reserved the exchange for, as the last renewal read it (None:
    #: no handoff): a vacancy left for another host is not this standby's to race for.
    handed_to: str | None = None

    @property
    def paused(self) -> bool:
        return in_force(self.paused_until, time.monotonic())

    @property
    def holder_overdue(self) -> bool:
        """The holder, as last seen, had missed a renewal (``decisions.holder_late``)."""
        ago = self.holder_renewed_ago
        return ago is not None and holder_late(ago, self.interval_s)

    @property
    def wakes(self) -> bool:
        """Whether the watch ends for its workflow to race for the exchange (``core.pause``)."""
        return watch_ends(
            vacant=self.vacant,
            holder_silent=self.holder_silent,
            paused=self.paused,
            handed_elsewhere=self.handed_elsewhere,
        )

    @property
    def handed_elsewhere(self) -> bool:
        """A handoff reserved the exchange for another host: the claim step's own rule would hold
        this standby's race for the vacancy back."""
        host = self.request.record.host if self.request is not None else ""
        return held_back_by_handoff(reserved_for=self.handed_to, host=host, automatic=True)

    @property
    def after_outage(self) -> bool:
        """Whether Redis was away within the last two intervals."""
        return time.monotonic() - self.last_failure < OUTAGE_MEMORY_INTERVALS * self.interval_s


class LeaseKeeper:
    """Every claim and standby record of this worker's host, renewed on this process's own timers."""

    def __init__(
        self,
        store: RedisStore,
        connectors: ConnectorHost,
        *,
        watchdog: Watchdog | None = None,
        workflow_closed: WorkflowClosed | None = None,
        record_event: RecordEvent | None = None,
        failsafe: FailsafeCalls | None = None,
        heads_up: HeadsUpSender | None = None,
    ) -> None:
        self._store = store
        #: How a standby's workflow is told that its holder missed a renewal (None: it is not).
        self._heads_up = heads_up
        #: How a failsafe holder reads its roster and asks for promises (None: it holds on nothing).
        self._failsafe = failsafe
        #: Claim renewals leave in shared slots, one pipeline per slot (see perseus/host/grid.py).
        self._grid = RenewalGrid(store)
        self._record_event = record_event
        #: Events on their way to the stream, and heads-ups to workflows (kept referenced until sent).
        self._events: set[asyncio.Task[None]] = set()
        self._connectors = connectors
        self._watchdog = watchdog
        self._workflow_closed = workflow_closed
        self.claims: dict[str, HeldClaim] = {}
        #: Repeated cancellations in flight (see _cancel_for_sure), kept so they are not collected.
        self._cancelling: set[asyncio.Task[None]] = set()
        self.standbys: dict[str, WatchedStandby] = {}
        #: The failsafe's granter side (docs/design.md, "Failsafe"), on CLOCK_MONOTONIC: a keeper
        #: that starts has forgotten the promises its process gave, so it is bound from its start
        #: (invariant 3); and, per exchange, until when a promise or an enrolment binds this host.
        self._started = time.monotonic()
        self._bounds: dict[int, float] = {}
        #: Each asked instance's last answer and when: a line only when it changes or the asking
        #: had stopped for a promise's length (a fleet-wide outage asks every standby twice an
        #: interval).
        self._answered: dict[str, tuple[str, float]] = {}

    # --- claims --------------------------------------------------------------------------------

    def hold(self, req: LeaseRequest, *, valid_from: float | None = None) -> HeldClaim:
        """The loop renewing ``req.claim``: the running one (re-attach, or the first lease of a
        claim taken on this host) or a new one.

        ``valid_from`` (monotonic): when the request that took the claim was sent — its validity
        counts from there, as each renewal's counts from its own sending (default: now).
        A newer claim of the same workflow (after a reclaim or promotion) replaces the older loop,
        and a standby loop of the same workflow ends: the workflow is active now.
        """
        held = self.claims.get(req.workflow_id)
        if held is not None and held.claim == req.claim:
            if held.ever_attached:
                log.info("%s: re-attached to the renewals of epoch %s", req.workflow_id, req.claim.epoch)
            return held
        if held is not None:
            self._cancel(held)
        if (standby := self.standbys.pop(req.workflow_id, None)) is not None:
            self._cancel(standby)
        held = HeldClaim(workflow_id=req.workflow_id, interval_s=req.heartbeat_interval_s, request=req)
        if valid_from is not None:
            held.last_ok = valid_from
        held.task = asyncio.create_task(self._renew(held), name=f"renew {req.workflow_id}")
        if req.failsafe and req.exchange is not None and self._failsafe is not None:
            held.facts = fs.HolderFacts(renewed_at=boottime())
            held.rounds = asyncio.create_task(self._rounds(held), name=f"failsafe {req.workflow_id}")
        self.claims[req.workflow_id] = held
        return held

    @contextlib.contextmanager
    def attached(self, loop: _Loop, ticket: float = 0.0) -> Iterator[None]:
        """An activity attached to ``loop`` while inside; ``ticket``: when its attempt was scheduled
        (``_Loop.superseded``)."""
        loop.attach(ticket)
        try:
            yield
        finally:
            loop.detach(ticket)

    async def _renew(self, held: HeldClaim) -> None:
        req = held.request
        assert req is not None
        interval = req.heartbeat_interval_s
        deadline = renew_deadline_s(interval)
        ttl = ttl_ms(interval)
        due = time.monotonic()
        retried = False  # the quick retry after a failed renewal was spent (until one gets through)
        while True:
            # Checked before anything else: a process that was paused (SIGSTOP, a long GC, a frozen
            # VM) must not act on a claim it may have lost while it was not looking.
            if not held.within_deadline():
                await self._end(held, RenewDeadline(self._deadline_message(deadline, ttl)))
                return
            # What the connector says of itself rides on the renewal: no extra round trip. An error it
            # reported is carried to the next renewal if this one does not get through.
            health = self._connectors.health(req.workflow_id)
            patch = {**held.unsent, **(health.status_patch() if health else {})}
            patch["lastHeartbeat"] = iso(datetime.now(UTC))
            # Bounded by what is left of the renew deadline (a Redis that hangs must not keep this
            # loop from stopping the connector in time) and by an interval (RENEWAL_BOUND_INTERVALS
            # says why not less). asyncio.timeout rather than wait_for: the same bound without a
            # task per renewal.
            left = held.until() - time.monotonic()
            bound = max(RENEWAL_BOUND_FLOOR_S, min(left, RENEWAL_BOUND_INTERVALS * interval))
            renewal = Renewal(req.exchange_id, req.claim.instance_id, req.claim.epoch, patch, ttl)
            # Redis runs the renewal after this instant: the claim's validity counts from here, not
            # from the reply, which may come back up to the bound later — a standby's claim-over line
            # counts from when Redis ran it, so counting from the reply could let this holder act
            # past that line.
            sent = time.monotonic()
            failed = True
            try:
                async with asyncio.timeout(bound):
                    # Sent in one pipeline with the other renewals of this slot; the reply is this
                    # claim's own, exactly as a lone fenced renewal's.
                    reply = await self._grid.renew(renewal, bound)
            except (ServiceUnavailable, TimeoutError) as exc:
                held.unsent = {k: v for k, v in patch.items() if k in ("lastError", "lastErrorAt")}
                self._renewal_failed(held)
                log.warning("renewal of %s failed: %s", req.workflow_id, str(exc) or "Redis too slow")
            except Exception as exc:  # noqa: BLE001 - any other answer is a failed renewal too
                # Redis refused this claim's renewal (a key of the wrong type, say): not renewed, like
                # a Redis out of reach. The loop goes on, so the renew deadline ends the claim and
                # stops its connector, and the workflow hears why; a dead loop would leave the lease
                # heartbeating over a claim nobody renews.
                held.unsent = {k: v for k, v in patch.items() if k in ("lastError", "lastErrorAt")}
                self._renewal_failed(held)
                log.error("renewal of %s refused: %s: %s", req.workflow_id, type(exc).__name__, exc)
            else:
                held.unsent = {}
                unsettled = False
                if reply.outcome == "missing" and self._reestablishes(held):
                    # Failsafe on: an absent key may be written back (invariant 7); None: that
                    # write did not get through, which counts as a failed renewal.
                    back = await self._key_absent(held, patch, ttl, bound)
                    if back is None:
                        unsettled = True
                        self._renewal_failed(held)
                    else:
                        reply = back
                if unsettled:
                    pass
                elif reply.outcome != "ok":
                    lost = ClaimMissing if reply.outcome == "missing" else ClaimLost
                    await self._end(held, lost(_lost_message(reply)))
                    return
                else:
                    failed = False
                    self._renewed(held, due, sent, reply)
                    if "lastError" in patch:  # the reply's record is parsed only here (rare)
                        self._reported_error(str(patch["lastError"]), reply.status)
                    connector = self._connectors.get(req.workflow_id)
                    fault = connector.fault() if connector is not None else None
                    late = self._killed_at_deadline(held, fault)
                    if late is not None:
                        await self._end(held, late)
                        return
                    if fault is not None:
                        await self._connectors.stop(req.workflow_id, "connector failed")
                        held.report = _fault_error(fault)
                        log.info("%s: connector failed while active: %s", req.workflow_id, fault.reason)
            if not held.within_deadline():
                await self._end(held, RenewDeadline(self._deadline_message(deadline, ttl)))
                return
            held.beat.pulse()
            if await self._orphaned(held):
                await self._connectors.stop(req.workflow_id, "claim lost", at_once=True)
                with contextlib.suppress(ServiceUnavailable):
                    await self._store.fenced(
                        req.exchange_id, req.claim.instance_id, req.claim.epoch, mode="delete"
                    )
                await self._end(held, ClaimLost(f"the instance workflow {req.workflow_id} has ended"))
                return
            # A fixed schedule, not sleep(interval) after the work: lateness does not accumulate.
            # Woken at the start of the grid slot holding the due time: up to a slot early (safe),
            # together with the slot's other renewals. A failsafe holder renews four times an
            # interval: its first round of asks starts sooner after a cut, and its key is back sooner
            # after.
            step = fs.renewal_step_s(interval, failsafe=held.facts is not None)
            retry_at = quick_retry_at(sent, due + step, interval, failed=failed, retried=retried)
            retried = failed and (retried or retry_at is not None)
            if retry_at is not None:
                await self._until_due(held, retry_at)  # the slot stays where it was
                continue
            due += step
            await self._until_due(held, due)

    def _killed_at_deadline(self, held: HeldClaim, fault: ConnectorFailure | None) -> RenewDeadline | None:
        """A renewal got through, but too late for the watchdog, which had already killed the
        connector at the deadline it held: that is the deadline's path (the workflow takes the
        exchange again at once), not a crash (a connector failure, restarted only if its spec says)."""
        if fault is None or fault.killed_at is None or not killed_at_deadline(held.terms, fault.killed_at):
            return None
        req = held.request
        assert req is not None
        interval = req.heartbeat_interval_s
        return RenewDeadline(
            f"the watchdog stopped the connector at the renew deadline ({renew_deadline_s(interval):.1f}s"
            f" since the renewal it knew of; TTL {ttl_ms(interval) / 1000:.1f}s): {fault.reason}"
        )

    async def _until_due(self, held: HeldClaim, due: float) -> None:
        """Wait for the next renewal — but a failsafe holder whose horizon comes first wakes at the
        horizon, so that the loop's check stops its connector then, not up to an interval later."""
        while held.facts is not None and held.failed_since is not None:
            until = held.until()
            if until >= due:
                break
            await asyncio.sleep(max(0.0, until - time.monotonic()) + LAPSE_LOOK_S)
            if not held.within_deadline():
                return
        await self._grid.until(due)

    def _reported_error(self, error: str, status: StatusRead) -> None:
        """An error the connector reported (``PERSEUS error=…``), now in the status key, goes to the
        network stream as an ``error`` event too — described by the status record it landed in.
        In a task of its own: the renewal loop never waits for PostgreSQL."""
        if self._record_event is None:
            return
        doc = status.record
        claim = doc.claim if doc is not None else None
        if doc is None or claim is None:
            why = status.malformed or "no fencing token"
            log.warning("connector error not recorded as an event (unreadable status: %s): %s", why, error)
            return
        event = NetworkEvent(
            event=EventKind.ERROR,
            event_id=str(uuid.uuid4()),
            timestamp=datetime.now(UTC),
            exchange_id=doc.exchange_id,
            exchange_name=doc.exchange_name,
            hostname=doc.hostname,
            ip=doc.ip_address,
            instance_id=claim.instance_id,
            epoch=claim.epoch,
            admin_email=doc.admin_email,
            error=error,
            state=doc.connection_state,
            detail="reported by the connector",
        )
        task = asyncio.create_task(self._record(event), name=f"event {event.event_id}")
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def _record(self, event: NetworkEvent) -> None:
        assert self._record_event is not None
        try:
            await self._record_event(event)
        except Exception as exc:  # the status key has it already: the event is what is given up
            log.warning("connector error of %s not recorded as an event: %s", event.exchange_name, exc)

    def ended(self, workflow_id: str, claim: Claim) -> PerseusError | None:
        """Why the renewals of ``claim`` ended on this host (its renew deadline passed, it was lost
        or it vanished), or None while they run or were never started here. A connector must not
        start acting under an ended claim: an activation or connect that reaches the host after the
        end — the workflow learns of it only from its lease, later — is refused with this."""
        held = self.claims.get(workflow_id)
        if held is None or held.request is None or held.claim != claim:
            return None
        return held.ended

    def guard(self, workflow_id: str) -> None:
        """Hand a connector that has just started a process to the watchdog at once, with the
        deadline of the claim it runs under — not only at the next renewal, up to an interval later.

        A warm standby's connector holds no claim and does not act: it gets no deadline (it still
        dies with the worker, by its parent-death signal). It is guarded when it is activated.
        """
        connector = self._connectors.get(workflow_id)
        pgid = connector.process_group() if connector is not None else None
        if pgid is None or self._watchdog is None:
            return
        held = self.claims.get(workflow_id)
        if connector is not None and _demoted(connector) and (held is None or held.ended is not None):
            return
        if held is not None and held.ended is None:
            self._arm(held, pgid, held.until())
        else:
            # No renewals known here: allow no more than the shortest deadline from now. Straight to
            # the watchdog, not through _arm: with no claim there are no terms to remember.
            self._watchdog.arm(pgid, time.monotonic() + renew_deadline_s(MIN_INTERVAL_S))

    def _arm(self, held: HeldClaim, pgid: int, until: float) -> None:
        """Hand the watchdog ``until`` for this claim's connector, and remember it was handed."""
        assert self._watchdog is not None
        self._watchdog.arm(pgid, until)
        held.terms = [*held.terms[1 - TERMS_KEPT :], Term(until=until, given_at=time.monotonic())]

    def _renewed(self, held: HeldClaim, due: float, sent: float, reply: FenceReply) -> None:
        """A renewal sent at ``sent`` (monotonic) for the slot ``due`` was taken by Redis."""
        req = held.request
        assert req is not None
        answered = time.monotonic()
        if held.facts is not None:
            # Counted renewal: the failsafe's rounds stop; the promises run out on their own.
            held.facts = fs.prune(replace(held.facts, renewed_at=boottime()), boottime(), held.timing)
            held.failed_since = None
            held.last_record = reply.raw
            self._holding(held, False)
        held.last_ok = sent
        held.last_renewed = datetime.now(UTC)
        held.renewals += 1
        valid_until = held.last_ok + renew_deadline_s(req.heartbeat_interval_s)
        self._connectors.record("valid_until", req.workflow_id, until=valid_until, epoch=req.claim.epoch)
        connector = self._connectors.get(req.workflow_id)
        pgid = connector.process_group() if connector is not None else None
        if pgid is not None and self._watchdog is not None:
            self._arm(held, pgid, valid_until)
        metrics.observe_renewal(answered - due)
        if answered - due > req.heartbeat_interval_s / 2:
            log.info("renewal of %s was %.2fs late", req.workflow_id, answered - due)

    async def _end(self, held: HeldClaim, why: ClaimLost) -> None:
        """Stop the connector first, then remember why: the order is the safety property."""
        req = held.request
        assert req is not None
        # The claim is gone (lost, missing or past its renew deadline): no grace for the connector.
        reason = "renew deadline passed" if isinstance(why, RenewDeadline) else "claim lost"
        connector = self._connectors.get(req.workflow_id)
        pgid = connector.process_group() if connector is not None else None
        if connector is not None and _demoted(connector):
            # A handback demoted its connector to a warm standby before releasing the key (which the
            # target may have claimed already): it no longer acts, so it keeps running, warm. Only a
            # connector that acts, or may be about to (an activation in flight), must stop here.
            stopped = False
        else:
            stopped = await self._connectors.stop(req.workflow_id, reason, at_once=True)
        if stopped:
            held.stopped_at = datetime.now(UTC)
        if pgid is not None and self._watchdog is not None:
            self._watchdog.disarm(pgid)
        self._holding(held, False, why=str(why))
        held.ended = why
        held.beat.pulse()
        if isinstance(why, ClaimMissing) and not stopped:
            # The usual end of a graceful stop, shutdown or handoff: the workflow stopped the
            # connector and released the key; this loop merely noticed.
            log.info("%s: claim at epoch %s released", req.workflow_id, req.claim.epoch)
            why.reported = True  # this line is the event; the lease's edge need not say it again
        else:
            log.warning("%s: %s", req.workflow_id, why)

    @staticmethod
    def _deadline_message(deadline: float, ttl: int) -> str:
        return (
            f"could not renew the claim for {deadline:.1f}s (renew deadline; TTL {ttl / 1000:.1f}s): "
            "connector stopped"
        )

    # --- the failsafe: a holder that cannot renew ----------------------------------------------

    def _renewal_failed(self, held: HeldClaim) -> None:
        if held.facts is not None and held.failed_since is None:
            held.failed_since = boottime()

    def _reestablishes(self, held: HeldClaim) -> bool:
        """Redis answers again and the key is absent (``failsafe.when_redis_answers``): whether the
        same record is written back — failsafe on and the connector acting — instead of stopping."""
        req = held.request
        if req is None or held.facts is None or held.last_record is None:
            return False
        connector = self._connectors.get(req.workflow_id)
        acting = connector is not None and not _demoted(connector)
        action = fs.when_redis_answers(fs.KeyAnswer.ABSENT, acting=acting, failsafe=True)
        return action is fs.KeyAction.REESTABLISH

    async def _key_absent(
        self, held: HeldClaim, patch: dict[str, object], ttl: int, bound: float
    ) -> FenceReply | None:
        """Write the holder's record back into its absent key, same instanceId and epoch
        (invariant 7). None: Redis did not take it (a failed renewal)."""
        req = held.request
        assert req is not None and held.last_record is not None
        record = {**json.loads(held.last_record), **patch}
        try:
            async with asyncio.timeout(bound):
                reply = await self._store.reestablish(req.exchange_id, record, ttl)
        except Exception as exc:  # noqa: BLE001 - not written: as a failed renewal
            why = str(exc) or "Redis too slow"
            log.warning("%s: could not re-establish its key: %s", req.workflow_id, why)
            return None
        if reply.outcome == "ok":
            log.info(
                "%s: Redis answers again without its key: re-established at epoch %s",
                req.workflow_id,
                req.claim.epoch,
            )
        return reply

    async def _rounds(self, held: HeldClaim) -> None:
        """Ask for promises while renewals fail (``failsafe.next_round_at``): the first round as
        soon as a renewal failed or went a quarter interval overdue, then every half interval on a
        fixed schedule; a round never waits for an earlier one."""
        req = held.request
        assert req is not None and held.facts is not None
        timing = held.timing
        overdue = held.interval_s + failsafe_probe_s(held.interval_s)
        asking: set[asyncio.Task[None]] = set()
        try:
            while held.ended is None:
                now = boottime()
                facts = held.facts
                failed = held.failed_since
                if failed is None and now >= facts.renewed_at + overdue:
                    failed = facts.renewed_at + overdue
                at = fs.next_round_at(failed_since=failed, last_round_at=held.last_round_at, timing=timing)
                if at is None:
                    await asyncio.sleep(max(facts.renewed_at + overdue - now, 0.0) + LAPSE_LOOK_S)
                    continue
                if at > now:
                    await asyncio.sleep(at - now)
                    continue
                held.last_round_at = now
                task = asyncio.create_task(self._round(held, now), name=f"round {req.workflow_id}")
                asking.add(task)
                task.add_done_callback(asking.discard)
        finally:
            for task in list(asking):
                task.cancel()

    async def _round(self, held: HeldClaim, asked_at: float) -> None:
        """One round: read the roster (after ``asked_at``), ask every other member, count each
        grant from ``asked_at``. Bounded by how long its promises could count at all."""
        req = held.request
        assert req is not None and req.exchange is not None and self._failsafe is not None
        calls = self._failsafe
        counted = held.timing.counted_s
        try:
            async with asyncio.timeout(counted):
                roster = await calls.read(req.exchange)
        except Exception as exc:  # noqa: BLE001 - no roster, no round: the horizon does not move
            log.warning("%s: failsafe round without a roster: %s", req.workflow_id, str(exc) or "no answer")
            return
        names = {m.workflow_id for m in roster.members} if roster is not None else set()
        if req.workflow_id not in names:
            # A roster that does not hold its own holder is not this exchange's roster (restarted
            # empty, say): it cannot vouch that nobody else could claim.
            log.warning("%s: not in the roster of %s; no failsafe round", req.workflow_id, req.exchange)
            return
        members = frozenset(names - {req.workflow_id})
        assert held.facts is not None
        held.facts = fs.start_round(held.facts, asked_at, members)
        question = PromiseRequest(
            exchange_id=req.exchange_id,
            exchange=req.exchange,
            holder_instance_id=req.claim.instance_id,
            epoch=req.claim.epoch,
            holder_workflow_id=req.workflow_id,
        )

        async def ask(member: str) -> None:
            try:
                async with asyncio.timeout(max(0.0, asked_at + counted - boottime())):
                    answer = await calls.ask(member, question)
            except Exception as exc:  # noqa: BLE001 - no answer: no promise from it this round
                held.refusals[member] = f"no answer: {exc or 'timed out'}"
                return
            if not answer.granted:
                held.refusals[member] = answer.reason
            elif held.facts is not None and held.ended is None:
                held.refusals.pop(member, None)
                held.facts = fs.record_grant(held.facts, member, asked_at)
            self._extended(held)

        await asyncio.gather(*(ask(m) for m in sorted(members)))
        self._extended(held)

    def _extended(self, held: HeldClaim) -> None:
        """What the promises counted so far allow: the watchdog and the journal learn the horizon,
        the status and the metric whether the holder is holding. A stopped claim is never revived
        (invariant 5): this runs only while its loop lives."""
        req = held.request
        if held.ended is not None or held.facts is None or req is None:
            return
        now = boottime()
        held.facts = fs.prune(held.facts, now, held.timing)
        verdict = fs.holder_verdict(now, held.facts, held.timing, failsafe=True)
        until = held.until()
        # From the moment promises reach past the renew deadline (before it passes: a watchdog
        # armed only with the deadline would kill the connector there).
        if until > held.last_ok + renew_deadline_s(held.interval_s):
            self._connectors.record("valid_until", req.workflow_id, until=until, epoch=req.claim.epoch)
            connector = self._connectors.get(req.workflow_id)
            pgid = connector.process_group() if connector is not None else None
            if pgid is not None and self._watchdog is not None:
                self._arm(held, pgid, until)
        self._holding(held, verdict.holding, verdict)

    def _holding(
        self,
        held: HeldClaim,
        holding: bool,
        verdict: fs.HolderVerdict | None = None,
        why: str = "Redis answers again",
    ) -> None:
        """One line, the metric and an event when holding on promises starts or ends."""
        req = held.request
        if req is None or holding == held.holding:
            return
        held.holding = holding
        metrics.failsafe_holding(req.exchange or str(req.exchange_id), holding)
        if holding and verdict is not None:
            detail = (
                f"holding through a Redis outage, promises from {verdict.promised} of "
                f"{verdict.members} standbys"
            )
            log.warning("%s: failsafe: %s", req.workflow_id, detail)
        else:
            detail = f"no longer holding on promises: {why}"
            log.info("%s: failsafe: %s", req.workflow_id, detail)
        self._failsafe_event(
            held, EventKind.FAILSAFE_HOLDING if holding else EventKind.FAILSAFE_ENDED, detail
        )

    def _failsafe_event(self, held: HeldClaim, kind: EventKind, detail: str) -> None:
        """The event of a failsafe's start or end, written once Redis takes it (Redis is what is
        down when holding starts): tried again every interval, in order, each exactly once (the
        stream write is idempotent by eventId)."""
        req = held.request
        if self._record_event is None or req is None or held.last_record is None:
            return
        try:
            doc = InstanceStatus.model_validate_json(held.last_record)
        except ValueError:
            return
        event = NetworkEvent(
            event=kind,
            event_id=str(uuid.uuid4()),
            timestamp=datetime.now(UTC),
            exchange_id=doc.exchange_id,
            exchange_name=doc.exchange_name,
            hostname=doc.hostname,
            ip=doc.ip_address,
            instance_id=req.claim.instance_id,
            epoch=req.claim.epoch,
            admin_email=doc.admin_email,
            state=doc.connection_state,
            detail=detail,
        )
        before = held.events
        held.events = asyncio.create_task(
            self._record_in_turn(event, before, held.interval_s), name=f"event {event.event_id}"
        )
        self._events.add(held.events)
        held.events.add_done_callback(self._events.discard)

    async def _record_in_turn(
        self, event: NetworkEvent, before: asyncio.Task[None] | None, every_s: float
    ) -> None:
        assert self._record_event is not None
        if before is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await before
        give_up = time.monotonic() + FAILSAFE_EVENT_GIVE_UP_S
        while True:
            try:
                await self._record_event(event)
                return
            except Exception as exc:  # noqa: BLE001 - Redis still away: try again next interval
                if time.monotonic() > give_up:
                    log.warning(
                        "%s event of %s not recorded: %s", event.event.value, event.exchange_name, exc
                    )
                    return
            await asyncio.sleep(every_s)

    def failsafe_state(self, workflow_id: str) -> fs.HolderVerdict | None:
        """The holder's failsafe now (None: no such claim, or its failsafe is off)."""
        held = self.claims.get(workflow_id)
        if held is None or held.facts is None or held.ended is not None:
            return None
        return fs.holder_verdict(boottime(), held.facts, held.timing, failsafe=True)

    # --- the failsafe: what this host promised -------------------------------------------------

    def failsafe_bound(self, exchange_id: int, interval_s: float) -> float:
        """Until when (CLOCK_MONOTONIC) this host may not claim ``exchange_id`` with its failsafe on:
        the latest promise or enrolment, and never before its keeper's start plus a promise."""
        timing = fs.FailsafeTiming.of(interval_s)
        started = fs.bound_until(fs.NEVER, promised_at=self._started, timing=timing)
        return max(started, self._bounds.get(exchange_id, fs.NEVER))

    def failsafe_refusal(self, exchange_id: int, interval_s: float) -> str | None:
        """Why a claim of ``exchange_id`` (failsafe on) may not run on this host now, or None."""
        return fs.claim_refusal(time.monotonic(), self.failsafe_bound(exchange_id, interval_s))

    def bind(self, exchange_id: int, interval_s: float) -> None:
        """Bound from now for a promise's length (a grant, or an enrolment): promises only extend."""
        now = time.monotonic()
        self._bounds = {ex: until for ex, until in self._bounds.items() if until > now}
        self._bounds[exchange_id] = fs.bound_until(
            self._bounds.get(exchange_id, fs.NEVER), promised_at=now, timing=fs.FailsafeTiming.of(interval_s)
        )

    async def grant(self, req: GrantRequest) -> PromiseAnswer:
        """A holder that cannot renew asks this host's instance not to claim: probe Redis now
        (bounded by a quarter interval), decide (``failsafe.grant_verdict``) and, on a grant,
        record the bound *before* answering."""
        try:
            async with asyncio.timeout(failsafe_probe_s(req.heartbeat_interval_s)):
                await self._store.holder(req.exchange_id)
        except Exception:  # noqa: BLE001 - any failure to read the key is Redis not answering here
            answers = False
        else:
            answers = True
        holds = req.holds_claim or any(
            h.ended is None and h.request is not None and h.request.exchange_id == req.exchange_id
            for h in self.claims.values()
        )
        watched = self.standbys.get(req.workflow_id)
        seen = max(req.highest_epoch_seen, watched.last_epoch if watched is not None else 0)
        verdict = fs.grant_verdict(
            failsafe=req.failsafe,
            holds_claim=holds,
            redis_answers=answers,
            asker_epoch=req.asker_epoch,
            highest_epoch_seen=seen,
        )
        if verdict.grant:
            self.bind(req.exchange_id, req.heartbeat_interval_s)
        said, now = f"{'granted' if verdict.grant else 'refused'}: {verdict.reason}", time.monotonic()
        before, at = self._answered.get(req.workflow_id, ("", fs.NEVER))
        self._answered[req.workflow_id] = (said, now)
        if said != before or now - at > fs.FailsafeTiming.of(req.heartbeat_interval_s).promise_s:
            log.info("%s: failsafe promise for epoch %s %s", req.workflow_id, req.asker_epoch, said)
        return PromiseAnswer(granted=verdict.grant, reason=verdict.reason)

    # --- standbys ------------------------------------------------------------------------------

    def watch(self, req: StandbyLeaseRequest) -> WatchedStandby:
        """The loop renewing this standby's record: the running one (re-attach) or a new one."""
        workflow_id = req.record.workflow_id
        watched = self.standbys.get(workflow_id)
        if (
            watched is not None
            and watched.ended is None
            and watched.request is not None
            and watched.request.record.instance_id == req.record.instance_id
        ):
            return watched
        if watched is not None:
            self._cancel(watched)
        watched = WatchedStandby(workflow_id=workflow_id, interval_s=req.heartbeat_interval_s, request=req)
        watched.task = asyncio.create_task(self._watch(watched), name=f"standby {workflow_id}")
        self.standbys[workflow_id] = watched
        return watched

    def stop_watching(self, watched: WatchedStandby) -> None:
        """The workflow itself ended this watch (promotion, shutdown, continue-as-new).

        Unless a newer watch activity has attached to the same loop meanwhile: a cancellation is
        heard only at the old activity's next heartbeat, and a standby that lost its promotion race
        starts its next watch at once. Stopping the loop under that one would leave it heartbeating
        over renewals that no longer happen — the record lapses and no vacancy is ever seen.
        """
        if watched.attached > 0:
            log.info("%s: standby watch handed over to a newer activity", watched.workflow_id)
            return
        if self.standbys.get(watched.workflow_id) is watched:
            del self.standbys[watched.workflow_id]
        self._cancel(watched)

    async def _watch(self, watched: WatchedStandby) -> None:
        req = watched.request
        assert req is not None
        record = req.record
        interval = req.heartbeat_interval_s
        ttl = ttl_ms(interval)
        due = time.monotonic()
        first = True
        steer_from: float | None = None
        while True:
            try:
                # The host's release, for the views and the standby ranking (what runs here, not
                # what the workflow that wrote the record first ran on).
                update: dict[str, object] = {
                    "last_heartbeat": iso(datetime.now(UTC)),
                    "version": release.version(),
                }
                if record.warm:  # live: a warm child that died or is still warming reads not ready
                    connector = self._connectors.get(record.workflow_id)
                    ready = bool(connector is not None and connector.warm_ready)
                    update["warm_ready"] = ready
                    # Why it is not ready, if its warm-up failed here: the status shows it.
                    failed = None if ready else self._connectors.warm_failure(record.workflow_id)
                    update["warm_error"] = failed.reason if failed else None
                    update["warm_retry_at"] = iso(failed.retry_at) if failed and failed.retry_at else None
                    if watched.warm_seen and not ready:
                        log.warning("standby %s: its warm connector stopped", record.workflow_id)
                        watched.warm_lost = True  # the beat below wakes the watch activity
                    watched.warm_seen = ready
                renewed = record.model_copy(update=update)
                present, holder, paused_ms, handoff = await asyncio.wait_for(
                    self._store.renew_standby(
                        record.exchange_id,
                        record.instance_id,
                        renewed.wire(),
                        ttl,
                        record.priority,
                        create=first,
                    ),
                    timeout=interval / 2,
                )
            except (ServiceUnavailable, TimeoutError) as exc:
                watched.last_failure = time.monotonic()
                log.warning("standby %s: %s", record.workflow_id, str(exc) or "Redis too slow")
            except Exception as exc:  # noqa: BLE001 - a refused renewal is a failed one (as for claims)
                watched.last_failure = time.monotonic()
                log.error("standby %s: renewal refused: %s: %s", record.workflow_id, type(exc).__name__, exc)
            else:
                first = False
                if not present:
                    watched.ended = StandbyGone(
                        f"the standby record of {record.workflow_id} is gone (dropped, or expired)"
                    )
                    watched.beat.pulse()
                    return
                self._saw_pause(watched, paused_ms)
                self._saw_handoff(watched, handoff.to_host if handoff is not None else None)
                self._saw(watched, holder)
                self._tell_if_late(watched)
                # Only this beat's look steers the next (the lapse look below comes off-phase).
                steer_from = watched.holder_renewed_ago
            watched.beat.pulse()
            if await self._orphaned(watched):
                # A warm standby's connector has nobody left to promote it.
                await self._connectors.stop(record.workflow_id, "its standby's workflow has ended")
                with contextlib.suppress(ServiceUnavailable):
                    await self._store.drop_standby(record.exchange_id, record.instance_id)
                watched.ended = StandbyGone(f"the instance workflow {record.workflow_id} has ended")
                watched.beat.pulse()
                return
            due += standby_step_s(steer_from, interval)
            steer_from = None
            await self._look_until(watched, due)

    @staticmethod
    def _saw_pause(watched: WatchedStandby, paused_ms: int) -> None:
        """What the pause key's PTTL says: paused until when, on this process's clock."""
        was = watched.paused
        left = paused_for_ms(paused_ms)
        watched.paused_until = None if left is None else time.monotonic() + left / 1000
        if watched.paused != was:
            req = watched.request
            exchange = req.record.exchange_name if req is not None else watched.workflow_id
            if watched.paused:
                log.info(
                    "standby %s: %s is paused; no claim-over until it resumes", watched.workflow_id, exchange
                )
            else:
                log.info(
                    "standby %s: %s resumed; watching for a vacancy again", watched.workflow_id, exchange
                )

    @staticmethod
    def _saw_handoff(watched: WatchedStandby, to_host: str | None) -> None:
        """What the handoff key says: the exchange is being handed to ``to_host`` (None: no handoff)."""
        was, watched.handed_to = watched.handed_to, to_host
        if to_host != was and watched.handed_elsewhere and watched.request is not None:
            log.info(
                "standby %s: %s is being handed over to %s; leaving the vacancy to it",
                watched.workflow_id,
                watched.request.record.exchange_name,
                to_host,
            )

    def note_pause(self, workflow_id: str, paused_ms: float) -> None:
        """A claim of this standby was refused for a pause its watch had not read yet: honour it now."""
        watched = self.standbys.get(workflow_id)
        if watched is not None:
            watched.paused_until = time.monotonic() + paused_ms / 1000

    def _saw(self, watched: WatchedStandby, holder: HolderEpoch) -> None:
        """What a look at the status key tells the watch. Only a key unrenewed past its holder's own
        renew deadline plus the margin, seen outside a Redis outage, is claimed over (invariants 1
        and 4 of :mod:`perseus.core.decisions`)."""
        watched.vacant = not holder.held
        watched.holder_renewed_ago = None
        if holder.held:
            every = holder.interval_s or watched.interval_s
            if holder.pttl_ms is not None and every == watched.interval_s:
                watched.holder_renewed_ago = renewed_ago_s(holder.pttl_ms, every)
            deadline = holder.renew_deadline_s
            past = holder.pttl_ms is not None and past_renew_deadline(holder.pttl_ms, every, deadline)
            watched.holder_past_deadline = past
            watched.holder_silent = holder.interval_s is not None and takes_over_lapsed(
                past_deadline=past, after_outage=watched.after_outage
            )
            watched.lapse_at = (
                time.monotonic() + lapses_in_s(holder.pttl_ms, every, deadline)
                if holder.pttl_ms is not None and not past
                else None
            )
        else:
            watched.holder_silent, watched.lapse_at = False, None
        if holder.epoch is not None:
            watched.last_epoch = max(watched.last_epoch, holder.epoch)

    def _tell_if_late(self, watched: WatchedStandby) -> None:
        """Give the standby's workflow a heads-up, once, when its holder has missed a renewal — and
        nothing holds its race back (a pause, a handoff to another host, Redis just away: every
        holder reads late then). A task now costs nothing; after the claim-over line, a run cached on
        the dead holder's worker would first wait out that worker's sticky queue and replay."""
        if not watched.holder_overdue:
            watched.told_late = False
            return
        quiet = watched.paused or watched.handed_elsewhere or watched.after_outage
        if watched.told_late or quiet or self._heads_up is None:
            return
        watched.told_late = True
        ago = watched.holder_renewed_ago or 0.0
        log.info(
            "standby %s: the holder (epoch %s) has not renewed for %.1fs: heads-up to its workflow",
            watched.workflow_id,
            watched.last_epoch,
            ago,
        )
        reason = f"the holder (epoch {watched.last_epoch}) has not renewed for {ago:.1f}s"
        task = asyncio.create_task(self._send_heads_up(watched.workflow_id, reason), name="heads-up")
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def _send_heads_up(self, workflow_id: str, reason: str) -> None:
        assert self._heads_up is not None
        try:
            async with asyncio.timeout(HEADS_UP_TIMEOUT_S):
                await self._heads_up(workflow_id, reason)
        except Exception as exc:  # noqa: BLE001 - a heads-up is an optimisation: the watch goes on
            log.info("standby %s: heads-up not delivered: %s", workflow_id, str(exc) or type(exc).__name__)

    async def _look_until(self, watched: WatchedStandby, due: float) -> None:
        """Sleep until the next renewal is ``due``, but look at the holder's key once more at the
        moment it would pass its renew deadline plus the margin, if that comes first: a dead holder
        is then seen at once, not up to an interval later (at a 1 s interval, a third of the TTL)."""
        lapse_at = watched.lapse_at
        if lapse_at is not None and lapse_at + LAPSE_LOOK_S < due:
            await asyncio.sleep(max(0.0, lapse_at + LAPSE_LOOK_S - time.monotonic()))
            req = watched.request
            assert req is not None
            try:
                async with asyncio.timeout(watched.interval_s / 2):
                    holder = await self._store.holder(req.record.exchange_id)
            except Exception as exc:  # noqa: BLE001 - a failed look is a failed renewal (outage)
                watched.last_failure = time.monotonic()
                log.warning(
                    "standby %s: could not look at the holder: %s", watched.workflow_id, str(exc) or "timeout"
                )
            else:
                self._saw(watched, holder)
                if watched.holder_silent:
                    log.info(
                        "standby %s: the holder (epoch %s) is past its renew deadline",
                        watched.workflow_id,
                        holder.epoch,
                    )
                    watched.beat.pulse()
        await asyncio.sleep(max(0.0, due - time.monotonic()))

    # --- shared --------------------------------------------------------------------------------

    async def _orphaned(self, loop: _Loop) -> bool:
        """True only once Temporal has said for certain that the loop's workflow has closed.

        The question runs in a task of its own, bounded by an interval: a Temporal that is frozen or
        unreachable (the SDK retries such calls) must never hold up a renewal.
        """
        if loop.workflow_closed:
            return True
        if loop.detached_since is None or self._workflow_closed is None:
            return False
        now = time.monotonic()
        grace = max(DETACHED_INTERVALS * loop.interval_s, DETACHED_FLOOR_S)
        if now - loop.detached_since < grace or now - loop.last_orphan_check < loop.interval_s:
            return False
        if loop.orphan_check is None or loop.orphan_check.done():
            loop.last_orphan_check = now
            loop.orphan_check = asyncio.create_task(
                self._ask_closed(loop), name=f"closed? {loop.workflow_id}"
            )
        return False

    async def _ask_closed(self, loop: _Loop) -> None:
        assert self._workflow_closed is not None
        try:
            closed = await asyncio.wait_for(self._workflow_closed(loop.workflow_id), loop.interval_s)
        except TimeoutError:
            return  # no answer: keep renewing (the outage this module rides through)
        if closed and loop.attached == 0:
            loop.workflow_closed = True
            log.warning("%s: its workflow has closed; this host stops renewing for it", loop.workflow_id)

    def _cancel(self, loop: _Loop) -> None:
        rounds = loop.rounds if isinstance(loop, HeldClaim) else None
        for task in (loop.task, loop.orphan_check, rounds):
            if task is not None and not task.done():
                self._cancel_for_sure(task)

    def _cancel_for_sure(self, task: asyncio.Task[None]) -> None:
        """Cancel ``task``, and cancel it again until it has ended: redis-py can swallow a
        cancellation that arrives just as its own read timeout fires, and a loop that missed one
        would go on renewing a claim its workflow has let go of."""
        task.cancel()

        async def again() -> None:
            while not task.done():
                await asyncio.sleep(RECANCEL_S)
                task.cancel()

        repeat = asyncio.get_running_loop().create_task(again(), name=f"cancel {task.get_name()}")
        self._cancelling.add(repeat)
        repeat.add_done_callback(self._cancelling.discard)

    def renewal_ages(self) -> list[tuple[str, float, float]]:
        """Each live claim's workflow id, seconds since its last successful renewal, and interval:
        what the worker's ``/readyz`` judges (a stalled loop and a Redis that refuses look alike)."""
        now = time.monotonic()
        return [(w, now - h.last_ok, h.interval_s) for w, h in self.claims.items() if h.ended is None]

    def held(self) -> tuple[int, int]:
        """How many live claims and standby watches this host's keeper holds now."""
        claims = sum(1 for h in self.claims.values() if h.ended is None)
        return claims, sum(1 for s in self.standbys.values() if s.ended is None)

    def workflow_ids(self) -> set[str]:
        """Workflows that hold a live claim or standby record on this host."""
        alive = {w for w, h in self.claims.items() if h.ended is None}
        return alive | {w for w, s in self.standbys.items() if s.ended is None}

    async def close(self) -> None:
        """Stop every loop (the worker is exiting; its connectors are stopped by the caller)."""
        loops: list[_Loop] = [*self.claims.values(), *self.standbys.values()]
        for loop in loops:
            self._cancel(loop)
        tasks = [t for loop in loops for t in (loop.task, loop.orphan_check) if t is not None]
        tasks += [h.rounds for h in self.claims.values() if h.rounds is not None]
        for held in self.claims.values():  # a failsafe event still waiting for Redis: given up
            if held.events is not None and not held.events.done():
                held.events.cancel()
                tasks.append(held.events)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._grid.close()
        if self._cancelling:
            await asyncio.gather(*self._cancelling, return_exceptions=True)
        self.claims.clear()
        self.standbys.clear()


def _demoted(connector: Connector) -> bool:
    """A warm standby's connector (never activated, or demoted by a handback): running, not acting."""
    return runs_without_claim(
        role=connector.role, connected=connector.connected, activating=connector.activating
    )


def _fault_error(fault: ConnectorFailure) -> ConnectorFailed:
    """The error a lease reports for a failed connector: its type names what the workflow must do."""
    if fault.kind == "unhealthy" and fault.policy == "failover":
        return ConnectorFailover(fault.reason)
    if fault.kind == "unhealthy":
        return ConnectorUnhealthy(fault.reason)
    return ConnectorFailed(fault.reason)


def _lost_message(reply: FenceReply) -> str:
    if reply.outcome == "missing":
        return "the status key is gone (expired or deleted): claim lost"
    holder = reply.record
    if holder is None:
        return "the status key holds an unreadable record: claim lost"
    return (
        f"the claim is now held by {holder.hostname} (epoch {holder.epoch}, "
        f"instance {holder.instance_id}): claim lost"
    )
