"""Settings: validated once, one-line errors naming the variable; TLS enforced for remote databases."""

from __future__ import annotations

import pytest

from perseus.config import check_database_url, load_settings
from perseus.errors import ConfigError

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PERSEUS_"):
            monkeypatch.delenv(key)


def test_defaults_point_at_the_embedded_stack() -> None:
    settings = load_settings()
    assert settings.heartbeat_interval == 15.0
    assert str(settings.redis_url) == "redis://127.0.0.1:7379/0"
    assert settings.database_url.startswith("postgresql://postgres@127.0.0.1:7432/")
    assert not settings.explicitly_set("redis_url")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "PERSEUS_HEARTBEAT_INTERVAL",
            "0",
            "PERSEUS_HEARTBEAT_INTERVAL: Value error, must be a number of seconds",
        ),
        ("PERSEUS_HEARTBEAT_INTERVAL", "-3", "greater than 0"),
        ("PERSEUS_HEARTBEAT_INTERVAL", "soon", "PERSEUS_HEARTBEAT_INTERVAL"),
        ("PERSEUS_REDIS_URL", "http://nope", "PERSEUS_REDIS_URL"),
        ("PERSEUS_DATABASE_URL", "mysql://x/y", "must be a postgresql:// URL"),
        ("PERSEUS_DISCORD_WEBHOOK_URL", "not a url", "PERSEUS_DISCORD_WEBHOOK_URL"),
        ("PERSEUS_IP_SERVICES", '["ftp://x"]', "PERSEUS_IP_SERVICES"),
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
    monkeypatch.setenv("PERSEUS_REDIS_URL", "redis://10.0.0.5:6379/1")
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
        "postgresql://u@db.example.com/db?sslmode=require",
        "postgresql://u@10.1.2.3/db?sslmode=verify-full",
    ],
)
def test_local_or_tls_database_urls_pass(url: str) -> None:
    check_database_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@db.example.com/db",
        "postgresql://u@10.1.2.3/db?sslmode=prefer",
        "postgresql://u@db.example.com/db?sslmode=disable",
    ],
)
def test_remote_database_without_tls_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    with pytest.raises(ValueError, match="not local: add sslmode=require"):
        check_database_url(url)
    monkeypatch.setenv("PERSEUS_DATABASE_URL", url)
    with pytest.raises(ConfigError, match="PERSEUS_DATABASE_URL: Value error, database host .* is not local"):
        load_settings()


def test_public_ip_lookup_is_on_by_default_and_off_with_an_empty_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from perseus.config import DEFAULT_IP_SERVICES

    assert [str(u).rstrip("/") for u in load_settings().ip_services] == DEFAULT_IP_SERVICES
    assert load_settings().ip_timeout == 2.0
    monkeypatch.setenv("PERSEUS_IP_SERVICES", "[]")
    assert load_settings().ip_services == []
