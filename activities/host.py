"""Activities that must run on the instance's own host: identity, the lease loop, the connector.

They are registered only on the host's task queue (``perseus-host-{host}``), so a host whose worker
is gone shows up as a ``schedule_to_start`` timeout rather than as work done somewhere else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio import activity

from activities.edge import edge
from activities.registry import take_claim
from perseus import version as release
from perseus.connectors.allow import ExecAllowList
from perseus.connectors.base import ConnectorHost
from perseus.connectors.factory import ConnectorContext, build_connector, cannot_start
from perseus.core.decisions import heartbeat_beats_within, heartbeat_due, warm_retry_delay
from perseus.core.lifecycle import Role
from perseus.errors import (
    ClaimLost,
    ConfigError,
    ConnectorError,
    ConnectorGone,
    ExecRefused,
    LeaseDetached,
    PerseusError,
)
from perseus.host.keeper import LeaseKeeper
from perseus.host.watchdog import boottime
from perseus.models import (
    Claim,
    ClaimResult,
    ConnectorPreflight,
    ConnectorReport,
    ConnectorRequest,
    ConnectorSpec,
    EnrolRequest,
    FailsafeHolding,
    GrantRequest,
    HostClaimRequest,
    Identity,
    IdentityRequest,
    LeaseEnd,
    LeaseOutcome,
    LeaseRequest,
    PromiseAnswer,
    RosterAnswer,
    RosterMember,
    StandbyLeaseRequest,
    StandbyOutcome,
)
from perseus.timing import (
    CONNECTOR_HEARTBEAT_EVERY_S,
    FAILSAFE_CLAIM_WAIT_S,
    IP_ANSWER_REUSE_S,
    IP_NO_ANSWER_REUSE_S,
    QUIET_INTERVALS,
    renew_deadline_s,
)

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from perseus.store.db import Catalog
    from perseus.store.redis_store import RedisStore

log = logging.getLogger(__name__)
T = TypeVar("T")


def _with_stop_time(error: PerseusError, stopped_at: datetime | None) -> PerseusError:
    """The error a lease reports, carrying when its connector stopped (transitions are stamped with it)."""
    if stopped_at is not None:
        error.details = LeaseEnd(stopped_at=stopped_at)
    return error


def detached_unless_requested() -> BaseException:
    """What a lease activity raises when it is cancelled: the cancellation itself when its workflow
    asked for it, else :class:`LeaseDetached` — the worker is shutting down, the workflow has closed,
    or Temporal was unreachable for the heartbeat timeout. The renewals go on in the keeper either
    way; this keeps the SDK from logging an expected event as a failure with a traceback."""
    details = activity.cancellation_details()
    if details is None or details.cancel_requested:
        return asyncio.CancelledError()
    if details.worker_shutdown:
        why = "the worker is shutting down"
    elif details.not_found:
        why = "its workflow has closed"
    elif details.timed_out:
        why = "Temporal was unreachable for the heartbeat timeout"
    else:
        why = "cancelled by Temporal"
    return LeaseDetached(f"stopped watching the renewals ({why}); they go on in the keeper")


def parse_ip_answer(body: str) -> str | None:
    """An IP-lookup service answers plain text or JSON ``{"ip": ...}``; anything else is no answer."""
    text = body.strip()
    if text.startswith("{"):
        try:
            text = str(json.loads(text).get("ip", ""))
        except (ValueError, AttributeError):
            return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


async def with_heartbeats(work: Awaitable[T], every_s: float = CONNECTOR_HEARTBEAT_EVERY_S) -> T:
    """Run a connector step while heartbeating, so a host that stops (paused, partitioned) is seen
    by the heartbeat timeout within seconds, not after the step's whole start-to-close timeout."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every_s)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        if not task.done():
            task.cancel()


class Cadence:
    """When a lease or a standby's watch heartbeats to Temporal: at the first wake, then at every
    k-th renewal (``decisions.heartbeat_beats``: at least 5 s apart), k sized to the heartbeat
    timeout the activity was scheduled with (``decisions.heartbeat_beats_within``), so that a
    workflow of an older release, which expects a heartbeat per renewal, still gets one.

    What the workflow must learn at once never waits for the cadence: a lost claim, a failed
    connector, a vacancy or a silent holder end the activity, and its completion is immediate.
    """

    def __init__(self, interval_s: float) -> None:
        timeout = activity.info().heartbeat_timeout
        self.interval_s = interval_s
        self.beats = heartbeat_beats_within(interval_s, timeout.total_seconds() if timeout else None)
        self._last = float("-inf")
        #: The failsafe's state as last sent (its heartbeat details): a change goes out at once.
        self._failsafe: tuple[bool, int, int] | None = None

    def beat(self, failsafe: FailsafeHolding | None = None) -> None:
        """Heartbeat if this wake is the one due — or, failsafe on, if the holder's failsafe state
        changed (holding or not, promises from how many of how many): the status views read it from
        the lease's heartbeat details while Redis cannot carry it (docs/design.md, "Failsafe")."""
        now = time.monotonic()
        state = (failsafe.holding, failsafe.promised, failsafe.members) if failsafe is not None else None
        if heartbeat_due(now - self._last, self.interval_s, self.beats) or state != self._failsafe:
            self._failsafe = state
            if failsafe is None:
                activity.heartbeat()
            else:
                activity.heartbeat(failsafe)
            self._last = now


def _ticket() -> float:
    """When the running activity's attempt was scheduled: the newest is the workflow's current one
    (``LeaseKeeper.attached``)."""
    return activity.info().current_attempt_scheduled_time.timestamp()


class HostActivities:
    """Everything host-bound. One instance per worker process, owning this host's connectors."""

    def __init__(
        self,
        *,
        hostname: str,
        store: RedisStore,
        catalog: Catalog,
        http: httpx.AsyncClient,
        ip_services: list[str],
        ip_timeout_s: float,
        connectors: ConnectorHost,
        keeper: LeaseKeeper,
        connector_output: Path | None = None,
        exec_allow: ExecAllowList | None = None,
        enrol: Callable[[str, RosterMember], Awaitable[RosterAnswer]] | None = None,
    ) -> None:
        self.hostname = hostname
        self._store = store
        self._catalog = catalog
        self._http = http
        self._ip_services = ip_services
        self._ip_timeout_s = ip_timeout_s
        self.connectors = connectors
        self.keeper = keeper
        self._ip_answer: tuple[float, str | None] | None = None
        self._ip_lookup: asyncio.Future[str | None] | None = None
        #: Where process connectors keep their children's output (None: in memory only).
        self.connector_output = connector_output
        #: The commands this host may run (None: any, as before the allow-list existed).
        self.exec_allow = exec_allow
        #: How an instance enrols in its exchange's failsafe roster (the worker's Temporal client).
        self._enrol = enrol

    # --- identity ------------------------------------------------------------------------------

    @activity.defn(name="detect_identity")
    @edge
    async def detect_identity(self, req: IdentityRequest) -> Identity:
        """Hostname and public IP. The IP services are tried in order, each with a timeout; the
        answer falls through to None — identity never fails or blocks registration."""
        return Identity(hostname=self.hostname, ip_address=await self.public_ip())

    async def public_ip(self) -> str | None:
        """This host's public IP: a recent answer is reused, and concurrent registrations share one
        lookup — enrolling a thousand instances asks the IP services once, not a thousand times."""
        if self._ip_answer is not None:
            at, ip = self._ip_answer
            # No answer is remembered briefly: a host without a route to the services must not make
            # every registration of an enrolment wait out the lookup budget.
            if time.monotonic() - at < (IP_ANSWER_REUSE_S if ip is not None else IP_NO_ANSWER_REUSE_S):
                return ip
        if self._ip_lookup is None or self._ip_lookup.done():
            self._ip_lookup = asyncio.ensure_future(self._look_up_ip())
        ip = await asyncio.shield(self._ip_lookup)
        self._ip_answer = (time.monotonic(), ip)
        return ip

    async def _look_up_ip(self) -> str | None:
        """The first usable answer of the IP services, tried in order within one total budget
        (``ip_timeout_s``, 2 s by default), each service given at most half of it."""
        import httpx

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ip_timeout_s
        for url in self._ip_services:
            left = deadline - loop.time()
            if left <= 0:
                log.info("IP lookup gave up: no answer within %.1fs", self._ip_timeout_s)
                return None
            try:
                # At most half the budget per service: one that hangs leaves time for the next.
                response = await self._http.get(url, timeout=min(left, self._ip_timeout_s / 2))
            except httpx.HTTPError as exc:
                log.info("IP service %s failed: %s", url, exc)
                continue
            if response.is_success and (ip := parse_ip_answer(response.text)):
                return ip
            log.info("IP service %s gave no usable answer (HTTP %s)", url, response.status_code)
        return None

    # --- the lease -----------------------------------------------------------------------------

    @activity.defn(name="claim_and_hold")
    @edge
    async def claim_and_hold(self, req: HostClaimRequest) -> ClaimResult:
        """Claim the exchange and hand the new claim to this host's keeper in the same step.

        The keeper renews it from this moment: with a short TTL and a busy Temporal, waiting for
        the lease activity to be dispatched could let the key lapse before its first renewal. A
        claim whose workflow never attaches is ended by the keeper once Temporal says the workflow
        has closed (its orphan check).
        """
        if req.failsafe and (refused := await self._failsafe_bound(req)) is not None:
            return refused
        # Stamped here, where the claim will be renewed: the record says which release holds it
        # and how long its connector may act after a renewal — the deadline this keeper enforces,
        # from which the standbys draw their claim-over line.
        deadline_ms = int(renew_deadline_s(req.heartbeat_interval_s) * 1000)
        stamp = {"perseus_version": release.version(), "renew_deadline_ms": deadline_ms}
        status = req.claim.status.model_copy(update=stamp)
        sent = time.monotonic()  # Redis takes the claim after this: its validity counts from here
        result = await take_claim(self._store, self._catalog, req.claim.model_copy(update={"status": status}))
        if result.paused_ms is not None:
            # This standby's watch may not have read the pause yet: it must not report the same
            # vacancy again (and again) until its next renewal does.
            self.keeper.note_pause(req.workflow_id, result.paused_ms)
        if result.claimed:
            self.keeper.hold(
                LeaseRequest(
                    workflow_id=req.workflow_id,
                    exchange_id=req.claim.status.exchange_id,
                    claim=Claim(instance_id=req.claim.status.instance_id, epoch=result.epoch),
                    heartbeat_interval_s=req.heartbeat_interval_s,
                    term_s=req.term_s,
                    failsafe=req.failsafe,
                    exchange=req.claim.status.exchange_name if req.failsafe else None,
                ),
                valid_from=sent,
            )
        return result

    async def _failsafe_bound(self, req: HostClaimRequest) -> ClaimResult | None:
        """The failsafe's check, in the claim step on the claimant's host (invariant 3): a claim is
        refused while this host is bound by a promise, its enrolment or its keeper's start — any
        claim, whatever Redis says. A bound about to end is waited out within the step."""
        exchange_id, interval = req.claim.status.exchange_id, req.heartbeat_interval_s
        left = self.keeper.failsafe_bound(exchange_id, interval) - time.monotonic()
        if 0 < left <= FAILSAFE_CLAIM_WAIT_S:
            await asyncio.sleep(left)
        why = self.keeper.failsafe_refusal(exchange_id, interval)
        if why is None:
            return None
        log.info("%s: claim refused: %s", req.workflow_id, why)
        return ClaimResult(claimed=False, epoch=req.claim.highest_epoch, message=why)

    @activity.defn(name="failsafe_enrol")
    @edge
    async def failsafe_enrol(self, req: EnrolRequest) -> RosterAnswer:
        """Enrol in the exchange's failsafe roster, before this instance watches or claims. With
        anyone else in the roster this host is bound from the answer on for a promise's length
        (invariant 3: the rounds whose roster was read before it did not ask it)."""
        if self._enrol is None:
            raise ConfigError("this worker cannot reach the failsafe roster (no Temporal client)")
        answer = await self._enrol(req.exchange, req.member)
        if any(m.workflow_id != req.member.workflow_id for m in answer.members):
            self.keeper.bind(req.exchange_id, req.heartbeat_interval_s)
        log.info(
            "%s: enrolled in the failsafe roster of %s (%d member(s))",
            req.member.workflow_id,
            req.exchange,
            len(answer.members),
        )
        return answer

    @activity.defn(name="failsafe_grant")
    @edge
    async def failsafe_grant(self, req: GrantRequest) -> PromiseAnswer:
        """A holder that cannot renew asks this host's instance for a promise not to claim."""
        return await self.keeper.grant(req)

    @activity.defn(name="hold_lease")
    @edge
    async def hold_lease(self, req: LeaseRequest) -> LeaseOutcome:
        """Attach to this host's renewals of ``req.claim`` for one term, heartbeating as they go.

        The renewals themselves run in the worker's :class:`~perseus.host.keeper.LeaseKeeper`, not in
        this activity: when the activity ends — its term, a cancellation of any cause, a worker that
        lost Temporal — they go on, and the next lease of the same claim attaches to them again.
        Losing the claim (fencing mismatch, key gone, no renewal within the renew deadline) or the
        connector failing is reported here as the matching error, after the keeper has already
        stopped the connector.
        """
        held = self.keeper.hold(req)
        interval = req.heartbeat_interval_s
        cadence = Cadence(interval)
        started = time.monotonic()
        try:
            ticket = _ticket()
            with self.keeper.attached(held, ticket):
                while True:
                    if held.ended is not None:
                        raise _with_stop_time(held.ended, held.stopped_at)
                    if held.report is not None and not held.superseded(ticket):
                        report, held.report = held.report, None
                        raise report
                    if time.monotonic() - started >= req.term_s:
                        return LeaseOutcome(renewals=held.renewals, last_renewed=held.last_renewed)
                    # Past the deadline this host no longer claims anything: stay silent, so that
                    # the workflow's heartbeat timeout sees what Redis sees.
                    if held.within_deadline():
                        cadence.beat(self._failsafe_holding(req.workflow_id))
                    # Woken by each renewal (so the server's last heartbeat is a renewal), or once
                    # the next renewal is overdue (a slow Redis must not make a live host look
                    # dead): see QUIET_INTERVALS.
                    await held.beat.wait(QUIET_INTERVALS * interval)
        except asyncio.CancelledError:
            raise detached_unless_requested() from None

    def _failsafe_holding(self, workflow_id: str) -> FailsafeHolding | None:
        verdict = self.keeper.failsafe_state(workflow_id)
        if verdict is None:
            return None
        return FailsafeHolding(
            holding=verdict.holding,
            horizon_s=max(0.0, verdict.until - boottime()),
            promised=verdict.promised,
            members=verdict.members,
        )

    @activity.defn(name="hold_standby")
    @edge
    async def hold_standby(self, req: StandbyLeaseRequest) -> StandbyOutcome:
        """Attach to this host's renewals of a standby record; return when the exchange falls vacant
        or its holder's key is seen unrenewed past the holder's renew deadline plus the margin.

        Like :meth:`hold_lease`, the renewals run in the keeper and outlive the activity, except
        when the workflow itself cancels the watch (promotion, shutdown, continue-as-new).
        """
        watched = self.keeper.watch(req)
        cadence = Cadence(req.heartbeat_interval_s)
        started = time.monotonic()
        try:
            ticket = _ticket()
            with self.keeper.attached(watched, ticket):
                while True:
                    if watched.ended is not None:
                        raise watched.ended
                    # A cancelled activity (it hears so at its next heartbeat) takes no report:
                    # the workflow's current watch would never hear it.
                    current = not watched.superseded(ticket)
                    if current and watched.wakes:  # vacant or silent, and not paused
                        silent, watched.holder_silent = watched.holder_silent, False  # reported once:
                        # a claim that lost the race must not find it again before the next look.
                        # The lapse too: the race may have gone to a holder this watch never saw,
                        # and a key Redis then loses must not read as the old holder's lapse (the
                        # chaos suite: a warm standby acted at once beside a live winner, 0.33 s).
                        lapsed, watched.holder_past_deadline = watched.holder_past_deadline, False
                        return StandbyOutcome(
                            vacant=True,
                            last_epoch=watched.last_epoch,
                            after_outage=watched.after_outage,
                            lapsed=lapsed,
                            holder_silent=silent and not watched.vacant,
                        )
                    if current and watched.warm_lost:
                        watched.warm_lost = False  # reported once: the workflow warms it up again
                        return StandbyOutcome(vacant=False, last_epoch=watched.last_epoch, warm_lost=True)
                    if time.monotonic() - started >= req.term_s:
                        return StandbyOutcome(vacant=False, last_epoch=watched.last_epoch)
                    cadence.beat()
                    await watched.beat.wait(QUIET_INTERVALS * req.heartbeat_interval_s)
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            if details is not None and details.cancel_requested:
                self.keeper.stop_watching(watched)
            raise detached_unless_requested() from None

    # --- the connector -------------------------------------------------------------------------

    @activity.defn(name="connector_prepare")
    @edge
    async def connector_prepare(self, req: ConnectorRequest) -> ConnectorReport:
        """Create the connector and load the exchange's active symbols."""
        await self.connectors.stop(req.workflow_id, "replaced by a new start")
        self._permitted(req.spec)
        standby = req.role is Role.STANDBY
        if not standby and req.claim is not None:
            self._refuse_ended(req, req.claim)  # a process connector's child may act once started
        context = ConnectorContext(
            workflow_id=req.workflow_id,
            exchange_id=req.exchange_id,
            exchange_name=req.exchange_name,
            # A warm standby's child is told its own standby id and epoch 0: it holds nothing yet.
            claim=req.claim if standby else req.claim or await self._claim_of(req),
            log_dir=self.connector_output,
            heartbeat_interval_s=req.heartbeat_interval_s,
            role=req.role,
        )
        connector = build_connector(req.exchange_name, req.spec, context)
        self.connectors.put(req.workflow_id, connector)
        symbols = await self._catalog.active_symbols(req.exchange_id)
        try:
            count = await self._warm_step(req, connector.prepare(symbols))
        finally:
            # The child may act from now on: under the claim's deadline. Not a warm standby's: it
            # acts only after ACTIVATE, and connector_activate arms the deadline before sending it.
            if not standby:
                self.keeper.guard(req.workflow_id)
        return ConnectorReport(symbol_count=count)

    async def _claim_of(self, req: ConnectorRequest) -> Claim | None:
        """The claim a process connector's child is told about, for workflows that do not send it
        in the request: read from the status key, trusted only if this workflow wrote it."""
        if req.spec.kind != "process":
            return None
        record = (await self._store.status(req.exchange_id)).record
        if record is not None and record.workflow_id == req.workflow_id:
            return record.claim
        return None

    def _refuse_ended(self, req: ConnectorRequest, claim: Claim) -> None:
        """Refuse to let a connector act under a claim whose renewals already ended here (a chaos run
        saw a warm standby activated 0.4 s after its claim's renew deadline, while Redis was paused:
        the workflow learns of the end from its lease, after it asked for the activation)."""
        ended = self.keeper.ended(req.workflow_id, claim)
        if ended is not None:
            raise ClaimLost(
                f"the {req.exchange_name} connector on {self.hostname} was not let act: the claim at "
                f"epoch {claim.epoch} ended here first ({ended})"
            )

    def _connector(self, req: ConnectorRequest):  # type: ignore[no-untyped-def]
        connector = self.connectors.get(req.workflow_id)
        if connector is None:
            raise ConnectorGone(
                f"no connector for {req.exchange_name} on {self.hostname} (the worker was restarted)"
            )
        return connector

    @activity.defn(name="connector_warm_up")
    @edge
    async def connector_warm_up(self, req: ConnectorRequest) -> ConnectorReport:
        await self._warm_step(req, self._connector(req).warm_up())
        return ConnectorReport()

    async def _warm_step(self, req: ConnectorRequest, step: Awaitable[T]) -> T:
        """Run a connector step; if it is a warm standby's and fails, note why (and when its workflow
        tries again) for the keeper to show in the standby's record."""
        try:
            return await with_heartbeats(step)
        except Exception as exc:
            if req.role is Role.STANDBY:
                retry_at = (
                    datetime.now(UTC) + timedelta(seconds=warm_retry_delay(req.warm_attempt))
                    if req.warm_attempt is not None
                    else None
                )
                self.connectors.note_warm_failure(req.workflow_id, str(exc) or type(exc).__name__, retry_at)
            raise

    @activity.defn(name="connector_preflight")
    @edge
    async def connector_preflight(self, req: ConnectorRequest) -> ConnectorPreflight:
        """Whether the connector ``req.spec`` could start on this host now (a handoff's target is
        asked before the active instance stops anything). Spawns nothing."""
        refused = self.exec_allow.refusal(req.spec, self.hostname) if self.exec_allow else None
        return ConnectorPreflight(hostname=self.hostname, cannot_start=refused or cannot_start(req.spec))

    def _permitted(self, spec: ConnectorSpec) -> None:
        """Refuse (ExecRefused, before anything is spawned) a command this host's allow-list does
        not permit; the workflow records the refusal as an ``error`` event."""
        if self.exec_allow is None:
            return
        refused = self.exec_allow.refusal(spec, self.hostname)
        if refused is not None:
            log.warning("%s", refused)
            error = ExecRefused(refused)
            error.reported = True  # the line above is the host's record of it
            raise error

    @activity.defn(name="connector_activate")
    @edge
    async def connector_activate(self, req: ConnectorRequest) -> ConnectorReport:
        """Promote this host's warm standby connector under the claim just taken (``req.claim``).

        The renewals of that claim are started here if the lease activity has not reached this host
        yet (it attaches to them when it does), and the watchdog is armed with their deadline before
        ``ACTIVATE`` is sent: from then on the child may act, and only while the claim is renewed.
        Raises ConnectorGone (no connector here: the worker restarted), ConnectorNotActive (it did not
        confirm; it is stopped) or ConnectorError (not a warmed standby): the workflow starts cold.
        """
        if req.claim is None:
            raise ConnectorError("connector_activate needs the claim just taken")
        self._refuse_ended(req, req.claim)
        connector = self._connector(req)
        if not connector.warm_ready:
            raise ConnectorError(
                f"the {req.exchange_name} connector on {self.hostname} is not a warm standby ready to "
                "activate"
            )
        self.keeper.hold(
            LeaseRequest(
                workflow_id=req.workflow_id,
                exchange_id=req.exchange_id,
                claim=req.claim,
                heartbeat_interval_s=req.heartbeat_interval_s,
                term_s=req.heartbeat_interval_s,
            )
        )
        self.keeper.guard(req.workflow_id)
        await with_heartbeats(
            self.connectors.activate(req.workflow_id, req.claim.epoch, req.claim.instance_id)
        )
        return ConnectorReport(
            running=connector.connected, symbol_count=len(getattr(connector, "symbols", []))
        )

    @activity.defn(name="connector_deactivate")
    @edge
    async def connector_deactivate(self, req: ConnectorRequest) -> ConnectorReport:
        """Demote this host's active connector to a warm standby (a handback): it stops acting and
        keeps running, so that this instance can be promoted warm again. ConnectorGone if none runs."""
        if not await self.connectors.deactivate(req.workflow_id):
            raise ConnectorGone(f"no connector for {req.exchange_name} on {self.hostname}")
        connector = self._connector(req)
        return ConnectorReport(running=connector.connected, warm_ready=connector.warm_ready)

    @activity.defn(name="connector_connect")
    @edge
    async def connector_connect(self, req: ConnectorRequest) -> ConnectorReport:
        connector = self._connector(req)
        if req.claim is not None:
            self._refuse_ended(req, req.claim)
        await with_heartbeats(connector.connect())
        self.connectors.record(
            "connect",
            req.workflow_id,
            exchange=req.exchange_name,
            epoch=req.claim.epoch if req.claim else None,
        )
        return ConnectorReport(running=connector.connected)

    @activity.defn(name="connector_disconnect")
    @edge
    async def connector_disconnect(self, req: ConnectorRequest) -> ConnectorReport:
        """Idempotent: disconnecting a connector that is not there is fine."""
        await self.connectors.stop(req.workflow_id, "stop requested")
        return ConnectorReport(running=False)

    @activity.defn(name="connector_check")
    @edge
    async def connector_check(self, req: ConnectorRequest) -> ConnectorReport:
        """Whether this host still runs the connector (after a worker restart it does not)."""
        connector = self.connectors.get(req.workflow_id)
        return ConnectorReport(
            running=bool(connector and connector.connected),
            warm_ready=bool(connector and connector.warm_ready),
        )

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.detect_identity,
            self.claim_and_hold,
            self.hold_lease,
            self.hold_standby,
            self.connector_prepare,
            self.connector_warm_up,
            self.connector_connect,
            self.connector_activate,
            self.connector_deactivate,
            self.connector_disconnect,
            self.connector_check,
            self.connector_preflight,
            self.failsafe_enrol,
            self.failsafe_grant,
        ]
