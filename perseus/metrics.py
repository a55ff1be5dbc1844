"""Prometheus metrics: Perseus' own, the Temporal SDK runtime's, and a small exporter for the worker.

Counters live in this process's default registry (with prometheus_client's process and Python
metrics). Each process exposes what happened *in it*: the worker that renews a claim counts the
renewal, the worker that records a network event counts the failover or handoff it describes, and
the API adds gauges read from Redis at scrape time (instances by state and role, per-exchange
heartbeat age and standbys). Prometheus sums across processes; docs/metrics.md lists every series
and what to alert on.

The Temporal SDK's own metrics come from its Rust core, which serves them in Prometheus format on an
address of its own (:func:`temporal_runtime`); the worker's exporter appends that text to its own, so
one scrape target per worker shows both. Nothing here may raise into the code that records: a
metric is never worth a failed renewal or event.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from perseus.core.lifecycle import Role, State

if TYPE_CHECKING:
    from temporalio.runtime import Runtime

    from perseus.host.health import WorkerHealth
    from perseus.readmodel.network import StatusBoard
    from perseus.store.redis_store import RedisStore

log = logging.getLogger("perseus.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds; renewals are due every interval (15 s by default), so lateness that matters is 0.1..30 s.
LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: Seconds from losing an instance (or a handoff's notify) to the new holder's claim.
TAKEOVER_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 45.0, 90.0, 180.0)
#: How far back a ``promoted`` or ``handoff`` event looks for the entry that started it.
LOOKBACK_ENTRIES = 30
#: ... and at most this old: an older start belongs to another incident.
LOOKBACK_S = 600.0

# prometheus_client adds the ``_total`` suffix to counters on the wire.
RENEWALS = Counter(
    "perseus_renewals",
    "Claim renewals (fenced renew writes to a status key) by outcome: ok, fenced (another holder "
    "took the claim), missing (the key had expired).",
    ["outcome"],
)
FENCING_REFUSALS = Counter(
    "perseus_fencing_refusals",
    "Fenced status writes refused because the instanceId/epoch no longer matched (a stale holder), "
    "by write mode: renew, merge, delete.",
    ["mode"],
)
RENEWAL_LATENESS = Histogram(
    "perseus_renewal_lateness_seconds",
    "How long after its due time each renewal reached Redis.",
    buckets=LATENESS_BUCKETS,
)
CLAIM_CONFLICTS = Counter(
    "perseus_claim_conflicts", "Claims refused because another instance held the exchange.", ["exchange"]
)
INSTANCES_LOST = Counter(
    "perseus_instances_lost", "Active instances lost (dead host, expired or stolen claim).", ["exchange"]
)
FAILOVERS = Counter(
    "perseus_failovers", "Standbys promoted without a planned handoff (promoted events).", ["exchange"]
)
FAILOVER_DURATION = Histogram(
    "perseus_failover_duration_seconds",
    "From the instance_lost event to the standby's promoted event (when the loss was recorded first).",
    buckets=TAKEOVER_BUCKETS,
)
HANDOFFS = Counter(
    "perseus_handoffs", "Planned handoffs finished, by outcome: confirmed, aborted.", ["exchange", "outcome"]
)
HANDOFF_DURATION = Histogram(
    "perseus_handoff_duration_seconds",
    "From a handoff's notify event to its confirm (or abort) event.",
    buckets=TAKEOVER_BUCKETS,
)
FAILSAFE_HOLDING = Gauge(
    "perseus_failsafe_holding",
    "1 while this worker's holder of the exchange acts past its renew deadline on failsafe promises "
    "(a Redis outage), else 0.",
    ["exchange"],
)
LIVE_CLIENTS = Gauge("perseus_live_clients", "Browsers connected to the API's live event stream.")
LEDGER_FOLDED = Counter(
    "perseus_ledger_folded",
    "Stream entries the API's ledger fold took in (perseus/readmodel/ledger_fold.py), by what happened: "
    "copied (new to the durable log: another writer's, or Perseus' own whose write was given up), "
    "transitions (of those, state transitions added to the ledger), skipped (unreadable entries).",
    ["outcome"],
)


# --- recording (called where things happen) ---------------------------------------------------------


def fenced_write(mode: str, outcome: str) -> None:
    """One fenced write's outcome (called by the store for every renew/merge/delete)."""
    if mode == "renew":
        RENEWALS.labels(outcome).inc()
    if outcome == "fenced":
        FENCING_REFUSALS.labels(mode).inc()


def observe_renewal(lateness_s: float) -> None:
    """A renewal reached Redis ``lateness_s`` after it was due (negative counts as on time)."""
    RENEWAL_LATENESS.observe(max(0.0, lateness_s))


def failsafe_holding(exchange: str, holding: bool) -> None:
    """The holder of ``exchange`` on this worker holds on failsafe promises (or no longer does)."""
    FAILSAFE_HOLDING.labels(exchange).set(1 if holding else 0)


def count_fencing_refusal(mode: str = "renew") -> None:
    """A fenced write refused outside :meth:`RedisStore.fenced` (which counts its own)."""
    FENCING_REFUSALS.labels(mode).inc()


def _seconds_between(earlier: str, later: str) -> float | None:
    try:
        start = datetime.fromisoformat(earlier.replace("Z", "+00:00"))
        end = datetime.fromisoformat(later.replace("Z", "+00:00"))
    except ValueError:
        return None
    seconds = (end - start).total_seconds()
    return seconds if 0 <= seconds <= LOOKBACK_S else None


def _started_at(history: Sequence[Mapping[str, str]], match: str, prefix: str = "") -> str | None:
    """The timestamp of the newest entry (newest-first ``history``) of kind ``match`` (and detail prefix)."""
    for fields in history:
        if fields.get("event") == match and fields.get("detail", "").startswith(prefix):
            return fields.get("timestamp")
    return None


def count_event(fields: Mapping[str, str], history: Sequence[Mapping[str, str]] = ()) -> None:
    """Count one network event just written; ``history`` is the stream's entries before it, newest
    first (only needed for ``promoted`` and finishing ``handoff`` events, to measure their duration)."""
    kind = fields.get("event", "")
    exchange = fields.get("exchangeName", "").lower()
    detail = fields.get("detail", "")
    now = fields.get("timestamp", "")
    if kind == "claim_conflict":
        CLAIM_CONFLICTS.labels(exchange).inc()
    elif kind == "instance_lost":
        INSTANCES_LOST.labels(exchange).inc()
    elif kind == "promoted" and not detail.startswith("handoff from"):
        FAILOVERS.labels(exchange).inc()
        lost = _started_at(history, "instance_lost")
        if lost and (took := _seconds_between(lost, now)) is not None:
            FAILOVER_DURATION.observe(took)
    elif kind == "handoff" and detail.startswith(("confirm:", "aborted:")):
        HANDOFFS.labels(exchange, "confirmed" if detail.startswith("confirm:") else "aborted").inc()
        notified = _started_at(history, "handoff", "notify:")
        if notified and (took := _seconds_between(notified, now)) is not None:
            HANDOFF_DURATION.observe(took)


def needs_history(fields: Mapping[str, str]) -> bool:
    """Whether :func:`count_event` wants the stream's earlier entries for this event."""
    detail = fields.get("detail", "")
    return fields.get("event") == "promoted" or (
        fields.get("event") == "handoff" and detail.startswith(("confirm:", "aborted:"))
    )


async def count_recorded_event(
    store: RedisStore, exchange_name: str, entry_id: str, fields: Mapping[str, str]
) -> None:
    """Count a network event right after it was appended (``record_event``). Reads the entries just
    before it when a duration is measured; never raises (a metric is not worth a failed event). A
    retried activity may count its event twice: rare, and only ever an over-count."""
    try:
        history: list[dict[str, str]] = []
        if needs_history(fields):
            rows = await store.events(exchange_name, newest=f"({entry_id}", count=LOOKBACK_ENTRIES)
            history = [row for _, row in rows]
        count_event(fields, history)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("metrics for event %s not counted: %s", entry_id, exc)


# --- exposition --------------------------------------------------------------------------------------


def board_metrics(board: StatusBoard) -> bytes:
    """Gauges read from Redis at scrape time (a fresh registry each time, so an exchange that left
    the catalog leaves the output too)."""
    registry = CollectorRegistry(auto_describe=True)
    instances = Gauge(
        "perseus_instances",
        "Instances by role and state (standbys count as state 'standby').",
        ["role", "state"],
        registry=registry,
    )
    active = Gauge(
        "perseus_exchange_active",
        "1 while the exchange has a live status record in state active, else 0.",
        ["exchange"],
        registry=registry,
    )
    age = Gauge(
        "perseus_exchange_heartbeat_age_seconds",
        "Seconds since the holder's last renewal (absent without a live record).",
        ["exchange"],
        registry=registry,
    )
    interval = Gauge(
        "perseus_exchange_heartbeat_interval_seconds",
        "The holder's own heartbeat interval (late past 1.5x, stale past 2x).",
        ["exchange"],
        registry=registry,
    )
    standbys = Gauge(
        "perseus_exchange_standbys", "Live standbys of the exchange.", ["exchange"], registry=registry
    )
    holder = Gauge(
        "perseus_exchange_holder",
        "1 for the instance holding the exchange's claim: its host and fencing epoch (no series while "
        "nobody holds it).",
        ["exchange", "host", "epoch"],
        registry=registry,
    )
    epoch = Gauge(
        "perseus_exchange_epoch",
        "The holder's fencing epoch; every new claim raises it, so changes() counts holder changes.",
        ["exchange"],
        registry=registry,
    )
    held_for = Gauge(
        "perseus_exchange_holder_seconds",
        "Seconds since the holder's connector came up under its claim (its record's connectedAt): "
        "the time since the last failover, handoff or restart.",
        ["exchange"],
        registry=registry,
    )
    paused = Gauge(
        "perseus_exchange_paused",
        "1 while the exchange is paused (maintenance mode: no automatic promotion or claim-over).",
        ["exchange"],
        registry=registry,
    )
    tally: Tally[tuple[str, str]] = Tally()
    for view in board.instances:
        name = view.exchange_name
        paused.labels(name).set(1 if view.paused else 0)
        status = view.status
        active.labels(name).set(1 if status is not None and status.connection_state is State.ACTIVE else 0)
        standbys.labels(name).set(len(view.standbys))
        if status is not None:
            tally[Role.ACTIVE.value, status.connection_state.value] += 1
            age.labels(name).set(view.heartbeat_age_s or 0.0)
            interval.labels(name).set(status.heartbeat_interval_s)
            # A Livermore v6 record has no epoch: it still names its host.
            fence = "" if status.epoch is None else str(status.epoch)
            holder.labels(name, status.hostname, fence).set(1)
            if status.epoch is not None:
                epoch.labels(name).set(status.epoch)
            if view.running_for_s is not None:
                held_for.labels(name).set(view.running_for_s)
        tally[Role.STANDBY.value, Role.STANDBY.value] += len(view.standbys)
    for role, state in ((Role.ACTIVE.value, State.ACTIVE.value), (Role.STANDBY.value, Role.STANDBY.value)):
        tally[role, state] += 0  # always present, so "no active instance" reads 0, not absent
    for (role, state), count in tally.items():
        instances.labels(role, state).set(count)
    return generate_latest(registry)


def exposition() -> bytes:
    """This process's metrics: Perseus' counters plus prometheus_client's process/Python metrics."""
    return generate_latest(REGISTRY)


async def temporal_text(url: str | None) -> bytes:
    """The Temporal runtime's own Prometheus text (empty when it is off or does not answer)."""
    if not url:
        return b""
    import httpx

    try:
        async with httpx.AsyncClient() as http:
            response = await http.get(url, timeout=2.0)
    except httpx.HTTPError as exc:
        log.warning("Temporal runtime metrics at %s unreadable: %s", url, exc)
        return b""
    return response.content if response.is_success else b""


def free_loopback_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def temporal_runtime(bind_address: str | None = None) -> tuple[Runtime, str]:
    """A Temporal runtime that serves the SDK's metrics on ``bind_address`` (a free loopback port by
    default); returns it and the URL to read them. Pass the runtime to ``Client.connect(runtime=)``."""
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    address = bind_address or free_loopback_address()
    runtime = Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=address, counters_total_suffix=True, durations_as_seconds=True
            )
        )
    )
    return runtime, f"http://{address}/metrics"


class MetricsServer:
    """``GET /metrics`` on its own port (the worker's ``--metrics-port``): this process's metrics
    followed by the Temporal runtime's; and ``/healthz`` and ``/readyz`` (:mod:`perseus.host.health`)
    once the worker has attached its :class:`~perseus.host.health.WorkerHealth`. A tiny HTTP/1.0
    responder on the event loop, no thread: that it answers at all is what ``/healthz`` proves."""

    def __init__(self, host: str, port: int, temporal_url: str | None) -> None:
        self.host = host
        self.port = port
        self.temporal_url = temporal_url
        self.health: WorkerHealth | None = None
        #: The checks that failed at the last /readyz (logged when that changes).
        self._failed: tuple[str, ...] = ()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        from perseus.errors import PerseusError

        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise PerseusError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    @property
    def url(self) -> str | None:
        """Where this server answers, once started: the bound port, and this machine's name when it
        listens on every interface (an address others can use, unlike 0.0.0.0)."""
        if self._server is None or not self._server.sockets:
            return None
        port = self._server.sockets[0].getsockname()[1]
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{port}/metrics"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _health(self, path: bytes) -> tuple[str, str, bytes]:
        assert self.health is not None
        kind = "application/json"
        if path == b"/healthz":
            return "200 OK", kind, self.health.liveness().model_dump_json().encode()
        report = await self.health.readiness()
        failed = tuple(report.failed)
        if failed != self._failed:  # one line per change, not one per probe
            if failed:
                why = "; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok)
                log.warning("worker not ready: %s", why)
            else:
                log.info("worker ready again")
            self._failed = failed
        status = "200 OK" if report.status == "ready" else "503 Service Unavailable"
        return status, kind, report.model_dump_json().encode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (line := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                del line  # headers are not needed
            parts = request.split()
            path = parts[1].split(b"?")[0] if len(parts) >= 2 else b""
            if path == b"/metrics":
                status, kind = "200 OK", CONTENT_TYPE
                body = exposition() + await temporal_text(self.temporal_url)
            elif path in (b"/healthz", b"/readyz") and self.health is not None:
                status, kind, body = await self._health(path)
            else:
                status, kind, body = "404 Not Found", "text/plain; charset=utf-8", b"try /metrics\n"
            head = f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("metrics request dropped: %s", exc)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass
