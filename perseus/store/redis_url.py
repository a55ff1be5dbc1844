"""Sentinel URLs: what ``redis+sentinel://`` names, parsed without a driver (pure).

``redis+sentinel://[user:pass@]host:port[,host:port…]/<master name>[/db][?wait_replicas=N]``
(``rediss+sentinel://`` for TLS to the data nodes). The credentials are the data nodes' (primary and
replicas); the Sentinels are asked without them unless ``sentinel_auth=1`` says they take the same.
``wait_replicas`` is how many replicas must acknowledge a claim, an epoch or a renewal before Perseus
counts it as done (``WAIT``; default 1, 0 turns it off): see docs/design.md, "Redis HA".
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["SENTINEL_SCHEMES", "SentinelTarget", "is_sentinel_url", "parse_sentinel_url"]

#: Scheme → whether the data nodes are spoken to over TLS.
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
#: Replicas that must acknowledge a claim or renewal behind Sentinel unless the URL says otherwise.
DEFAULT_WAIT_REPLICAS = 1
_OPTIONS = {"wait_replicas", "sentinel_auth"}


@dataclass(frozen=True)
class SentinelTarget:
    """Where a Sentinel-managed Redis is found and how to speak to it."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    wait_replicas: int = DEFAULT_WAIT_REPLICAS
    sentinel_auth: bool = False


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:26379
        host, sep, rest = item[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"Sentinel address {item!r} needs a port: [host]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = item.rpartition(":")
        if not sep:
            raise ValueError(f"Sentinel address {item!r} needs a port: host:port")
    if not host:
        raise ValueError(f"Sentinel address {item!r} has no host")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"Sentinel address {item!r} has no valid port")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The URL's parts; ValueError with a one-line reason when it is not a usable Sentinel URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL (expected {' or '.join(s + '://' for s in SENTINEL_SCHEMES)})")
    # urlsplit cannot take several hosts, so the authority is split by hand; the rest is a path.
    authority, _, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        hosts, userinfo = authority, ""
    if not hosts:
        raise ValueError("a Sentinel URL needs at least one Sentinel: host:port[,host:port…]")
    sentinels = tuple(_host_port(item.strip()) for item in hosts.split(","))
    parts = urlsplit("x://h/" + tail)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if not segments:
        raise ValueError("a Sentinel URL names its master: redis+sentinel://host:port/<master name>")
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise ValueError("a Sentinel URL's path is /<master name>[/<db number>]")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ValueError(
            f"unknown Sentinel URL option(s) {', '.join(sorted(unknown))}: use {', '.join(sorted(_OPTIONS))}"
        )
    wait_text = options.get("wait_replicas", str(DEFAULT_WAIT_REPLICAS))
    if not wait_text.isdigit():
        raise ValueError(f"wait_replicas must be a whole number of replicas, not {wait_text!r}")
    auth_text = options.get("sentinel_auth", "0").lower()
    if auth_text not in {"0", "1", "true", "false", "yes", "no"}:
        raise ValueError(f"sentinel_auth must be 0 or 1, not {auth_text!r}")
    username, colon, password = userinfo.partition(":")
    return SentinelTarget(
        sentinels=sentinels,
        master=segments[0],
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) if colon and password else None,
        ssl=SENTINEL_SCHEMES[scheme.lower()],
        wait_replicas=int(wait_text),
        sentinel_auth=auth_text in {"1", "true", "yes"},
    )
