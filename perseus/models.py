"""Every message Perseus passes: one pydantic model per workflow input, activity, update and record.

Redis payloads are camelCase on the wire (Livermore compatibility); Python code uses snake_case.
Models here import only the standard library, pydantic and the pure core, so workflows may use them.
"""

from __future__ import annotations

import re
import shlex
from datetime import datetime
from enum import StrEnum
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.alias_generators import to_camel

from perseus.core.lifecycle import Command, Role, State
from perseus.keys import EXCHANGE_PATTERN, HOST_PATTERN, iso
from perseus.timing import (
    DEFAULT_INTERVAL_S,
    INSTANCE_HISTORY_LIMIT,
    MAX_ACTIVE_TIMEOUT_S,
    MAX_INTERVAL_S,
    MAX_READY_TIMEOUT_S,
    MAX_STOP_GRACE_S,
    MIN_INTERVAL_S,
)


class Wire(BaseModel):
    """camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


# --- Redis records -----------------------------------------------------------------------------


class InstanceStatus(Wire):
    """The JSON stored at ``exchange:{id}:status`` (DESIGN §2.1), whoever wrote it.

    Writers: the workflow (the whole record, at each claim), its fenced merges (transitions, errors),
    the keeper's renewals (``lastHeartbeat``, ``healthy``, ``lastHealthAt``, ``symbolCount``,
    ``lastError``, ``lastErrorAt``) — and Livermore v6, whose records carry only its own 14 fields.
    So the Perseus additions are optional when reading (None: a record Perseus did not write; the
    workflow always sets them), and fields this model does not know are kept (``extra="allow"``): a
    record read and written back loses nothing. Read it from Redis with
    :meth:`perseus.store.redis_store.RedisStore.status`, never by parsing the JSON by hand.
    """

    model_config = ConfigDict(extra="allow")

    exchange_id: int
    exchange_name: str
    hostname: str
    ip_address: str | None = None
    country_code: str | None = None
    admin_email: str | None = None
    admin_display_name: str | None = None
    connection_state: State
    symbol_count: int = 0
    connected_at: str | None = None
    last_heartbeat: str
    last_state_change: str
    registered_at: str
    last_error: str | None = None
    last_error_at: str | None = None
    # Perseus additions (absent from a Livermore record)
    instance_id: str | None = None
    epoch: int | None = None
    workflow_id: str | None = None
    heartbeat_interval_ms: int | None = None
    ttl_ms: int | None = None
    #: What the connector says of itself, refreshed with every renewal (None: nothing known yet).
    healthy: bool | None = None
    last_health_at: str | None = None
    #: The Perseus release of the host that took this claim (stamped there; None: written by a
    #: release before the field, or by Livermore).
    perseus_version: str | None = None
    #: How long the holder's connector may act after a renewal it could not follow up (its keeper's
    #: renew deadline, stamped with the version): a standby's claim-over line is this plus the
    #: margin (``timing.claim_over_s``). None: 0.1.0 (2 intervals) or Livermore.
    renew_deadline_ms: int | None = None

    @property
    def renew_deadline_s(self) -> float | None:
        ms = self.renew_deadline_ms
        return ms / 1000 if ms is not None and ms > 0 else None

    def wire(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True)

    @property
    def heartbeat_interval_s(self) -> float:
        """The holder's own heartbeat interval; Livermore's fixed 15 s for a record that does not say."""
        ms = self.heartbeat_interval_ms
        return ms / 1000 if ms is not None and ms > 0 else DEFAULT_INTERVAL_S

    @property
    def claim(self) -> Claim | None:
        """The fencing token this record carries; None for a record without one (Livermore's)."""
        if self.instance_id is None or self.epoch is None:
            return None
        return Claim(instance_id=self.instance_id, epoch=self.epoch)

    def held_by(self, claim: Claim) -> bool:
        """Whether this record is ``claim``'s (same instanceId and epoch)."""
        return self.claim == claim


class EventKind(StrEnum):
    STATE_TRANSITION = "state_transition"
    ERROR = "error"
    CLAIM_CONFLICT = "claim_conflict"
    INSTANCE_LOST = "instance_lost"
    STANDBY_REGISTERED = "standby_registered"
    PROMOTED = "promoted"
    HANDOFF = "handoff"
    #: A command that was refused (written by the API or the CLI, not by a workflow): the audit
    #: trail shows attempts as well as changes.
    COMMAND_REFUSED = "command_refused"
    #: Maintenance mode began or ended (``perseus pause`` / ``resume``): additive kinds that
    #: Livermore v6 readers, which match the kinds they know, pass over.
    PAUSED = "paused"
    RESUMED = "resumed"
    #: A holder began or ended acting past its renew deadline on failsafe promises (a Redis
    #: outage; docs/design.md, "Failsafe"). Written by the holder's worker once Redis takes it.
    FAILSAFE_HOLDING = "failsafe_holding"
    FAILSAFE_ENDED = "failsafe_ended"


class NetworkEvent(BaseModel):
    """One entry of ``logs:network:{name}``; :meth:`fields` gives the exact stream fields."""

    event: EventKind
    event_id: str
    timestamp: datetime
    exchange_id: int
    exchange_name: str
    hostname: str
    ip: str | None = None
    instance_id: str
    epoch: int
    from_state: State | None = None
    to_state: State | None = None
    admin_email: str | None = None
    error: str | None = None
    state: State | None = None
    detail: str | None = None
    #: Who asked for the command that caused this event (``api:<key>``, ``cli:<user>@<machine>``,
    #: ``fleet:<actor>``); None for what the instance did on its own. Additive: Livermore readers
    #: ignore fields they do not know.
    actor: str | None = None
    #: For ``command_refused``: the command and why it was refused.
    command: str | None = None
    reason: str | None = None

    def fields(self) -> dict[str, str]:
        """Stream fields, all strings; unknown ip/adminEmail are '' as in Livermore."""
        out: dict[str, str] = {
            "event": self.event.value,
            "timestamp": iso(self.timestamp),
        }
        if self.event is EventKind.STATE_TRANSITION:
            out["fromState"] = self.from_state.value if self.from_state else ""
            out["toState"] = self.to_state.value if self.to_state else ""
        if self.event is EventKind.ERROR:
            out["error"] = self.error or ""
        out.update(
            exchangeId=str(self.exchange_id),
            exchangeName=self.exchange_name,
            hostname=self.hostname,
            ip=self.ip or "",
        )
        if self.event is EventKind.STATE_TRANSITION:
            out["adminEmail"] = self.admin_email or ""
        if self.event is EventKind.ERROR:
            out["state"] = self.state.value if self.state else ""
        if self.detail is not None:
            out["detail"] = self.detail
        if self.command is not None:
            out["command"] = self.command
        if self.reason is not None:
            out["reason"] = self.reason
        if self.actor is not None:
            out["actor"] = self.actor
        out.update(instanceId=self.instance_id, epoch=str(self.epoch), eventId=self.event_id)
        return out


# --- API keys (DESIGN §2.10) -----------------------------------------------------------------------


class Scope(StrEnum):
    """What a key may do; each scope includes the ones before it."""

    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"

    def allows(self, needed: Scope) -> bool:
        order = list(Scope)
        return order.index(self) >= order.index(needed)


class ApiKey(Wire):
    """A key as ``apikey list`` shows it: everything but the key."""

    name: str
    scope: Scope
    #: The exchanges an operate key may command; empty: every exchange.
    exchanges: list[str] = []
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked: bool = False


class CallerKey(BaseModel):
    """The key a request came with, as the API judges it."""

    name: str
    scope: Scope
    exchanges: list[str] = []

    def may_command(self, exchange: str) -> bool:
        return self.scope.allows(Scope.OPERATE) and (
            self.scope is Scope.ADMIN or not self.exchanges or exchange.lower() in self.exchanges
        )


class CreatedKey(Wire):
    """What ``apikey create`` prints, once: the only time the key is shown."""

    name: str
    key: str
    scope: Scope
    exchanges: list[str] = []
    expires_at: datetime | None = None


class NotifyChannel(BaseModel):
    """One notification channel, an entry of ``PERSEUS_NOTIFY_CHANNELS`` (a JSON list).

    ``kind`` says what the target speaks: ``discord`` and ``slack`` incoming webhooks (the URL is
    the credential), ``pagerduty`` Events API v2 (``secret`` is the integration's routing key; the
    URL defaults to PagerDuty's), or a generic ``webhook`` (a JSON body signed with ``secret`` in an
    HMAC-SHA256 header). ``events`` and ``exchanges`` narrow what it receives (absent: every event
    kind but ``standby_registered``, every exchange).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    kind: Literal["discord", "slack", "pagerduty", "webhook"]
    url: AnyHttpUrl | None = None
    secret: SecretStr | None = None
    events: list[EventKind] | None = None
    exchanges: list[str] | None = None

    @model_validator(mode="after")
    def _complete(self) -> NotifyChannel:
        if self.url is None and self.kind != "pagerduty":
            raise ValueError(f"channel {self.name}: a {self.kind} channel needs a url")
        if self.secret is None and self.kind in ("pagerduty", "webhook"):
            what = "routing key" if self.kind == "pagerduty" else "HMAC key"
            raise ValueError(f"channel {self.name}: a {self.kind} channel needs a secret (its {what})")
        if self.secret is not None and self.kind in ("discord", "slack"):
            raise ValueError(f"channel {self.name}: a {self.kind} channel takes no secret (its url is one)")
        if self.events == [] or self.exchanges == []:
            raise ValueError(f"channel {self.name}: an empty filter lets nothing through; leave it out")
        return self


# --- Catalog -------------------------------------------------------------------------------------


class Exchange(Wire):
    id: int
    name: str
    display_name: str
    is_active: bool


class Admin(BaseModel):
    email: str
    display_name: str | None


class ResolveRequest(BaseModel):
    exchange: str
    admin_email: str | None = None


class Resolved(BaseModel):
    exchange: Exchange
    admin: Admin | None


class SymbolsRequest(BaseModel):
    exchange_id: int


# --- Workflow ------------------------------------------------------------------------------------


class ConnectorSpec(BaseModel):
    """Which connector runs while the claim is held, and how it behaves.

    ``kind="simulated"`` pretends (delays and injectable failures). ``kind="process"`` supervises a
    real child command on the instance's host, like ``consul lock PREFIX COMMAND``: spawned while
    *starting*, *warming* until ``ready_line`` appears on its output or ``ready_url`` answers 2xx,
    *active* once ready; SIGTERM then SIGKILL after ``stop_grace_s`` when it must stop.
    """

    kind: Literal["simulated", "process"] = "simulated"
    prepare_delay_s: float = 0.2
    warmup_delay_s: float = 0.3
    connect_delay_s: float = 0.2
    #: Names of connector steps that fail, for the demo and tests: prepare, warm_up, connect, health.
    fail_steps: list[str] = Field(default_factory=list)
    #: What to do when the connector fails while active: stay idle, or start again with backoff.
    restart: Literal["no", "on-failure"] = "no"
    restart_backoff_s: float = 1.0
    max_restarts: int = 5
    # --- kind "process" --------------------------------------------------------------------------
    #: The child's argv (a string is split like a shell would, without running a shell).
    command: list[str] = Field(default_factory=list)
    #: Ready once a line of the child's stdout/stderr matches this regex (``re.search``).
    ready_line: str | None = None
    #: Ready once a GET of this http(s) URL answers 2xx. Excludes ``ready_line``; with neither, the
    #: child is ready as soon as it has been spawned.
    ready_url: str | None = None
    #: Not ready within this many seconds: the error is recorded, the child stopped, back to idle.
    #: At most 110 s: warm-up runs inside one host activity with a 120 s start-to-close timeout.
    ready_timeout_s: float = Field(default=30.0, gt=0, le=MAX_READY_TIMEOUT_S)
    #: Seconds between SIGTERM and SIGKILL on a stop. At most 10 s: the workflow gives a disconnect
    #: 15 s. A lost claim does not wait: the child is killed at once.
    stop_grace_s: float = Field(default=5.0, ge=0, le=MAX_STOP_GRACE_S)
    #: Working directory of the child (default: the worker's).
    cwd: str | None = None
    #: Extra environment variables for the child (PERSEUS_EXCHANGE & co. are always set by Perseus).
    env: dict[str, str] = Field(default_factory=dict)
    #: The child's output is kept in ``{data dir}/connectors/{workflow id}.log``, rotated at this size
    #: with this many older files beside it.
    log_max_bytes: int = Field(default=4 * 1024 * 1024, ge=4096)
    log_backups: int = Field(default=3, ge=0, le=20)
    # --- health while active and warm standby (DESIGN §2.9) ------------------------------------
    #: Probed every heartbeat interval while active (default: ``ready_url``; with neither, health
    #: comes only from the child's ``PERSEUS health=…`` lines).
    health_url: str | None = None
    #: This many consecutive failed probes (or ``PERSEUS health=failed`` lines) make the connector
    #: unhealthy: a failure with the ``on_unhealthy`` policy attached.
    health_failures: int = Field(default=3, ge=1, le=100)
    #: Unhealthy while active: restart in place, or release the claim so a standby takes over.
    on_unhealthy: Literal["restart", "failover"] = "restart"
    #: A standby keeps its connector prepared and warmed (``PERSEUS_ROLE=standby``), promoted by
    #: ``ACTIVATE <epoch>`` on the child's stdin instead of a cold start.
    warm: bool = False
    #: Seconds a warm child has to answer ``ACTIVE`` after ``ACTIVATE <epoch>``.
    active_timeout_s: float = Field(default=10.0, gt=0, le=MAX_ACTIVE_TIMEOUT_S)

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return shlex.split(value)
            except ValueError as exc:  # unbalanced quotes
                raise ValueError(f"cannot split the command {value!r}: {exc}") from None
        return value

    @field_validator("ready_line")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value:
            raise ValueError("the ready-line pattern is empty")
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {value!r} ({exc})") from None
        return value

    @field_validator("ready_url", "health_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL with a host: {value!r}")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ValueError(f"bad port in {value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ConnectorSpec:
        if self.ready_line is not None and self.ready_url is not None:
            raise ValueError("ready_line and ready_url exclude each other: choose one readiness check")
        if self.kind == "process":
            if not self.command or not self.command[0]:
                raise ValueError("a process connector needs a command to run (it is empty)")
        elif self.command or self.ready_line is not None or self.ready_url is not None:
            raise ValueError(f"command, ready_line and ready_url need kind 'process', not {self.kind!r}")
        elif self.health_url is not None:
            raise ValueError(f"health_url needs kind 'process', not {self.kind!r}")
        return self


class Claim(BaseModel):
    """Our fencing token: the workflow's memory of what it holds."""

    instance_id: str
    epoch: int


class NotifyRequest(BaseModel):
    event: NetworkEvent


class CarriedState(BaseModel):
    resolved: Resolved
    hostname: str
    ip_address: str | None
    claim: Claim | None
    state: State
    symbol_count: int
    connected_at: datetime | None
    registered_at: datetime
    last_error: str | None
    pending: list[Command]
    highest_epoch: int
    runs: int
    undelivered: list[NotifyRequest] = Field(default_factory=list)
    role: Role = Role.ACTIVE
    standby_id: str | None = None
    restarts: int = 0
    #: A warm standby whose connector was warm on its host when the run continued as new.
    warm_here: bool = False
    #: Promotions in a row whose connector could not start here, why the last one failed, and
    #: until when this host is tried only after every other standby (decisions.backing_off).
    start_failures: int = 0
    start_error: str | None = None
    start_retry_at: datetime | None = None


class InstanceInput(BaseModel):
    """Workflow input; also what continue-as-new carries, so every field is state."""

    exchange: str = Field(pattern=EXCHANGE_PATTERN)
    host: str = Field(pattern=HOST_PATTERN)
    admin_email: str | None = None
    heartbeat_interval_s: float = Field(
        default=DEFAULT_INTERVAL_S, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S, allow_inf_nan=False
    )
    connector: ConnectorSpec = Field(default_factory=ConnectorSpec)
    start_immediately: bool = False
    #: Register as a standby: visible and waiting, holding no claim until promoted.
    standby: bool = False
    #: Among standbys, the higher priority is promoted first.
    priority: int = 0
    #: Who registered it (``cli:…``, ``fleet:…``): named in the events of its registration and of
    #: the start it asked for.
    actor: str | None = None
    #: Continue-as-new after this many history events even if Temporal has not suggested it yet.
    history_limit: int = INSTANCE_HISTORY_LIMIT
    #: Maximum length of one lease activity; it is re-issued after that (keeps timeouts finite).
    lease_term_s: float = 6 * 3600
    #: Hold through a Redis outage on promises from every other instance of the exchange
    #: (docs/design.md, "Failsafe"). Off by default: nothing of the failsafe runs.
    failsafe: bool = False
    # Carried across continue-as-new:
    carried: CarriedState | None = None

    def continued(self, carried: CarriedState) -> InstanceInput:
        """The next run's input: ``carried`` in, no start of its own — and a history limit from an
        older release (2,000 then) down to today's, so that what a run takes to replay on a new
        worker is bounded for the fleet already running too."""
        limit = min(self.history_limit, INSTANCE_HISTORY_LIMIT)
        return self.model_copy(
            update={"carried": carried, "start_immediately": False, "history_limit": limit}
        )


class RegistrationResult(Wire):
    exchange: str
    exchange_id: int
    host: str
    hostname: str
    ip_address: str | None
    instance_id: str
    epoch: int
    state: State
    workflow_id: str
    role: Role = Role.ACTIVE


class CommandRequest(BaseModel):
    command: Command
    #: Who asked (written into the events the command causes); None from callers before actors.
    actor: str | None = None


class CommandResult(Wire):
    command: Command
    from_state: State
    state: State
    transitions: list[State]
    error: str | None = None
    #: What else happened (a handoff's target and epochs, say).
    detail: str | None = None
    #: The instance that ran it (filled in by the caller's side: the workflow knows its own id).
    workflow_id: str | None = None


class InstanceSnapshot(Wire):
    """What the workflow's query returns: its whole memory."""

    workflow_id: str
    exchange: str
    exchange_id: int | None
    host: str
    hostname: str | None
    ip_address: str | None
    state: State
    registered: bool
    claim: Claim | None
    symbol_count: int
    connected_at: datetime | None
    last_error: str | None
    last_heartbeat_ok: datetime | None
    pending: list[Command]
    runs: int
    outcome: str | None
    role: Role = Role.ACTIVE
    priority: int = 0


# --- Activities ----------------------------------------------------------------------------------


class IdentityRequest(BaseModel):
    host: str


class HostPresence(BaseModel):
    """Whether a host's worker is polling its queue (busy) — or none is (missing)."""

    polled: bool
    pollers: int


class Identity(BaseModel):
    hostname: str
    ip_address: str | None


class ClaimRequest(BaseModel):
    status: InstanceStatus
    highest_epoch: int
    #: A standby whose watch saw the holder unrenewed past its renew deadline plus the margin: the
    #: claim may take the key over instead of waiting for its TTL (``decisions.takes_over_lapsed``).
    take_lapsed: bool = False
    #: Nobody asked for this claim (a standby promoting itself after a vacancy, or woken by a holder
    #: that was lost or failed): refused while the exchange is paused (``core.pause``).
    automatic: bool = False


class HostClaimRequest(BaseModel):
    """A claim taken on the claimant's own host, whose keeper renews it from that moment on: the
    first renewal must not wait for a lease activity to travel through Temporal (a slow server would
    let a short TTL lapse before it arrives)."""

    claim: ClaimRequest
    workflow_id: str
    heartbeat_interval_s: float
    term_s: float
    #: The exchange's failsafe is on: the claim is refused while this host is bound by a promise
    #: (or its enrolment, or its keeper's start) not to claim (``failsafe.claim_refusal``).
    failsafe: bool = False


class ClaimResult(BaseModel):
    claimed: bool
    epoch: int
    holder: InstanceStatus | None = None
    holder_ttl_ms: int | None = None
    message: str | None = None
    #: Claimed over a lapsed holder (``ClaimRequest.take_lapsed``): whom, and at which epoch.
    took_over: str | None = None
    #: Refused because the exchange is paused: for how many more milliseconds (``core.pause``).
    paused_ms: float | None = None
    #: Refused because the exchange was handed to another host: for how many more milliseconds
    #: (``decisions.held_back_by_handoff``).
    held_back_ms: float | None = None


class StatusPatch(BaseModel):
    """A fenced merge into the status key: applies only while ``claim`` still matches."""

    exchange_id: int
    claim: Claim
    fields: dict[str, object]


class PatchResult(BaseModel):
    applied: bool
    reason: str | None = None


class HandoffReservation(Wire):
    """The JSON at ``exchange:{id}:handoff``: the exchange was released to ``to_host`` by
    ``from_host`` (which held it at ``epoch``); the key's TTL is how long the others hold back."""

    to_host: str
    from_host: str
    epoch: int


class ReleaseRequest(BaseModel):
    exchange_id: int
    claim: Claim
    #: A handoff's release: the exchange is reserved for its target this long before the claim is
    #: deleted (``decisions.held_back_by_handoff``). None: a plain release, anyone may race.
    reserve: HandoffReservation | None = None
    reserve_ms: int = 0


class EventRequest(BaseModel):
    event: NetworkEvent


class RecordRequest(BaseModel):
    """A network event and, for a transition, the fenced status merge that goes with it: written in
    one step (one local activity) instead of one activity each."""

    event: NetworkEvent
    patch: StatusPatch | None = None


class Recorded(BaseModel):
    """What :class:`RecordRequest` wrote. ``notify``: whether this worker sends notifications at all
    (none configured: the workflow schedules no notification activity)."""

    stream_id: str
    #: The status merge: applied, or refused (with why), or None when there was none to make.
    patch: PatchResult | None = None
    notify: bool


class LeaseRequest(BaseModel):
    workflow_id: str
    exchange_id: int
    claim: Claim
    heartbeat_interval_s: float
    term_s: float
    #: The exchange's failsafe is on: past its renew deadline the keeper may keep the connector on
    #: promises gathered from the exchange's roster (``failsafe.holder_verdict``).
    failsafe: bool = False
    #: The exchange's name (the roster workflow is ``roster-{exchange}``); None from older workflows.
    exchange: str | None = None


class LeaseOutcome(BaseModel):
    """How a lease term ended when it ended normally (the term ran out)."""

    renewals: int
    last_renewed: datetime | None


class LeaseEnd(BaseModel):
    """Carried by a lease's error: when the keeper stopped the connector (transitions are stamped so)."""

    stopped_at: datetime


class ClaimProbe(BaseModel):
    """What Redis proves about a claim: who holds the key, and how long ago it was last renewed."""

    held_by_us: bool
    #: Milliseconds since the key's TTL was last refreshed (from PTTL, on Redis' own clock; None
    #: when the key is gone or carries no TTL).
    renewed_ms_ago: int | None = None
    holder: str | None = None


class ClaimProbeRequest(BaseModel):
    exchange_id: int
    claim: Claim


class ConnectorRequest(BaseModel):
    workflow_id: str
    exchange_id: int
    exchange_name: str
    spec: ConnectorSpec
    #: The claim the connector runs under (a process connector passes it to its child as
    #: PERSEUS_EPOCH / PERSEUS_INSTANCE_ID). None from workflows that do not fill it in yet.
    claim: Claim | None = None
    #: How often the connector checks its health while active (the instance's heartbeat interval).
    heartbeat_interval_s: float = DEFAULT_INTERVAL_S
    #: ``standby``: prepare and warm a warm standby's connector (``PERSEUS_ROLE=standby``); it acts
    #: only once ``connector_activate`` sends ``ACTIVATE`` with the epoch of a claim just taken.
    role: Role = Role.ACTIVE
    #: A warm standby's warm-up attempt (1, 2, …): if this step fails, the host shows in the
    #: standby's record when the workflow tries again (``decisions.warm_retry_delay``). None from
    #: runs that do not retry a failed warm-up.
    warm_attempt: int | None = None


class ConnectorReport(BaseModel):
    symbol_count: int = 0
    running: bool = False
    #: A warm standby's connector is prepared, warmed and still running (activate can promote it).
    warm_ready: bool = False


class ConnectorPreflight(BaseModel):
    """Whether a connector could start on a host now (a handoff asks its target before anything
    stops): None, or why not, in one line."""

    hostname: str
    cannot_start: str | None = None


class ConnectorHealth(BaseModel):
    """What a connector says about itself, read by the lease on each renewal (any connector kind).

    ``healthy`` is None until something is known (no probe answered, no report line yet).
    ``symbol_count`` is what the child reported (``PERSEUS symbols=<n>``), None if it never did.
    ``last_error`` is an error reported since the previous :meth:`Connector.health` call (each is
    returned once), None if there was none.
    """

    healthy: bool | None = None
    last_health_at: datetime | None = None
    symbol_count: int | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    #: Working but impaired (``PERSEUS health=degraded <reason>``), or why the last check failed.
    degraded_reason: str | None = None
    #: Prepared and warmed, its child running: a warm standby that can be activated.
    warm_ready: bool = False

    def status_patch(self) -> dict[str, object]:
        """The fields to merge into the status key (camelCase): ``healthy`` and ``lastHealthAt``
        always, ``symbolCount`` once the child reported one, ``lastError``/``lastErrorAt`` only
        when a new error arrived (an old one is never cleared by a quiet beat)."""
        patch: dict[str, object] = {
            "healthy": self.healthy,
            "lastHealthAt": iso(self.last_health_at) if self.last_health_at else None,
        }
        if self.symbol_count is not None:
            patch["symbolCount"] = self.symbol_count
        if self.last_error is not None:
            patch["lastError"] = self.last_error
            patch["lastErrorAt"] = iso(self.last_error_at) if self.last_error_at else None
        return patch


class ConnectorFailure(BaseModel):
    """Why a connector stopped working while it should run, and what its spec says to do about it.

    ``kind="crashed"``: the child exited (the spec's ``restart`` applies, as before; ``policy`` is
    None). ``kind="unhealthy"``: it runs but failed ``health_failures`` checks in a row (or a
    simulated health failure); ``policy`` is the spec's ``on_unhealthy``: ``restart`` in place, or
    ``failover`` (release the claim so a standby takes over).
    """

    kind: Literal["crashed", "unhealthy"]
    reason: str
    policy: Literal["restart", "failover"] | None = None
    #: CLOCK_MONOTONIC at which the worker saw the child dead of SIGKILL (None: it ended otherwise):
    #: the keeper tells the watchdog's kill at a claim's deadline from a crash by it.
    killed_at: float | None = None


# --- Standbys and handoff -----------------------------------------------------------------------


class StandbyRecord(Wire):
    """The JSON at ``exchange:{id}:standby:{instanceId}`` (with a TTL, like the status key)."""

    exchange_id: int
    exchange_name: str
    host: str
    hostname: str
    ip_address: str | None = None
    instance_id: str
    workflow_id: str
    priority: int = 0
    registered_at: str
    last_heartbeat: str
    ttl_ms: int
    heartbeat_interval_ms: int
    #: Configured to keep its connector warm (DESIGN §2.9).
    warm: bool = False
    #: Its warm connector is ready to be activated now: refreshed by the host at every renewal.
    warm_ready: bool = False
    #: Why its last warm-up failed (with the child's last output), while it is not ready; and when
    #: its workflow tries again (ISO; None: it does not). Refreshed by the host at every renewal.
    warm_error: str | None = None
    warm_retry_at: str | None = None
    #: Its host could not start the connector when it was last promoted: why, and until when (ISO)
    #: it is woken or races for a vacancy only after every other standby. Written by its workflow.
    start_error: str | None = None
    start_retry_at: str | None = None
    #: The Perseus release of its host (perseus.version), refreshed by the host at every renewal;
    #: None from a release before the field. Of standbys otherwise equal, the newest release is
    #: woken first (``decisions.wake_order``).
    version: str | None = None

    def wire(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True)


class StandbyLeaseRequest(BaseModel):
    record: StandbyRecord
    heartbeat_interval_s: float
    term_s: float


class StandbyOutcome(BaseModel):
    """How a standby's watch ended: the exchange fell vacant, or the term ran out."""

    vacant: bool
    last_epoch: int = 0
    #: Redis was unreachable shortly before the vacancy was seen: the holder goes first.
    after_outage: bool = False
    #: The holder was seen unrenewed past its renew deadline before its key vanished: it expired by
    #: its TTL (``decisions.act_after_vacancy_s``). Absent from watches that ended before it existed.
    lapsed: bool = False
    #: A warm standby's connector, once ready, stopped while it waited: warm it up again (and a
    #: promotion meanwhile starts cold). Absent from watches that ended before it existed.
    warm_lost: bool = False
    #: With ``vacant`` and ``lapsed``: the holder's key is still there, unrenewed past its renew
    #: deadline plus the margin — claim over it now rather than wait for its TTL. Absent from
    #: watches that ended before it existed.
    holder_silent: bool = False


class StandbyQuery(BaseModel):
    exchange_id: int


class StandbyList(BaseModel):
    standbys: list[StandbyRecord]
    #: The exchange is paused (``core.pause``): no standby may take it over by itself now.
    paused: bool = False


class DropStandbyRequest(BaseModel):
    exchange_id: int
    instance_id: str


class PromoteRequest(BaseModel):
    """Sent to a standby's workflow: try to take the exchange now."""

    reason: str
    min_epoch: int = 0
    #: The workflow to tell whether the takeover worked (a planned handoff).
    confirm_to: str | None = None
    #: Seconds to wait between the claim and acting: after a vacancy the old holder may act until
    #: its renew deadline (``decisions.act_after_vacancy_s``); 0 when its workflow let go first.
    act_after_s: float = 0.0
    #: The holder's key is there but lapsed (``StandbyOutcome.holder_silent``): claim over it.
    take_lapsed: bool = False


class PauseRecord(Wire):
    """The JSON at ``exchange:{id}:pause`` (maintenance mode); the key's TTL is its deadline."""

    until: str
    since: str
    actor: str | None = None


class HandoffConfirm(BaseModel):
    ok: bool
    epoch: int = 0
    host: str
    detail: str


class HostRestarted(BaseModel):
    """A host's worker started (again): the instances of that host hear it at once, so that what ran
    on the old process — a standby's watch, its warm connector — is started again on the new one
    instead of when Temporal times the old activity out."""

    host: str
    #: The new worker's Temporal identity, for the log.
    identity: str = ""


class HeadsUp(BaseModel):
    """A task of this instance is near (a handoff to it is under way; the holder it watches has
    missed a renewal): what it is for is the workflow task its arrival costs at once."""

    #: Why, for the history's reader (no decision depends on it).
    reason: str


class HandoffRequest(BaseModel):
    to_host: str
    shutdown: bool = False
    actor: str | None = None


class HandoffResult(Wire):
    from_host: str
    to_host: str
    old_epoch: int
    new_epoch: int | None
    outcome: str
    error: str | None = None


# --- the failsafe: holding through a Redis outage (docs/design.md, "Failsafe") ----------------------


class RosterMember(BaseModel):
    """One instance that could take an exchange: its workflow id and its host."""

    workflow_id: str
    host: str


class RosterInput(BaseModel):
    """The roster workflow's input; also what its continue-as-new carries."""

    exchange: str
    members: list[RosterMember] = Field(default_factory=list)
    #: Continue-as-new after this many history events (each read during an outage is an update).
    history_limit: int = 2000


class RosterAnswer(BaseModel):
    """The roster of an exchange as its workflow holds it, after every completed enrolment."""

    members: list[RosterMember]


class EnrolRequest(BaseModel):
    """An instance with its failsafe on enrols in its exchange's roster, on its own host (whose
    keeper binds it for a promise's length when anyone else is enrolled: it was not asked in the
    rounds whose roster was read before it)."""

    exchange: str
    exchange_id: int
    member: RosterMember
    heartbeat_interval_s: float


class PromiseRequest(BaseModel):
    """A holder that cannot renew asks an instance of its exchange not to claim (an update on the
    instance's workflow)."""

    exchange_id: int
    exchange: str
    holder_instance_id: str
    epoch: int
    #: The holder's workflow id: a holder never asks itself, and a member answering its own
    #: holder's workflow would be a misrouted question.
    holder_workflow_id: str


class PromiseAnswer(Wire):
    """Whether the asked instance promised not to claim for ``failsafe_promise_s`` from its grant."""

    granted: bool
    reason: str


class GrantRequest(BaseModel):
    """The granter's side of a promise, run on its own host (whose keeper records the bound)."""

    workflow_id: str
    exchange_id: int
    heartbeat_interval_s: float
    failsafe: bool
    #: The asking workflow's instance holds the claim itself (its workflow's memory).
    holds_claim: bool
    asker_epoch: int
    highest_epoch_seen: int


class FailsafeHolding(Wire):
    """A holder's failsafe, as its lease reports it (heartbeat details, the status views)."""

    #: Past its renew deadline, acting on promises alone.
    holding: bool
    #: Seconds its connector may still act (the horizon, as time left on the holder's clock).
    horizon_s: float
    promised: int
    members: int


class FailsafeView(Wire):
    """An exchange's failsafe in the status views: its roster, and its holder's state as the
    holder's lease last reported it to Temporal (Redis may be what is down)."""

    #: Instances in the exchange's roster (the holder among them).
    enrolled: int
    holding: bool = False
    #: While holding: promises counted from how many of the latest round's standbys.
    promised: int = 0
    standbys: int = 0
    horizon_s: float | None = None

    def line(self) -> str:
        if self.holding:
            return (
                f"failsafe: holding through a Redis outage, promises from {self.promised} of "
                f"{self.standbys} standbys"
            )
        return f"failsafe: on ({self.enrolled} in the roster)"
