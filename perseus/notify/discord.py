"""Discord webhook notifications: an embed per network event, paced by Discord's rate limits.

Delivery — once per event, rate limits shared across processes, a slow Discord never holding up a
transition — is :mod:`perseus.notify.delivery`'s, as for every channel; this module says what a
Discord message looks like and what Discord's limits are. The marker keys
(``notify:discord:{eventId}``) and the rate key (``notify:discord:rate:…``) are those of earlier
releases, so old and new workers share them during an upgrade.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from perseus.keys import iso
from perseus.models import EventKind, NetworkEvent
from perseus.notify.delivery import (
    SENT,
    Channel,
    RateLimiter,
    SharedRateLimiter,
    WebhookNotifier,
)
from perseus.notify.delivery import marker_key as channel_marker_key
from perseus.notify.delivery import rate_key as channel_rate_key
from perseus.store.redis_store import RedisStore

__all__ = [
    "COLOURS",
    "DISCORD_WINDOWS",
    "NOTIFIED",
    "SENT",
    "DiscordNotifier",
    "RateLimiter",
    "SharedRateLimiter",
    "discord_channel",
    "discord_limiter",
    "discord_notifier",
    "marker_key",
    "rate_key",
    "render",
]

log = logging.getLogger(__name__)

#: Embed colour per kind of event.
COLOURS: dict[EventKind, int] = {
    EventKind.STATE_TRANSITION: 0x3498DB,  # blue
    EventKind.ERROR: 0xE74C3C,  # red
    EventKind.CLAIM_CONFLICT: 0xE67E22,  # orange
    EventKind.INSTANCE_LOST: 0x992D22,  # dark red
    EventKind.STANDBY_REGISTERED: 0x95A5A6,  # grey
    EventKind.PROMOTED: 0x9B59B6,  # purple
    EventKind.HANDOFF: 0x1ABC9C,  # teal
    EventKind.COMMAND_REFUSED: 0xC27C0E,  # dark yellow
    EventKind.PAUSED: 0xF1C40F,  # yellow
    EventKind.RESUMED: 0x2ECC71,  # green
    EventKind.FAILSAFE_HOLDING: 0xF39C12,  # amber
    EventKind.FAILSAFE_ENDED: 0x27AE60,  # green
}

#: Kinds that produce a message. A standby registering changes nothing for anyone and is only logged.
# A refused command is written by the API or the CLI for the audit trail, not by an instance: it
# changed nothing, so it is not news for the channel.
NOTIFIED: frozenset[EventKind] = frozenset(COLOURS) - {
    EventKind.STANDBY_REGISTERED,
    EventKind.COMMAND_REFUSED,
}

_HEADLINES: dict[EventKind, str] = {
    EventKind.ERROR: "error",
    EventKind.CLAIM_CONFLICT: "claim refused",
    EventKind.INSTANCE_LOST: "instance lost",
    EventKind.STANDBY_REGISTERED: "standby registered",
    EventKind.PROMOTED: "standby promoted",
    EventKind.HANDOFF: "handoff",
    EventKind.COMMAND_REFUSED: "command refused",
    EventKind.PAUSED: "paused (no automatic failover)",
    EventKind.RESUMED: "resumed",
    EventKind.FAILSAFE_HOLDING: "failsafe: holding through a Redis outage",
    EventKind.FAILSAFE_ENDED: "failsafe: no longer holding",
}

_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\*_~`|>#[]()"})

#: The channel name of ``PERSEUS_DISCORD_WEBHOOK_URL`` (its marker keys are ``notify:discord:…``).
NAME = "discord"
#: Discord's documented limits for one webhook: (sends, per seconds). The headers of each answer
#: refine them; these keep every process inside them before the first answer says anything.
DISCORD_WINDOWS: tuple[tuple[int, float], ...] = ((5, 2.0), (30, 60.0))


def marker_key(event_id: str) -> str:
    return channel_marker_key(NAME, event_id)


def rate_key(url: str) -> str:
    """The Redis key of a webhook's shared rate window (a digest: the URL holds the webhook token)."""
    return channel_rate_key(NAME, url)


def discord_limiter(
    store: RedisStore, url: str, windows: tuple[tuple[int, float], ...] = DISCORD_WINDOWS
) -> SharedRateLimiter:
    """The limiter every process posting to the webhook at ``url`` shares."""
    return SharedRateLimiter(store, rate_key(url), windows)


def _md(text: str) -> str:
    return text.translate(_MARKDOWN)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(event: NetworkEvent) -> dict[str, Any]:
    """The webhook payload for one event (pure): an embed titled with the exchange, coloured by kind."""
    name = event.exchange_name
    if event.event is EventKind.STATE_TRANSITION:
        from_state = event.from_state.value if event.from_state else "?"
        to_state = event.to_state.value if event.to_state else "?"
        title = f"{name}: {from_state} → {to_state}"
        headline = f"State changed: **{from_state}** → **{to_state}**"
    elif event.event is EventKind.ERROR:
        title = f"{name}: error"
        while_ = f" while **{event.state.value}**" if event.state else ""
        headline = f"Error{while_}: {_md(_clip(event.error or 'unknown error', 1500))}"
    elif event.event is EventKind.COMMAND_REFUSED:
        title = f"{name}: {event.command or 'command'} refused"
        headline = _md(_clip(event.reason or "refused", 1500))
    else:
        title = f"{name}: {_HEADLINES[event.event]}"
        headline = _md(_clip(event.detail or _HEADLINES[event.event].capitalize(), 1500))
    lines = [
        headline,
        f"Host **{_md(event.hostname)}** ({_md(event.ip or 'IP unknown')}) · epoch **{event.epoch}**",
    ]
    if event.admin_email:
        lines.append(f"Admin: {_md(event.admin_email)}")
    if event.actor:
        lines.append(f"By: {_md(event.actor)}")
    return {
        "username": "Perseus",
        # Error texts come from connectors and hosts: never let them ping @everyone or a role.
        "allowed_mentions": {"parse": []},
        "embeds": [
            {
                "title": _clip(title, 256),
                "description": _clip("\n".join(lines), 4096),
                "color": COLOURS[event.event],
                "timestamp": iso(event.timestamp),
                "footer": {"text": f"Perseus · {event.event.value} · {event.event_id}"},
            }
        ],
    }


def discord_channel(
    url: str,
    *,
    name: str = NAME,
    kinds: frozenset[EventKind] = NOTIFIED,
    exchanges: frozenset[str] | None = None,
) -> Channel:
    # ?wait=true: Discord answers only once the message is stored, so "accepted" means delivered.
    return Channel(
        name=name,
        label="Discord",
        url=url,
        render=render,
        windows=DISCORD_WINDOWS,
        params={"wait": "true"},
        kinds=kinds,
        exchanges=exchanges,
    )


class DiscordNotifier(WebhookNotifier):
    """The notifier for one Discord webhook (``PERSEUS_DISCORD_WEBHOOK_URL``)."""

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        store: RedisStore,
        *,
        limiter: RateLimiter | None = None,
        **options: Any,
    ) -> None:
        limiter = limiter or discord_limiter(store, url)
        super().__init__(discord_channel(url), http, store, kind=NAME, limiter=limiter, **options)


def discord_notifier(
    url: object | None, http: httpx.AsyncClient, store: RedisStore
) -> DiscordNotifier | None:
    """The notifier for ``PERSEUS_DISCORD_WEBHOOK_URL``, or None (notifications off) when it is unset."""
    return DiscordNotifier(str(url), http, store) if url else None
