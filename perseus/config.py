"""Settings: read once from ``PERSEUS_*`` at the edge, validated, then passed down as values.

Temporal's own connection settings (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``,
TLS profiles) are not duplicated here: :mod:`perseus.temporal` reads them through
``temporalio.envconfig`` so that Perseus connects exactly as the ``temporal`` CLI would.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    Field,
    PrivateAttr,
    RedisDsn,
    SecretStr,
    UrlConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from perseus.errors import ConfigError
from perseus.models import NotifyChannel
from perseus.store.redis_url import is_sentinel_url, parse_sentinel_url
from perseus.timing import BOUNDS_TEXT, DEFAULT_INTERVAL_S, STICKY_TIMEOUT_S, interval_in_bounds

#: Where the embedded stack listens unless told otherwise; the same defaults every command uses.
DEFAULT_REDIS_PORT = 7379
DEFAULT_POSTGRES_PORT = 7432
DEFAULT_TEMPORAL_PORT = 7233
DEFAULT_TEMPORAL_UI_PORT = 8233
DEFAULT_API_PORT = 8700
#: The role ``perseus dev`` makes for Perseus in its PostgreSQL (not a superuser).
DEV_DATABASE_ROLE = "perseus"
DEFAULT_DATABASE_URL = f"postgresql://{DEV_DATABASE_ROLE}@127.0.0.1:{DEFAULT_POSTGRES_PORT}/perseus"
DEFAULT_REDIS_URL = f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0"
#: The dev stack's server passwords, kept 0600 in the data dir beside its payload key.
DEV_POSTGRES_PASSWORD_FILE = "postgres.password"
DEV_REDIS_PASSWORD_FILE = "valkey.password"

#: Public-IP lookup services, tried in order until one answers (each answers with the caller's
#: address as plain text). On by default like Livermore's lookup; ``PERSEUS_IP_SERVICES=[]`` turns it
#: off. The whole lookup is bounded by ``PERSEUS_IP_TIMEOUT`` (2 s), not each service.
DEFAULT_IP_SERVICES = [
    "https://api.ipify.org",
    "https://checkip.amazonaws.com",
    "https://icanhazip.com",
]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class RedisUrl(RedisDsn):
    """A Redis URL; ``redis+cluster://`` / ``rediss+cluster://`` select a Redis Cluster client."""

    _constraints = UrlConstraints(
        allowed_schemes=["redis", "rediss", "redis+cluster", "rediss+cluster"],
        default_host="localhost",
        default_port=6379,
        default_path="/0",
        host_required=True,
    )


def _sentinel_url(value: str) -> str:
    """A ``redis+sentinel://`` URL, checked whole (several hosts: no pydantic URL type takes it)."""
    parse_sentinel_url(value)
    return value


#: ``redis+sentinel://host:port[,host:port…]/<master>[/db]``: a Sentinel-managed primary with replicas.
SentinelUrl = Annotated[str, AfterValidator(_sentinel_url)]


class Settings(BaseSettings):
    """Perseus' own settings. Defaults point at the embedded stack that ``perseus dev`` starts."""

    model_config = SettingsConfigDict(env_prefix="PERSEUS_", extra="ignore", frozen=True)

    redis_url: RedisUrl | SentinelUrl = Field(default=RedisUrl(DEFAULT_REDIS_URL), union_mode="left_to_right")
    database_url: str = DEFAULT_DATABASE_URL
    #: Accept sslmode=verify-ca (the certificate's chain, not its host name) for a remote database.
    database_allow_verify_ca: bool = False
    #: Accept a plain redis:// URL to another machine (a private network you trust).
    redis_allow_plaintext: bool = False
    heartbeat_interval: float = Field(default=DEFAULT_INTERVAL_S, allow_inf_nan=False)
    discord_webhook_url: AnyHttpUrl | None = None
    #: More channels (Slack, PagerDuty, generic webhooks, more Discord), each with its own filters.
    notify_channels: list[NotifyChannel] = Field(default_factory=list)
    hostname: str | None = None
    ip_services: list[AnyHttpUrl] = Field(
        default_factory=lambda: [AnyHttpUrl(url) for url in DEFAULT_IP_SERVICES]
    )
    #: Seconds for the whole public-IP lookup (all services together); then the IP is unknown.
    ip_timeout: float = 2.0
    #: How many claims and standby watches one host worker holds at once. Each holds an activity slot
    #: for as long as it lasts; the worker keeps more slots free beside them for connector steps and
    #: registrations (with the slots all held, the 2,000th instance of a fleet never started).
    host_capacity: int = Field(default=10_000, ge=1, le=1_000_000)
    #: The Temporal Web UI, for links in `perseus status` (perseus dev serves it here).
    temporal_ui_url: str = f"http://127.0.0.1:{DEFAULT_TEMPORAL_UI_PORT}"
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=DEFAULT_API_PORT, ge=1, le=65_535)
    data_dir: Path = Path(".perseus")
    api_key: SecretStr | None = None
    #: API mode: with this and ``api_key`` set, the CLI's commands go through the HTTP API (no
    #: Temporal, Redis or PostgreSQL access needed on this machine; perseus/client/remote.py).
    api_url: AnyHttpUrl | None = None
    #: Logging for ``perseus worker``, ``api`` and ``dev``: a level name, and plain text or JSON lines.
    log_level: str = "INFO"
    log_format: Literal["plain", "json"] = "plain"
    #: Write trace spans as JSON lines to this file (``perseus dev --trace``); see perseus/tracing.py.
    trace_file: Path | None = None
    #: A file of the connector commands this host may run (perseus/connectors/allow.py); unset: any
    #: command a workflow asks for (the worker warns at start). See docs/security.md.
    exec_allow: Path | None = None
    #: Benchmarks only: seconds a workflow task waits for the worker that has its run cached
    #: (``perseus.timing.STICKY_TIMEOUT_S`` says why that figure; ``bench.killed_worker`` compares
    #: others against it in one run). Not an operator's knob: leave it unset.
    sticky_timeout: float = Field(default=STICKY_TIMEOUT_S, gt=0, allow_inf_nan=False)
    #: Tests only: where connectors journal connect/disconnect/validity (the invariant checker reads it).
    connector_journal: Path | None = None
    #: AES-256-GCM key(s) for Temporal payloads (base64, 32 bytes; comma-separated to rotate: the
    #: first encrypts). See perseus/codec.py and docs/security.md.
    payload_key: SecretStr | None = None
    #: Without a key, Temporal payloads are refused unless this says plain text is wanted.
    payload_plaintext: bool = False
    #: Origins (the Temporal Web UI's) allowed to call the API's /codec endpoints from a browser.
    codec_cors_origins: list[str] = Field(default_factory=list)
    #: /codec answers without an API key. Only for an API on loopback (``perseus dev`` sets it).
    codec_allow_anonymous: bool = False
    #: Serve the OpenAPI description and its pages (/openapi.json, /docs, /redoc): off unless asked,
    #: they map the API for anyone who can reach it.
    api_docs: bool = False

    @field_validator("redis_url", mode="before")
    @classmethod
    def _sentinel_reason(cls, value: object) -> object:
        # Before the union: a malformed Sentinel URL is refused with its own reason, not with the
        # plain URL type's "scheme should be redis…".
        if isinstance(value, str) and is_sentinel_url(value):
            parse_sentinel_url(value)
        return value

    @field_validator("heartbeat_interval")
    @classmethod
    def _interval_in_bounds(cls, value: float) -> float:
        if not interval_in_bounds(value):
            raise ValueError(f"must be a number of seconds {BOUNDS_TEXT}, got {value:g}")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("ip_timeout")
    @classmethod
    def _positive_timeout(cls, value: float) -> float:
        if not value > 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("payload_key")
    @classmethod
    def _payload_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from perseus.codec import parse_keys

            try:
                parse_keys(value.get_secret_value())
            except ConfigError as exc:  # reported as ValueError so load_settings names the variable
                raise ValueError(str(exc).split(": ", 1)[1]) from None
        return value

    @model_validator(mode="after")
    def _transport(self) -> Settings:
        # After the fields: the opt-ins are settings of their own.
        try:
            check_database_url(self.database_url, allow_verify_ca=self.database_allow_verify_ca)
        except ValueError as exc:
            raise PydanticCustomError("database_url", "{reason}", {"reason": str(exc)}) from None
        try:
            check_redis_url(str(self.redis_url), allow_plaintext=self.redis_allow_plaintext)
        except ValueError as exc:
            raise PydanticCustomError("redis_url", "{reason}", {"reason": str(exc)}) from None
        return self

    @field_validator("notify_channels")
    @classmethod
    def _channels(cls, value: list[NotifyChannel]) -> list[NotifyChannel]:
        names = [c.name for c in value]
        if len(set(names)) != len(names):
            raise ValueError(f"channel names must differ: {', '.join(sorted(names))}")
        for channel in value:
            # Events name hosts, addresses and admins: never in clear text past this machine.
            url = urlsplit(str(channel.url)) if channel.url is not None else None
            if url is not None and url.scheme != "https" and not is_loopback_host(url.hostname):
                raise ValueError(f"channel {channel.name}: its url must be https:// (or on this machine)")
        return value

    @model_validator(mode="after")
    def _discord_named_once(self) -> Settings:
        if self.discord_webhook_url is not None and any(c.name == "discord" for c in self.notify_channels):
            raise PydanticCustomError(
                "notify_channels",
                "{reason}",
                {"reason": "the name 'discord' is PERSEUS_DISCORD_WEBHOOK_URL's channel: choose another"},
            )
        return self

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        from perseus.keys import valid_host

        if value is not None and not valid_host(value):
            raise ValueError("must be letters, digits, '.', '_' or '-' (at most 63)")
        return value

    def host_name(self) -> str:
        """This machine's instance host name: ``PERSEUS_HOSTNAME`` or the OS's."""
        return self.hostname or socket.gethostname()

    #: Fields whose value came from the dev stack's password files, not from the user.
    _from_data_dir: frozenset[str] = PrivateAttr(default=frozenset())

    def explicitly_set(self, field: str) -> bool:
        return field in self.model_fields_set and field not in self._from_data_dir


class OtelEnv(BaseSettings):
    """The OpenTelemetry variables that decide whether Perseus traces at all (:mod:`perseus.tracing`);
    the exporter reads the rest of ``OTEL_*`` (headers, service name…) itself."""

    model_config = SettingsConfigDict(env_prefix="OTEL_", extra="ignore", frozen=True)

    sdk_disabled: bool = False
    traces_exporter: str | None = None
    exporter_otlp_endpoint: str | None = None
    exporter_otlp_traces_endpoint: str | None = None


def load_otel_env() -> OtelEnv:
    try:
        return OtelEnv()
    except ValidationError as exc:
        raise ConfigError(f"invalid OTEL_* setting: {exc.errors()[0]['msg']}") from None


class SystemdEnv(BaseSettings):
    """What systemd tells a ``Type=notify`` service about itself (``sd_notify(3)``): set by systemd,
    never by a user, and absent outside it. Read once by the worker; see :mod:`perseus.host.systemd`."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    notify_socket: str | None = None
    watchdog_usec: int | None = None
    watchdog_pid: int | None = None


def load_systemd_env() -> SystemdEnv:
    try:
        return SystemdEnv()
    except ValidationError as exc:  # a malformed WATCHDOG_USEC, say: one line, as for our own settings
        raise ConfigError(f"invalid systemd environment: {exc.errors()[0]['msg']}") from None


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; a bad value becomes one ConfigError line naming the variable."""
    try:
        return with_dev_credentials(Settings(**overrides))  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        # A whole-model check names its field through the error type (see Settings._transport).
        field = first["loc"][0] if first["loc"] else first["type"]
        name = f"PERSEUS_{str(field).upper()}" if field in Settings.model_fields else "PERSEUS_*"
        raise ConfigError(f"{name}: {first['msg']}") from None
    except (json.JSONDecodeError, ValueError) as exc:  # pydantic-settings fails on bad JSON lists
        raise ConfigError(f"invalid PERSEUS_* setting: {exc}") from None


def _dev_secret(path: Path) -> str | None:
    """A password file of ``perseus dev``, if there is one that only its owner can read."""
    try:
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} is readable by others: chmod 600 it (it is a server password)")
        return path.read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def with_dev_credentials(settings: Settings) -> Settings:
    """Commands run beside ``perseus dev`` log in as it does: a server URL left at its default gets
    the password the dev stack keeps in the data dir (as the payload key is found there too)."""
    updates: dict[str, object] = {}
    if not settings.explicitly_set("database_url"):
        password = _dev_secret(settings.data_dir / DEV_POSTGRES_PASSWORD_FILE)
        if password is not None:
            updates["database_url"] = DEFAULT_DATABASE_URL.replace("@", f":{password}@", 1)
    if not settings.explicitly_set("redis_url"):
        password = _dev_secret(settings.data_dir / DEV_REDIS_PASSWORD_FILE)
        if password is not None:
            updates["redis_url"] = RedisUrl(DEFAULT_REDIS_URL.replace("//", f"//:{password}@", 1))
    if not updates:
        return settings
    filled = settings.model_copy(update=updates)
    filled._from_data_dir = frozenset(updates)
    return filled


def is_loopback_host(host: str | None) -> bool:
    """This machine for sure: a unix socket path, ``localhost`` or a loopback address. A name that
    merely resolves to one is not trusted (DNS is not asked)."""
    if not host:
        return False
    if host.startswith(("/", "@")) or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


#: The libpq environment variables that stand in for a parameter the URL leaves out.
_PG_ENV = {"host": "PGHOST", "hostaddr": "PGHOSTADDR", "sslmode": "PGSSLMODE", "service": "PGSERVICE"}


def database_targets(url: str, environ: Mapping[str, str] | None = None) -> tuple[list[str], str, bool]:
    """What the driver will really do with ``url``: the addresses it may connect to (``hostaddr``
    wins over ``host``, position by position; a missing or empty value falls back to ``PGHOST`` /
    ``PGHOSTADDR``, then to the local socket), the effective ``sslmode`` (URL, then ``PGSSLMODE``,
    then libpq's ``prefer``), and whether a service file (``service=``/``PGSERVICE``) may supply
    parameters we cannot see."""
    from perseus.store.db import conninfo_params

    env = os.environ if environ is None else environ
    params = conninfo_params(url)

    def effective(name: str) -> str:
        return params.get(name) or env.get(_PG_ENV[name], "")

    hosts = effective("host").split(",") if effective("host") else [""]
    addrs = effective("hostaddr").split(",") if effective("hostaddr") else []
    targets: list[str] = []
    for n in range(max(len(hosts), len(addrs))):
        addr = addrs[n].strip() if n < len(addrs) else ""
        host = hosts[n].strip() if n < len(hosts) else ""
        targets.append(addr or host or "/local-socket")  # libpq's default: the unix socket
    return targets, effective("sslmode") or "prefer", bool(effective("service"))


def check_database_url(
    url: str, *, allow_verify_ca: bool = False, environ: Mapping[str, str] | None = None
) -> None:
    """Refuse a PostgreSQL URL that would reach a host other than this machine without verifying
    the server: every address the driver may use (:func:`database_targets`) must be loopback or a
    unix socket, or ``sslmode`` must be ``verify-full`` (``verify-ca`` with ``allow_verify_ca``:
    PERSEUS_DATABASE_ALLOW_VERIFY_CA=1). ``require`` encrypts but accepts any server, so it is not
    enough. A service file hides the host, so it needs ``verify-full`` too. ValueError says why."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ValueError("must be a postgresql:// URL")
    targets, sslmode, service = database_targets(url, environ)
    remote = [t for t in targets if not is_loopback_host(t)]
    if not remote and not service:
        return
    accepted = {"verify-full", "verify-ca"} if allow_verify_ca else {"verify-full"}
    if sslmode in accepted:
        return
    where = f"database host {', '.join(remote)}" if remote else "a database from a service file"
    raise ValueError(
        f"{where} is not this machine and sslmode is {sslmode}: add sslmode=verify-full "
        "(and sslrootcert) to the URL"
        + ("" if allow_verify_ca else ", or sslmode=verify-ca with PERSEUS_DATABASE_ALLOW_VERIFY_CA=1")
    )


def check_redis_url(url: str, *, allow_plaintext: bool = False) -> None:
    """Refuse a Redis URL that would talk in plain text to another machine (``rediss://`` needed,
    unless PERSEUS_REDIS_ALLOW_PLAINTEXT=1). A ``host`` query parameter is refused outright: the
    client may prefer it to the URL's host, which would hide where it really connects."""
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        if target.ssl or allow_plaintext:
            return
        # The primary's address comes from the Sentinels at run time; the Sentinels' own are here.
        for host, _ in target.sentinels:
            if not is_loopback_host(host):
                raise ValueError(
                    f"Sentinel host {host} is not this machine: use rediss+sentinel:// (TLS), "
                    "or set PERSEUS_REDIS_ALLOW_PLAINTEXT=1 to accept plain text"
                )
        return
    parts = urlsplit(url)
    if "host" in {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)}:
        raise ValueError("a host= query parameter is not allowed: put the host in the URL")
    if parts.scheme.lower().startswith("rediss") or allow_plaintext:
        return
    if not is_loopback_host(parts.hostname):
        raise ValueError(
            f"Redis host {parts.hostname} is not this machine: use rediss:// (TLS), "
            "or set PERSEUS_REDIS_ALLOW_PLAINTEXT=1 to accept plain text"
        )
