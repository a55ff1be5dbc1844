"""Settings: read once from ``PERSEUS_*`` at the edge, validated, then passed down as values.

Temporal's own connection settings (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``,
TLS profiles) are not duplicated here: :mod:`perseus.temporal` reads them through
``temporalio.envconfig`` so that Perseus connects exactly as the ``temporal`` CLI would.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, Field, RedisDsn, SecretStr, UrlConstraints, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from perseus.errors import ConfigError

#: Where the embedded stack listens unless told otherwise; the same defaults every command uses.
DEFAULT_REDIS_PORT = 7379
DEFAULT_POSTGRES_PORT = 7432
DEFAULT_TEMPORAL_PORT = 7233
DEFAULT_TEMPORAL_UI_PORT = 8233
DEFAULT_API_PORT = 8700

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


class Settings(BaseSettings):
    """Perseus' own settings. Defaults point at the embedded stack that ``perseus dev`` starts."""

    model_config = SettingsConfigDict(env_prefix="PERSEUS_", extra="ignore", frozen=True)

    redis_url: RedisUrl = Field(default=RedisUrl(f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0"))
    database_url: str = f"postgresql://postgres@127.0.0.1:{DEFAULT_POSTGRES_PORT}/perseus"
    heartbeat_interval: float = 15.0
    discord_webhook_url: AnyHttpUrl | None = None
    hostname: str | None = None
    ip_services: list[AnyHttpUrl] = Field(default_factory=list)
    ip_timeout: float = 3.0
    api_host: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    data_dir: Path = Path(".perseus")
    api_key: SecretStr | None = None
    #: Logging for ``perseus worker``, ``api`` and ``dev``: a level name, and plain text or JSON lines.
    log_level: str = "INFO"
    log_format: Literal["plain", "json"] = "plain"
    #: Tests only: where connectors journal connect/disconnect/validity (the invariant checker reads it).
    connector_journal: Path | None = None

    @field_validator("heartbeat_interval")
    @classmethod
    def _positive_interval(cls, value: float) -> float:
        if not value > 0:
            raise ValueError("must be a number of seconds greater than 0")
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

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        check_database_url(value)
        return value

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

    def explicitly_set(self, field: str) -> bool:
        return field in self.model_fields_set


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; a bad value becomes one ConfigError line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "PERSEUS_" + str(first["loc"][0]).upper() if first["loc"] else "PERSEUS_*"
        raise ConfigError(f"{name}: {first['msg']}") from None
    except (json.JSONDecodeError, ValueError) as exc:  # pydantic-settings fails on bad JSON lists
        raise ConfigError(f"invalid PERSEUS_* setting: {exc}") from None


def _is_local_host(host: str | None) -> bool:
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_TLS_MODES = {"require", "verify-ca", "verify-full"}


def check_database_url(url: str) -> None:
    """Refuse a PostgreSQL URL that would talk in plain text to a host that is not this machine.

    Loopback addresses and unix sockets may be plain; anything else needs ``sslmode=require`` or
    stricter. Raises ValueError with the reason.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ValueError("must be a postgresql:// URL")
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    host = query.get("host") or parts.hostname
    if _is_local_host(host):
        return
    if query.get("sslmode") not in _TLS_MODES:
        raise ValueError(
            f"database host {host} is not local: add sslmode=require (or verify-ca/verify-full) to the URL"
        )
