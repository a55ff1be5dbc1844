"""Sentinel URLs (perseus/store/redis_url.py) and PERSEUS_REDIS_URL's acceptance of them."""

from __future__ import annotations

import pytest

from perseus.config import load_settings
from perseus.errors import ConfigError
from perseus.store.redis_url import SentinelTarget, is_sentinel_url, parse_sentinel_url

pytestmark = pytest.mark.unit


def test_a_full_sentinel_url() -> None:
    url = "rediss+sentinel://app:p%40ss@s1.example:26379,[::1]:26380/cache/3?wait_replicas=2&sentinel_auth=1"
    assert parse_sentinel_url(url) == SentinelTarget(
        sentinels=(("s1.example", 26379), ("::1", 26380)),
        master="cache",
        db=3,
        username="app",
        password="p@ss",
        ssl=True,
        wait_replicas=2,
        sentinel_auth=True,
    )


def test_defaults_one_replica_acknowledges_db_zero_no_sentinel_auth() -> None:
    target = parse_sentinel_url("redis+sentinel://:pw@127.0.0.1:26379/mymaster")
    assert (target.db, target.wait_replicas, target.sentinel_auth, target.ssl) == (0, 1, False, False)
    assert (target.username, target.password) == (None, "pw")
    assert parse_sentinel_url("redis+sentinel://127.0.0.1:1/m?wait_replicas=0").wait_replicas == 0


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://127.0.0.1:6379/0", "not a Sentinel URL"),
        ("redis+sentinel:///m", "at least one Sentinel"),
        ("redis+sentinel://127.0.0.1/m", "needs a port"),
        ("redis+sentinel://127.0.0.1:0/m", "no valid port"),
        ("redis+sentinel://127.0.0.1:26379", "names its master"),
        ("redis+sentinel://127.0.0.1:26379/m/x", "/<master name>[/<db number>]"),
        ("redis+sentinel://127.0.0.1:26379/m/1/2", "/<master name>[/<db number>]"),
        ("redis+sentinel://127.0.0.1:26379/m?wait_replicas=-1", "whole number"),
        ("redis+sentinel://127.0.0.1:26379/m?host=10.0.0.1", "unknown Sentinel URL option"),
        ("redis+sentinel://127.0.0.1:26379/m?sentinel_auth=maybe", "sentinel_auth must be"),
    ],
)
def test_bad_sentinel_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_sentinel_url(url)


def test_is_sentinel_url() -> None:
    assert is_sentinel_url("REDIS+SENTINEL://h:1/m") and is_sentinel_url("rediss+sentinel://h:1/m")
    assert not is_sentinel_url("redis+cluster://h:1") and not is_sentinel_url("redis://h:1/0")


def test_settings_take_a_sentinel_url_as_given() -> None:
    url = "redis+sentinel://:pw@127.0.0.1:26379,localhost:26380/perseus/0"
    assert str(load_settings(redis_url=url).redis_url) == url
    # The plain kinds are still normalised as before.
    assert str(load_settings(redis_url="redis://localhost").redis_url) == "redis://localhost:6379/0"


def test_settings_refuse_a_bad_sentinel_url_with_its_own_reason() -> None:
    with pytest.raises(ConfigError, match="needs a port"):
        load_settings(redis_url="redis+sentinel://127.0.0.1/perseus")


def test_remote_sentinels_need_tls_or_the_opt_in() -> None:
    with pytest.raises(ConfigError, match="Sentinel host 10.0.0.7 is not this machine"):
        load_settings(redis_url="redis+sentinel://127.0.0.1:26379,10.0.0.7:26379/perseus")
    assert load_settings(redis_url="rediss+sentinel://10.0.0.7:26379/perseus")
    assert load_settings(redis_url="redis+sentinel://10.0.0.7:26379/perseus", redis_allow_plaintext=True)
