"""Settings: validated once, one-line errors naming the variable; TLS enforced for remote databases."""

from __future__ import annotations

from pathlib import Path

import pytest

from perseus.config import check_database_url, load_settings
from perseus.errors import ConfigError

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("PERSEUS_", "PG")):
            monkeypatch.delenv(key)


def test_defaults_point_at_the_embedded_stack(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)  # no dev stack's password files there
    assert settings.heartbeat_interval == 15.0
    assert settings.host_capacity == 10_000  # well past one host's 2,000 claims of the fleet bench
    assert str(settings.redis_url) == "redis://127.0.0.1:7379/0"
    assert settings.database_url.startswith("postgresql://perseus@127.0.0.1:7432/")  # no superuser
    assert not settings.explicitly_set("redis_url")


def test_commands_beside_perseus_dev_log_in_with_the_passwords_it_keeps(tmp_path: Path) -> None:
    for name, secret in (("postgres.password", "pg-secret"), ("valkey.password", "kv-secret")):
        (tmp_path / name).write_text(secret + "\n")
        (tmp_path / name).chmod(0o600)
    settings = load_settings(data_dir=tmp_path)
    assert settings.database_url == "postgresql://perseus:pg-secret@127.0.0.1:7432/perseus"
    assert str(settings.redis_url) == "redis://:kv-secret@127.0.0.1:7379/0"
    # Still the defaults as far as `perseus dev` is concerned: it starts its own servers.
    assert not settings.explicitly_set("database_url") and not settings.explicitly_set("redis_url")
    # A URL the user gave is theirs, untouched.
    given = load_settings(data_dir=tmp_path, database_url="postgresql://me@127.0.0.1:5432/x")
    assert given.database_url == "postgresql://me@127.0.0.1:5432/x"
    # A password file others may read is refused, in one line naming it.
    (tmp_path / "valkey.password").chmod(0o644)
    with pytest.raises(ConfigError, match=r"valkey.password is readable by others: chmod 600"):
        load_settings(data_dir=tmp_path)


@pytest.mark.parametrize("port", ["0", "65536", "99999", "-1"])
def test_a_port_out_of_range_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, port: str
) -> None:
    monkeypatch.setenv("PERSEUS_API_PORT", port)
    with pytest.raises(ConfigError, match=r"^PERSEUS_API_PORT: ") as caught:
        load_settings()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "PERSEUS_HEARTBEAT_INTERVAL",
            "0",
            "PERSEUS_HEARTBEAT_INTERVAL: Value error, must be a number of seconds between 0.5 and 3600",
        ),
        ("PERSEUS_HEARTBEAT_INTERVAL", "soon", "PERSEUS_HEARTBEAT_INTERVAL"),
        ("PERSEUS_REDIS_URL", "http://nope", "PERSEUS_REDIS_URL"),
        ("PERSEUS_DATABASE_URL", "mysql://x/y", "must be a postgresql:// URL"),
        ("PERSEUS_DISCORD_WEBHOOK_URL", "not a url", "PERSEUS_DISCORD_WEBHOOK_URL"),
        ("PERSEUS_IP_SERVICES", '["ftp://x"]', "PERSEUS_IP_SERVICES"),
        ("PERSEUS_HOST_CAPACITY", "0", "PERSEUS_HOST_CAPACITY"),
        ("PERSEUS_HOST_CAPACITY", "many", "PERSEUS_HOST_CAPACITY"),
        ("PERSEUS_HOSTNAME", "bad host!", "PERSEUS_HOSTNAME"),
    ],
)
def test_bad_settings_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_explicit_settings_are_known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSEUS_REDIS_URL", "rediss://10.0.0.5:6379/1")
    monkeypatch.setenv("PERSEUS_IP_SERVICES", '["http://127.0.0.1:9/ip"]')
    settings = load_settings()
    assert settings.explicitly_set("redis_url")
    assert [str(u) for u in settings.ip_services] == ["http://127.0.0.1:9/ip"]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@127.0.0.1:5432/db",
        "postgresql://u@localhost/db",
        "postgresql://u@[::1]:5432/db",
        "postgresql:///db?host=/var/run/postgresql",
        "postgresql:///db",
        "postgresql://u@127.0.0.1,localhost/db",
        "postgresql://u@localhost/db?hostaddr=127.0.0.1",
        "postgresql://u@db.example.com/db?sslmode=verify-full",
        "postgresql://u@10.1.2.3/db?sslmode=verify-full",
    ],
)
def test_local_or_verified_tls_database_urls_pass(url: str) -> None:
    check_database_url(url, environ={})


@pytest.mark.parametrize(
    ("url", "environ"),
    [
        ("postgresql://u@db.example.com/db", {}),
        ("postgresql://u@10.1.2.3/db?sslmode=prefer", {}),
        ("postgresql://u@db.example.com/db?sslmode=disable", {}),
        # `require` encrypts but accepts any server: a man in the middle reads everything.
        ("postgresql://u@db.example.com/db?sslmode=require", {}),
        # A loopback `host` with a remote `hostaddr`: libpq connects to hostaddr.
        ("postgresql://u@127.0.0.1/db?hostaddr=10.0.0.5", {}),
        ("postgresql://u@localhost/db?hostaddr=10.0.0.5&sslmode=require", {}),
        # No host in the URL (or an empty one): libpq takes PGHOST / PGHOSTADDR from the environment.
        ("postgresql:///db", {"PGHOST": "db.example.com"}),
        ("postgresql://@/db?host=", {"PGHOST": "10.0.0.5"}),
        ("postgresql://u@localhost/db", {"PGHOSTADDR": "10.0.0.5"}),
        # Several hosts: every one the driver may try counts.
        ("postgresql://u@127.0.0.1,db.example.com/db", {}),
        ("postgresql://u@localhost,localhost/db?hostaddr=127.0.0.1,10.0.0.5", {}),
        # A service file may name any host: it needs verify-full.
        ("postgresql://u@localhost/db?service=prod", {}),
        ("postgresql://u@localhost/db", {"PGSERVICE": "prod"}),
        # PGSSLMODE is the effective mode when the URL says none.
        ("postgresql://u@db.example.com/db", {"PGSSLMODE": "require"}),
        # verify-ca needs its explicit opt-in.
        ("postgresql://u@db.example.com/db?sslmode=verify-ca", {}),
    ],
)
def test_every_tls_bypass_is_refused(url: str, environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="is not this machine"):
        check_database_url(url, environ=environ)


def test_verify_ca_with_opt_in_and_pgsslmode_verify_full_pass() -> None:
    check_database_url("postgresql://u@db.example.com/db?sslmode=verify-ca", allow_verify_ca=True, environ={})
    check_database_url("postgresql://u@db.example.com/db", environ={"PGSSLMODE": "verify-full"})


def test_remote_database_refusal_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSEUS_DATABASE_URL", "postgresql://u@127.0.0.1/db?hostaddr=10.0.0.5")
    with pytest.raises(ConfigError, match="PERSEUS_DATABASE_URL: database host 10.0.0.5 is not this machine"):
        load_settings()
    monkeypatch.setenv("PERSEUS_DATABASE_URL", "postgresql://u@db.example.com/db?sslmode=verify-ca")
    with pytest.raises(ConfigError, match="PERSEUS_DATABASE_ALLOW_VERIFY_CA"):
        load_settings()
    monkeypatch.setenv("PERSEUS_DATABASE_ALLOW_VERIFY_CA", "1")
    assert load_settings().database_allow_verify_ca


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("redis://localhost/0", True),
        ("redis+cluster://[::1]:7000", True),
        ("rediss://cache.example.com:6380/0", True),
        ("rediss+cluster://10.0.0.7:7000", True),
        ("redis://cache.example.com:6379/0", False),
        ("redis+cluster://10.0.0.7:7000", False),
        ("redis://:pw@10.0.0.7:6379/0", False),
        ("redis://127.0.0.1:6379/0?host=10.0.0.7", False),
    ],
)
def test_remote_redis_needs_tls(monkeypatch: pytest.MonkeyPatch, url: str, ok: bool) -> None:
    monkeypatch.setenv("PERSEUS_REDIS_URL", url)
    if ok:
        load_settings()
        return
    with pytest.raises(ConfigError, match="PERSEUS_REDIS_URL: ") as info:
        load_settings()
    assert "pw" not in str(info.value)
    if "host=" not in url:
        monkeypatch.setenv("PERSEUS_REDIS_ALLOW_PLAINTEXT", "1")
        assert load_settings().redis_allow_plaintext


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e-9", "0.49", "3601", "0", "-3"])
def test_heartbeat_interval_must_be_finite_and_in_bounds(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PERSEUS_HEARTBEAT_INTERVAL", value)
    with pytest.raises(ConfigError, match="PERSEUS_HEARTBEAT_INTERVAL: ") as info:
        load_settings()
    assert "\n" not in str(info.value)


def test_payload_key_is_checked_and_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSEUS_PAYLOAD_KEY", "c2hvcnQta2V5")
    with pytest.raises(ConfigError, match="PERSEUS_PAYLOAD_KEY: .*must be 32 bytes") as info:
        load_settings()
    assert "c2hvcnQta2V5" not in str(info.value)


def test_public_ip_lookup_is_on_by_default_and_off_with_an_empty_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from perseus.config import DEFAULT_IP_SERVICES

    assert [str(u).rstrip("/") for u in load_settings().ip_services] == DEFAULT_IP_SERVICES
    assert load_settings().ip_timeout == 2.0
    monkeypatch.setenv("PERSEUS_IP_SERVICES", "[]")
    assert load_settings().ip_services == []


def test_the_sticky_timeout_is_the_timing_modules_unless_a_benchmark_sets_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from perseus.timing import STICKY_TIMEOUT_S

    assert load_settings().sticky_timeout == STICKY_TIMEOUT_S
    monkeypatch.setenv("PERSEUS_STICKY_TIMEOUT", "0.3")
    assert load_settings().sticky_timeout == 0.3
    for bad in ("0", "-1", "nan", "inf"):
        monkeypatch.setenv("PERSEUS_STICKY_TIMEOUT", bad)
        with pytest.raises(ConfigError, match="PERSEUS_STICKY_TIMEOUT"):
            load_settings()
