"""Activities that must run on the instance's own host: identity, the lease loop, the connector.

They are registered only on the host's task queue (``perseus-host-{host}``), so a host whose worker
is gone shows up as a ``schedule_to_start`` timeout rather than as work done somewhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio import activity

from activities.edge import edge
from perseus.connectors.base import ConnectorHost
from perseus.connectors.factory import ConnectorContext, build_connector
from perseus.errors import (
    ClaimLost,
    ClaimMissing,
    ConnectorFailed,
    ConnectorGone,
    RenewDeadline,
    ServiceUnavailable,
)
from perseus.keys import iso, renew_deadline_s, ttl_ms
from perseus.models import (
    Claim,
    ConnectorReport,
    ConnectorRequest,
    Identity,
    IdentityRequest,
    LeaseOutcome,
    LeaseRequest,
    StandbyLeaseRequest,
    StandbyOutcome,
    StandbyRecord,
)

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from perseus.store.db import Catalog
    from perseus.store.redis_store import RedisStore

log = logging.getLogger(__name__)
T = TypeVar("T")


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


async def with_heartbeats(work: Awaitable[T], every_s: float = 1.0) -> T:
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


class HeartbeatPump:
    """Heartbeats on a timer of its own while the body runs (``async with``), as long as ``alive()``.

    A Redis call that hangs (and a cancelled redis-py call can take a while to give up) must not
    silence the heartbeat: that would make a live host look dead. Only a frozen or dead process
    stops the pump — which is exactly what the heartbeat timeout is for. ``beat()`` is the loop's
    own heartbeat after each renewal; the pump adds one only when that has not happened for
    ``quiet_s`` (so a healthy loop sends one heartbeat per interval), checking every ``check_s``.
    """

    def __init__(self, quiet_s: float, check_s: float, alive: Callable[[], bool] = lambda: True) -> None:
        self._quiet_s = quiet_s
        self._check_s = check_s
        self._alive = alive
        self._last = time.monotonic()
        self._task: asyncio.Future[None] | None = None

    def beat(self) -> None:
        activity.heartbeat()
        self._last = time.monotonic()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._check_s)
            if self._alive() and time.monotonic() - self._last >= self._quiet_s:
                self.beat()

    async def __aenter__(self) -> HeartbeatPump:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


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
        connector_output: Path | None = None,
    ) -> None:
        self.hostname = hostname
        self._store = store
        self._catalog = catalog
        self._http = http
        self._ip_services = ip_services
        self._ip_timeout_s = ip_timeout_s
        self.connectors = connectors
        #: Where process connectors keep their children's output (None: in memory only).
        self.connector_output = connector_output
        #: Leases running in this process right now, by workflow id (for graceful worker shutdown).
        #: A count, not a set: a cancelled lease may overlap briefly with its successor.
        self.leases: Counter[str] = Counter()

    # --- identity ------------------------------------------------------------------------------

    @activity.defn(name="detect_identity")
    @edge
    async def detect_identity(self, req: IdentityRequest) -> Identity:
        """Hostname and public IP. The IP services are tried in order, each with a timeout; the
        answer falls through to None — identity never fails or blocks registration."""
        return Identity(hostname=self.hostname, ip_address=await self.public_ip())

    async def public_ip(self) -> str | None:
        import httpx

        for url in self._ip_services:
            try:
                response = await self._http.get(url, timeout=self._ip_timeout_s)
            except httpx.HTTPError as exc:
                log.info("IP service %s failed: %s", url, exc)
                continue
            if response.is_success and (ip := parse_ip_answer(response.text)):
                return ip
            log.info("IP service %s gave no usable answer (HTTP %s)", url, response.status_code)
        return None

    # --- the lease -----------------------------------------------------------------------------

    @activity.defn(name="hold_lease")
    @edge
    async def hold_lease(self, req: LeaseRequest) -> LeaseOutcome:
        """Renew the claim every interval until the term ends, the workflow cancels, or the claim is lost.

        One Redis round trip per renewal (a fenced Lua compare-and-set that also refreshes
        ``lastHeartbeat`` and the TTL), then ``activity.heartbeat()`` so that the workflow sees a dead
        host by the heartbeat timeout. Losing the claim — a fencing mismatch, or no successful
        renewal within the renew deadline (shorter than the TTL) — stops this host's connector
        *before* raising, so the connector never runs without the claim.
        """
        interval = req.heartbeat_interval_s
        deadline = renew_deadline_s(interval)
        ttl = ttl_ms(interval)
        started = time.monotonic()
        last_ok = started  # the claim was valid when the workflow issued this lease
        renewals = 0
        last_renewed: datetime | None = None
        due = started
        self.leases[req.workflow_id] += 1
        # The pump stops once the deadline has passed: past it this holder no longer claims anything.
        # At most 0.9 + 0.25 = 1.15 intervals between heartbeats (the timeout is 1.25).
        pump = HeartbeatPump(0.9 * interval, 0.25 * interval, lambda: time.monotonic() - last_ok <= deadline)
        try:
            async with pump:
                while True:
                    # Checked before anything else: a process that was paused (SIGSTOP, a long GC, a
                    # frozen VM) must not act on a claim it may have lost while it was not looking.
                    await self._check_deadline(req, last_ok, deadline, ttl)
                    try:
                        # Bounded by what is left of the renew deadline: a Redis that hangs must not keep
                        # this loop from stopping the connector in time.
                        reply = await asyncio.wait_for(
                            self._store.fenced(
                                req.exchange_id,
                                req.claim.instance_id,
                                req.claim.epoch,
                                mode="renew",
                                patch={"lastHeartbeat": iso(datetime.now(UTC))},
                                ttl_ms=ttl,
                            ),
                            # ...and by half an interval, so the heartbeat below still goes out on
                            # time: an unreachable Redis must not look like a dead host.
                            timeout=max(0.05, min(last_ok + deadline - time.monotonic(), interval / 2)),
                        )
                    except (ServiceUnavailable, TimeoutError) as exc:
                        log.warning("renewal of %s failed: %s", req.workflow_id, exc)
                    else:
                        if reply.outcome != "ok":
                            await self.connectors.stop(req.workflow_id, "claim lost")
                            lost = ClaimMissing if reply.outcome == "missing" else ClaimLost
                            raise lost(self._lost_message(reply.outcome, reply.raw))
                        last_ok = time.monotonic()
                        last_renewed = datetime.now(UTC)
                        renewals += 1
                        self.connectors.record(
                            "valid_until", req.workflow_id, until=last_ok + deadline, epoch=req.claim.epoch
                        )
                        connector = self.connectors.get(req.workflow_id)
                        if connector is not None and (why := connector.failure()) is not None:
                            await self.connectors.stop(req.workflow_id, why)
                            raise ConnectorFailed(why)
                    await self._check_deadline(req, last_ok, deadline, ttl)
                    pump.beat()
                    if time.monotonic() - started >= req.term_s:
                        return LeaseOutcome(renewals=renewals, last_renewed=last_renewed)
                    # A fixed schedule, not sleep(interval) after the work: lateness does not accumulate.
                    due += interval
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
        finally:
            self.leases[req.workflow_id] -= 1
            if self.leases[req.workflow_id] <= 0:
                del self.leases[req.workflow_id]

    async def _check_deadline(self, req: LeaseRequest, last_ok: float, deadline: float, ttl: int) -> None:
        if time.monotonic() - last_ok > deadline:
            await self.connectors.stop(req.workflow_id, "renew deadline passed")
            raise RenewDeadline(
                f"could not renew the claim for {deadline:.1f}s (renew deadline; "
                f"TTL {ttl / 1000:.1f}s): connector stopped"
            )

    @activity.defn(name="hold_standby")
    @edge
    async def hold_standby(self, req: StandbyLeaseRequest) -> StandbyOutcome:
        """Keep a standby visible and watch the exchange's status key; return when it falls vacant.

        One pipelined round trip per beat renews the standby's record, one GET reads the status key.
        The epoch seen last is returned so that a promotion claims above it even if Redis lost it.
        """
        interval = req.heartbeat_interval_s
        ttl = ttl_ms(interval)
        started = time.monotonic()
        async with HeartbeatPump(0.9 * interval, 0.25 * interval) as pump:
            return await self._watch(req, pump, ttl, started)

    async def _watch(
        self, req: StandbyLeaseRequest, pump: HeartbeatPump, ttl: int, started: float
    ) -> StandbyOutcome:
        interval = req.heartbeat_interval_s
        due = started
        last_epoch = 0
        while True:
            try:
                # Bounded, so a hanging Redis does not hold up the loop.
                raw = await asyncio.wait_for(self._watch_once(req.record, ttl), timeout=interval / 2)
            except (ServiceUnavailable, TimeoutError) as exc:
                log.warning("standby %s: %s", req.record.workflow_id, exc or "Redis too slow")
            else:
                if raw is None:
                    return StandbyOutcome(vacant=True, last_epoch=last_epoch)
                try:
                    last_epoch = max(last_epoch, int(json.loads(raw).get("epoch", 0)))
                except (ValueError, AttributeError, TypeError):
                    pass  # an unreadable holder still holds; its TTL will free the exchange
            pump.beat()
            if time.monotonic() - started >= req.term_s:
                return StandbyOutcome(vacant=False, last_epoch=last_epoch)
            due += interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def _watch_once(self, record: StandbyRecord, ttl: int) -> str | None:
        """Renew the standby's record and read the status key (None: nobody holds the exchange)."""
        renewed = record.model_copy(update={"last_heartbeat": iso(datetime.now(UTC))})
        await self._store.put_standby(
            record.exchange_id, record.instance_id, renewed.wire(), ttl, record.priority
        )
        raw, _ = await self._store.status(record.exchange_id)
        return raw

    @staticmethod
    def _lost_message(outcome: str, raw: str | None) -> str:
        if outcome == "missing":
            return "the status key is gone (expired or deleted): claim lost"
        try:
            holder = json.loads(raw or "")
            return (
                f"the claim is now held by {holder.get('hostname')} (epoch {holder.get('epoch')}, "
                f"instance {holder.get('instanceId')}): claim lost"
            )
        except ValueError:
            return "the status key holds an unreadable record: claim lost"

    # --- the connector -------------------------------------------------------------------------

    @activity.defn(name="connector_prepare")
    @edge
    async def connector_prepare(self, req: ConnectorRequest) -> ConnectorReport:
        """Create the connector and load the exchange's active symbols."""
        await self.connectors.stop(req.workflow_id, "replaced by a new start")
        context = ConnectorContext(
            workflow_id=req.workflow_id,
            exchange_id=req.exchange_id,
            exchange_name=req.exchange_name,
            claim=req.claim or await self._claim_of(req),
            log_dir=self.connector_output,
        )
        connector = build_connector(req.exchange_name, req.spec, context)
        self.connectors.put(req.workflow_id, connector)
        symbols = await self._catalog.active_symbols(req.exchange_id)
        return ConnectorReport(symbol_count=await with_heartbeats(connector.prepare(symbols)))

    async def _claim_of(self, req: ConnectorRequest) -> Claim | None:
        """The claim a process connector's child is told about, for workflows that do not send it
        in the request: read from the status key, trusted only if this workflow wrote it."""
        if req.spec.kind != "process":
            return None
        raw, _ = await self._store.status(req.exchange_id)
        try:
            doc = json.loads(raw or "")
            if doc.get("workflowId") == req.workflow_id:
                return Claim(instance_id=str(doc["instanceId"]), epoch=int(doc["epoch"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        return None

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
        await with_heartbeats(self._connector(req).warm_up())
        return ConnectorReport()

    @activity.defn(name="connector_connect")
    @edge
    async def connector_connect(self, req: ConnectorRequest) -> ConnectorReport:
        connector = self._connector(req)
        await with_heartbeats(connector.connect())
        self.connectors.record("connect", req.workflow_id, exchange=req.exchange_name)
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
        return ConnectorReport(running=bool(connector and connector.connected))

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.detect_identity,
            self.hold_lease,
            self.hold_standby,
            self.connector_prepare,
            self.connector_warm_up,
            self.connector_connect,
            self.connector_disconnect,
            self.connector_check,
        ]
