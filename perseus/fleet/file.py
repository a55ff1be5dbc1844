"""The declared fleet (DESIGN §2.7): parse and validate a fleet file, and decide what to do about it.

Pure: no I/O, no clock. :func:`parse_fleet` turns TOML text into :class:`Placement` values or raises
one :class:`~perseus.errors.InvalidFleet` naming the offending key; :func:`reconcile` compares the desired
placements with an :class:`Observed` snapshot and returns the :class:`Change` list that ``perseus
fleet apply``, ``fleet diff``, the worker's enrolment and ``perseus drain`` carry out (or print).
The I/O side lives in :mod:`perseus.fleet.enrol`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from perseus.core.decisions import doubling_delay
from perseus.errors import InvalidFleet
from perseus.keys import valid_host
from perseus.models import ConnectorSpec
from perseus.timing import BOUNDS_TEXT, DEFAULT_INTERVAL_S, interval_in_bounds

_TOP_KEYS = {"heartbeat_interval", "admin_email", "exchanges"}
#: Fleet-file key → ConnectorSpec field, for the process connector's options (as `register --exec`).
_PROCESS_KEYS = {
    "ready_line": "ready_line",
    "ready_url": "ready_url",
    "ready_timeout": "ready_timeout_s",
    "stop_grace": "stop_grace_s",
}
_EXCHANGE_KEYS = {
    "hosts",
    "exec",
    "connector",
    "restart",
    "heartbeat_interval",
    "admin_email",
    "warm",
    "failsafe",
    *_PROCESS_KEYS,
}
_FIELD_KEYS = {"command": "exec", "restart": "restart", **{v: k for k, v in _PROCESS_KEYS.items()}}


class Placement(BaseModel):
    """Where one exchange runs: its hosts in order of preference, and how its instances run."""

    model_config = ConfigDict(frozen=True)

    exchange: str
    hosts: tuple[str, ...]
    connector: ConnectorSpec
    heartbeat_interval_s: float
    admin_email: str | None = None
    #: Standbys keep their connector warm (§2.9): registered with ``ConnectorSpec.warm`` set.
    warm: bool = False
    #: Every instance holds through a Redis outage on the others' promises (docs/design.md,
    #: "Failsafe"): registered with ``InstanceInput.failsafe`` set.
    failsafe: bool = False

    def priority(self, host: str) -> int:
        """Standby priority of ``host``: the earlier in the list, the higher (the last host is 0)."""
        return len(self.hosts) - 1 - self.hosts.index(host)


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}.get(
        type(value), "a table" if isinstance(value, dict) else type(value).__name__
    )


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFleet(f"{key}: expected a number of seconds, got {_type_name(value)} ({value!r})")
    return float(value)


def _interval(key: str, value: object) -> float:
    seconds = _number(key, value)
    if not interval_in_bounds(seconds):
        raise InvalidFleet(f"{key}: the heartbeat interval must be {BOUNDS_TEXT}, got {seconds:g}")
    return seconds


def _string(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidFleet(f"{key}: expected a string, got {_type_name(value)} ({value!r})")
    return value


def _hosts(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidFleet(f"{key}: expected a non-empty list of host names, got {value!r}")
    seen: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise InvalidFleet(f"{key}: expected host names (strings), got {_type_name(item)} ({item!r})")
        if not valid_host(item):
            raise InvalidFleet(f"{key}: invalid host name {item!r}: use letters, digits, '.', '_' or '-'")
        if item in seen:
            raise InvalidFleet(f"{key}: duplicate host {item!r} (each host appears once per exchange)")
        seen.append(item)
    return tuple(seen)


def _connector(key: str, table: Mapping[str, Any]) -> ConnectorSpec:
    """The connector an exchange names: ``exec = …`` (process) or ``connector = "simulated"``."""
    fields: dict[str, object] = {}
    if "restart" in table:
        restart = _string(f"{key}.restart", table["restart"])
        if restart not in ("no", "on-failure"):
            raise InvalidFleet(f"{key}.restart: must be 'no' or 'on-failure', got {restart!r}")
        fields["restart"] = restart
    options = [k for k in _PROCESS_KEYS if k in table]
    if "exec" in table:
        if "connector" in table:
            raise InvalidFleet(f"{key}: exec and connector exclude each other: name one connector")
        fields.update(kind="process", command=_string(f"{key}.exec", table["exec"]))
        for name in options:
            value = table[name]
            if name in ("ready_timeout", "stop_grace"):
                value = _number(f"{key}.{name}", value)
            else:
                value = _string(f"{key}.{name}", value)
            fields[_PROCESS_KEYS[name]] = value
    elif "connector" in table:
        kind = table["connector"]
        if kind != "simulated":
            raise InvalidFleet(
                f"{key}.connector: only 'simulated' is a named connector, got {kind!r} "
                '(a real connector is a command: exec = "…")'
            )
        if options:
            raise InvalidFleet(f'{key}.{options[0]}: only with exec = "…" (it configures that command)')
    else:
        raise InvalidFleet(f'{key}: no connector: add exec = "COMMAND" or connector = "simulated"')
    try:
        return ConnectorSpec.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _FIELD_KEYS.get(str(first["loc"][0]), "exec") if first["loc"] else "exec"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidFleet(f"{key}.{where}: {message}") from None


#: A fleet file is a few lines per exchange: far below these, and a file past them is a mistake (a
#: device such as /dev/zero, a binary, a generated file gone wrong), refused before it is parsed.
MAX_FLEET_BYTES = 1_048_576
MAX_FLEET_DEPTH = 16


def read_fleet_file(path: Path) -> str:
    """The text of a fleet file, bounded: at most :data:`MAX_FLEET_BYTES`, UTF-8, TOML nested at most
    :data:`MAX_FLEET_DEPTH` deep. InvalidFleet names the limit in one line."""
    try:
        with path.open("rb") as source:
            data = source.read(MAX_FLEET_BYTES + 1)
    except OSError as exc:
        raise InvalidFleet(f"cannot read the fleet file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FLEET_BYTES:
        raise InvalidFleet(f"the fleet file {path} is larger than the limit of {MAX_FLEET_BYTES:,} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidFleet(f"the fleet file {path} is not UTF-8 text (byte {exc.start} is not)") from None
    load_fleet_toml(text)  # syntax and depth too, before any server is contacted
    return text


def load_fleet_toml(text: str) -> dict[str, Any]:
    """The TOML document of a fleet file, bounded in size and depth (InvalidFleet names the limit)."""
    too_deep = InvalidFleet(
        f"the fleet file nests tables or arrays past the limit of {MAX_FLEET_DEPTH} levels"
    )
    if len(text.encode()) > MAX_FLEET_BYTES:
        raise InvalidFleet(f"the fleet file is larger than the limit of {MAX_FLEET_BYTES:,} bytes")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidFleet(f"not a valid TOML file: {exc}") from None
    except RecursionError:  # the parser recurses per level: thousands of levels exhaust the stack
        raise too_deep from None
    if _depth(doc) > MAX_FLEET_DEPTH:
        raise too_deep
    return doc


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def parse_fleet(
    text: str, known_exchanges: Collection[str], *, default_interval_s: float = DEFAULT_INTERVAL_S
) -> list[Placement]:
    """Every placement of a fleet file, sorted by exchange; the whole file is checked first.

    Raises :class:`InvalidFleet` with one line that starts with the offending key (``exchanges.kraken
    .hosts: …``) for: TOML syntax, an unknown key, a wrong type, an exchange not in
    ``known_exchanges`` (active catalog names), a heartbeat interval that is not finite or outside
    [0.5 s, 1 h], an empty or duplicated host, a missing or doubly named connector, and any option
    the process connector refuses. ``default_interval_s`` applies when the file names no interval.
    """
    doc = load_fleet_toml(text)
    if unknown := sorted(set(doc) - _TOP_KEYS):
        raise InvalidFleet(f"{unknown[0]}: unknown key (expected heartbeat_interval, admin_email, exchanges)")
    default_interval = (
        _interval("heartbeat_interval", doc["heartbeat_interval"])
        if "heartbeat_interval" in doc
        else default_interval_s
    )
    default_admin = _string("admin_email", doc["admin_email"]) if "admin_email" in doc else None
    tables = doc.get("exchanges")
    if not isinstance(tables, dict) or not tables:
        raise InvalidFleet("exchanges: no exchange declared: add a table such as [exchanges.coinbase]")
    known = sorted(known_exchanges)
    placements: dict[str, Placement] = {}
    for name, table in tables.items():
        key = f"exchanges.{name}"
        exchange = name.lower()
        if exchange not in known:
            raise InvalidFleet(f"{key}: unknown exchange {name!r}; known exchanges: {', '.join(known)}")
        if exchange in placements:
            raise InvalidFleet(f"{key}: {exchange} is declared twice")
        if not isinstance(table, dict):
            raise InvalidFleet(f"{key}: expected a table, got {_type_name(table)} ({table!r})")
        if unknown := sorted(set(table) - _EXCHANGE_KEYS):
            raise InvalidFleet(f"{key}.{unknown[0]}: unknown key")
        if "hosts" not in table:
            raise InvalidFleet(f"{key}.hosts: missing: list the hosts in order of preference")
        hosts = _hosts(f"{key}.hosts", table["hosts"])
        warm = table.get("warm", False)
        if not isinstance(warm, bool):
            raise InvalidFleet(f"{key}.warm: expected true or false, got {_type_name(warm)} ({warm!r})")
        failsafe = table.get("failsafe", False)
        if not isinstance(failsafe, bool):
            raise InvalidFleet(
                f"{key}.failsafe: expected true or false, got {_type_name(failsafe)} ({failsafe!r})"
            )
        placements[exchange] = Placement(
            exchange=exchange,
            hosts=hosts,
            connector=_connector(key, table),
            heartbeat_interval_s=(
                _interval(f"{key}.heartbeat_interval", table["heartbeat_interval"])
                if "heartbeat_interval" in table
                else default_interval
            ),
            admin_email=(
                _string(f"{key}.admin_email", table["admin_email"])
                if "admin_email" in table
                else default_admin
            ),
            warm=warm,
            failsafe=failsafe,
        )
    return [placements[name] for name in sorted(placements)]


# --- what runs, and what to do about it -------------------------------------------------------------


class Instance(BaseModel):
    """A running instance workflow (any role), as observed."""

    model_config = ConfigDict(frozen=True)

    exchange: str
    host: str
    #: Whether it runs with the failsafe (it is in the exchange's roster); None: not read (a
    #: worker's own enrolment, which never touches a running instance anyway).
    failsafe: bool | None = None


class Observed(BaseModel):
    """One snapshot of the world that :func:`reconcile` decides on.

    ``stored``: the placements PostgreSQL held before this apply. ``instances``: the running instance
    workflows of the exchanges concerned. ``holders``: exchange → host that holds its claim now (the
    live status key). ``live_hosts``: hosts with a worker polling their queue.
    """

    stored: list[Placement] = Field(default_factory=list)
    instances: list[Instance] = Field(default_factory=list)
    holders: dict[str, str] = Field(default_factory=dict)
    live_hosts: frozenset[str] = frozenset()


class ChangeKind(StrEnum):
    STORE = "store"  # write the exchange's placement (new or changed)
    REGISTER_ACTIVE = "register-active"  # register on the host and start it
    REGISTER_STANDBY = "register-standby"  # register on the host as a standby with a priority
    WAIT = "wait"  # the host has no worker: its worker enrols it when it starts
    SHUTDOWN = "shutdown"  # shut the instance down (prune: the file no longer names it)
    FORGET = "forget"  # delete the exchange's stored placement (prune)
    #: The instance runs with the failsafe the file no longer gives it: reported, not restarted.
    FAILSAFE_DIFFERS = "failsafe-differs"


class Change(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: ChangeKind
    exchange: str
    host: str | None = None
    priority: int = 0
    #: For FAILSAFE_DIFFERS: the failsafe the file gives the exchange (the instance runs without it).
    failsafe: bool | None = None

    @property
    def changes(self) -> bool:
        """Whether carrying it out changes anything (WAIT and FAILSAFE_DIFFERS only report)."""
        return self.kind not in (ChangeKind.WAIT, ChangeKind.FAILSAFE_DIFFERS)

    def describe(self) -> str:
        match self.kind:
            case ChangeKind.STORE:
                return f"{self.exchange}: store the placement"
            case ChangeKind.REGISTER_ACTIVE:
                return f"{self.exchange}: register on {self.host} and start it (active)"
            case ChangeKind.REGISTER_STANDBY:
                return f"{self.exchange}: register on {self.host} as a standby (priority {self.priority})"
            case ChangeKind.WAIT:
                return f"{self.exchange}: {self.host} has no worker; it enrols when its worker starts"
            case ChangeKind.SHUTDOWN:
                return f"{self.exchange}: shut down the instance on {self.host} (no longer in the file)"
            case ChangeKind.FORGET:
                return f"{self.exchange}: forget the placement (no longer in the file)"
            case ChangeKind.FAILSAFE_DIFFERS:
                wanted, runs = ("on", "off") if self.failsafe else ("off", "on")
                return (
                    f"{self.exchange}: failsafe {wanted} in the file, {runs} in the instance on {self.host}: "
                    f"not restarted behind your back, and nothing registered beside it (an exchange's "
                    f"instances all have the failsafe or none has) — perseus shutdown {self.exchange} "
                    f"--host {self.host}, then apply again"
                )


def reconcile(desired: Iterable[Placement], observed: Observed, *, prune: bool = False) -> list[Change]:
    """What to do so that ``desired`` runs, given ``observed``. Plain values in, actions out.

    Invariants (tests/unit/test_fleet.py checks each, over many snapshots):

    1. A running instance of a desired (exchange, host) gets no action that changes it, whatever its role:
       applying a file that already runs changes nothing (no new epoch, no transition), and there is
       no failback to the preferred host (it would flap; ``fleet status`` shows the drift).
    2. At most one REGISTER_ACTIVE per exchange, and none while the exchange has a holder or any
       running instance (a running standby takes a vacant exchange by itself). It goes to the first
       live host in preference order; every other live host without an instance gets
       REGISTER_STANDBY with :meth:`Placement.priority`.
    3. Nothing is registered on a host without a worker: it gets WAIT, and enrols at its worker's start.
    4. SHUTDOWN and FORGET only with ``prune``, and only for what the *stored* placements named and
       ``desired`` no longer does: an instance registered by hand is never pruned.
    5. Order: exchanges by name; within one, STORE, REGISTER_ACTIVE, REGISTER_STANDBY (preference
       order), WAIT, FAILSAFE_DIFFERS, then SHUTDOWN — a new standby exists before a pruned active
       one goes away.
       Exchanges dropped from the file come last (SHUTDOWN then FORGET).
    6. STORE when the placement differs from the stored one (new or changed), never otherwise.
    7. A running instance whose failsafe differs from the placement's (when it was read) gets
       FAILSAFE_DIFFERS, which only reports — like a changed connector or interval it is not
       restarted (invariant 1) — and the exchange gets no registration at all while one differs:
       every instance of an exchange has the failsafe or none has, and the door refuses a mix.
    """
    wanted = {p.exchange: p for p in desired}
    stored = {p.exchange: p for p in observed.stored}
    running: dict[str, set[str]] = {}
    failsafe: dict[tuple[str, str], bool | None] = {}
    for inst in observed.instances:
        running.setdefault(inst.exchange, set()).add(inst.host)
        failsafe[(inst.exchange, inst.host)] = inst.failsafe
    actions: list[Change] = []
    for exchange in sorted(wanted):
        placement = wanted[exchange]
        if stored.get(exchange) != placement:
            actions.append(Change(kind=ChangeKind.STORE, exchange=exchange))
        here = running.get(exchange, set())
        occupied = exchange in observed.holders or bool(here)
        differs = [
            h
            for h in sorted(here)
            if (runs := failsafe.get((exchange, h))) is not None and runs != placement.failsafe
        ]
        waiting: list[Change] = []
        for host in placement.hosts:
            if host in here:
                continue
            if host not in observed.live_hosts:
                waiting.append(Change(kind=ChangeKind.WAIT, exchange=exchange, host=host))
            elif differs:
                continue  # it would be refused at the door: the differing instances are listed below
            elif not occupied:
                actions.append(Change(kind=ChangeKind.REGISTER_ACTIVE, exchange=exchange, host=host))
                occupied = True
            else:
                actions.append(
                    Change(
                        kind=ChangeKind.REGISTER_STANDBY,
                        exchange=exchange,
                        host=host,
                        priority=placement.priority(host),
                    )
                )
        actions.extend(waiting)
        actions.extend(
            Change(kind=ChangeKind.FAILSAFE_DIFFERS, exchange=exchange, host=h, failsafe=placement.failsafe)
            for h in differs
        )
        if prune and exchange in stored:
            dropped = [h for h in stored[exchange].hosts if h not in placement.hosts and h in here]
            actions.extend(Change(kind=ChangeKind.SHUTDOWN, exchange=exchange, host=h) for h in dropped)
    if prune:
        for exchange in sorted(set(stored) - set(wanted)):
            here = running.get(exchange, set())
            actions.extend(
                Change(kind=ChangeKind.SHUTDOWN, exchange=exchange, host=h)
                for h in stored[exchange].hosts
                if h in here
            )
            actions.append(Change(kind=ChangeKind.FORGET, exchange=exchange))
    return actions


def enrol_plan(placements: Iterable[Placement], host: str, observed: Observed) -> list[Change]:
    """What the worker of ``host`` does at start: the registrations :func:`reconcile` gives *this* host
    when it is the only live one (active if nobody holds the exchange, else a standby). Never stores,
    never prunes, never touches another host."""
    mine = [p for p in placements if host in p.hosts]
    seen = observed.model_copy(update={"stored": mine, "live_hosts": frozenset({host})})
    return [
        a
        for a in reconcile(mine, seen)
        if a.host == host and a.kind in (ChangeKind.REGISTER_ACTIVE, ChangeKind.REGISTER_STANDBY)
    ]


# --- drain ---------------------------------------------------------------------------------------


class Standby(BaseModel):
    """A live standby record, as read from Redis (highest priority first)."""

    model_config = ConfigDict(frozen=True)

    host: str
    priority: int


class DrainStep(BaseModel):
    model_config = ConfigDict(frozen=True)

    exchange: str
    action: Literal["handoff", "shutdown"]
    to_host: str | None = None


def drain_plan(
    host: str, holders: Mapping[str, str], standbys: Mapping[str, list[Standby]], *, force: bool
) -> list[DrainStep]:
    """Hand every exchange ``host`` holds to its best live standby on another host.

    Invariants: only exchanges whose holder is ``host`` appear, one step each, by name. The target is
    the highest-priority standby not on ``host``. An exchange without one is refused — the whole
    drain raises :class:`InvalidFleet` naming it, before anything changes — unless ``force``, which
    turns it into a shutdown.
    """
    steps: list[DrainStep] = []
    refused: list[str] = []
    for exchange in sorted(e for e, h in holders.items() if h == host):
        others = [s for s in standbys.get(exchange, []) if s.host != host]
        if others:
            best = max(others, key=lambda s: s.priority)
            steps.append(DrainStep(exchange=exchange, action="handoff", to_host=best.host))
        elif force:
            steps.append(DrainStep(exchange=exchange, action="shutdown"))
        else:
            refused.append(exchange)
    if refused:
        raise InvalidFleet(
            f"no live standby for {', '.join(refused)} on another host: nothing drained "
            "(register a standby first, or --force to shut those down)"
        )
    return steps


# --- a worker that has to wait for its servers (its enrolment, its first Temporal connection) ------

#: The first wait after an attempt found a server down, and the longest: a server that comes back
#: is noticed within this cap, and a long outage costs one cheap attempt per cap.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0


class RetryWait(BaseModel):
    """Where a retried step stands: done (``why`` None) or waiting for ``why`` to go away after
    ``attempts`` failed attempts. Immutable; :func:`retry_after` / :func:`retry_over`
    give the next one."""

    model_config = ConfigDict(frozen=True)

    attempts: int = 0
    why: str | None = None
    #: What kind of failure ``why`` is (the server, else the error class): a new log line is owed
    #: only when this changes, not when the same outage words its message differently.
    kind: str | None = None


def retry_after(wait: RetryWait, kind: str, why: str) -> tuple[RetryWait, float, str | None]:
    """An attempt failed for ``why``: the next state, the delay before the next attempt, and the
    line to log (None while it is the same outage as before — one line per change, not per try)."""
    delay = doubling_delay(RETRY_FIRST_S, wait.attempts, RETRY_MAX_S)
    line = None if kind == wait.kind else f"waiting: {why} (retrying every {RETRY_MAX_S:g}s at most)"
    return RetryWait(attempts=wait.attempts + 1, why=why, kind=kind), delay, line


def retry_over(wait: RetryWait) -> tuple[RetryWait, str | None]:
    """An attempt went through: back to done, and the line that says the wait is over (if any)."""
    if wait.kind is None:
        return wait, None
    return RetryWait(), f"done after {wait.attempts} failed attempt(s) (last: {wait.why})"
