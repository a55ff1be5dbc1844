"""Every configured channel, and what a message looks like on each that is not Discord.

``PERSEUS_DISCORD_WEBHOOK_URL`` is the channel named ``discord``; ``PERSEUS_NOTIFY_CHANNELS`` adds
any number of others (:class:`~perseus.models.NotifyChannel`), each filtered by event kind and
exchange. Every channel is delivered by :class:`~perseus.notify.delivery.WebhookNotifier`: once
per event (its own marker), within the target's limits across processes (its own rate key), and
never in the way of a transition (the ``notify_event`` activity is the workflow's, apart from its
steps). :class:`Notifications` sends one event to every channel that wants it, side by side, so a
slow target delays no other channel's message either; a channel that failed is retried alone —
the others' markers say they are done.

The payloads:

* **Slack** (and Slack-compatible incoming webhooks: Mattermost, Rocket.Chat): ``text`` plus one
  ``section`` block in mrkdwn, and a context line with the event id.
* **PagerDuty** Events API v2: a ``trigger`` whose ``dedup_key`` is the event id (PagerDuty itself
  drops a repeat), severity by kind (instance lost: critical, an error: error, a refused claim or a
  promotion: warning, the rest: info).
* **Generic webhook**: ``{"source": "perseus", "summary": ..., "event": {stream fields}}`` — the
  event exactly as ``logs:network:*`` holds it — with ``X-Perseus-Event-Id``,
  ``X-Perseus-Timestamp`` (Unix seconds) and ``X-Perseus-Signature: sha256=<hex>``, the HMAC-SHA256
  of ``"{timestamp}." + body`` under the channel's secret. A receiver recomputes it over the raw
  body and refuses stale timestamps (a replayed request).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from perseus.errors import NotifyRetry, WebhookRejected
from perseus.keys import iso
from perseus.models import EventKind, NetworkEvent, NotifyChannel, NotifyRequest
from perseus.notify.delivery import NOTIFIED, Channel, WebhookNotifier
from perseus.notify.discord import DiscordNotifier, discord_channel, discord_limiter

if TYPE_CHECKING:
    import httpx

    from perseus.config import Settings
    from perseus.store.redis_store import RedisStore

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
#: Slack: one message a second per webhook (short bursts tolerated; 429 with Retry-After past them).
SLACK_WINDOWS: tuple[tuple[int, float], ...] = ((1, 1.0),)
#: PagerDuty Events v2: about 120 events a minute per routing key before it answers 429.
PAGERDUTY_WINDOWS: tuple[tuple[int, float], ...] = ((120, 60.0),)
#: A webhook of unknown capacity: polite by default; its 429s and Retry-After refine it.
WEBHOOK_WINDOWS: tuple[tuple[int, float], ...] = ((10, 1.0),)

SIGNATURE_HEADER = "X-Perseus-Signature"
TIMESTAMP_HEADER = "X-Perseus-Timestamp"
EVENT_ID_HEADER = "X-Perseus-Event-Id"

SEVERITY: dict[EventKind, str] = {
    EventKind.INSTANCE_LOST: "critical",
    EventKind.ERROR: "error",
    EventKind.CLAIM_CONFLICT: "warning",
    EventKind.PROMOTED: "warning",
}

_WHAT: dict[EventKind, str] = {
    EventKind.ERROR: "error",
    EventKind.CLAIM_CONFLICT: "claim refused",
    EventKind.INSTANCE_LOST: "instance lost",
    EventKind.STANDBY_REGISTERED: "standby registered",
    EventKind.PROMOTED: "standby promoted",
    EventKind.HANDOFF: "handoff",
    EventKind.PAUSED: "paused",
    EventKind.RESUMED: "resumed",
    EventKind.FAILSAFE_HOLDING: "failsafe holding",
    EventKind.FAILSAFE_ENDED: "failsafe ended",
}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary(event: NetworkEvent) -> str:
    """One plain line for any event: what happened, where, at which epoch (pure)."""
    name = event.exchange_name
    if event.event is EventKind.STATE_TRANSITION:
        before = event.from_state.value if event.from_state else "?"
        after = event.to_state.value if event.to_state else "?"
        what = f"{name}: {before} → {after}"
    elif event.event is EventKind.ERROR:
        while_ = f" while {event.state.value}" if event.state else ""
        what = f"{name}: error{while_}: {_clip(event.error or 'unknown error', 500)}"
    else:
        detail = f": {_clip(event.detail, 500)}" if event.detail else ""
        # A kind added later reads by its own name rather than failing every send of it.
        what = f"{name}: {_WHAT.get(event.event, event.event.value.replace('_', ' '))}{detail}"
    return f"{what} (host {event.hostname}, epoch {event.epoch})"


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats <…> as links and mentions (<!channel>): escape, as Slack asks.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(event: NetworkEvent) -> dict[str, Any]:
    line = _slack_escape(summary(event))
    context = f"Perseus · {event.event.value} · {event.event_id}"
    return {
        "text": line,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(line, 3000)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def pagerduty_payload(event: NetworkEvent, routing_key: str) -> dict[str, Any]:
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": f"perseus-{event.event_id}",
        "payload": {
            "summary": _clip(summary(event), 1024),
            "source": event.hostname,
            "severity": SEVERITY.get(event.event, "info"),
            "timestamp": iso(event.timestamp),
            "component": event.exchange_name,
            "group": "perseus",
            "class": event.event.value,
            "custom_details": event.fields(),
        },
    }


def webhook_payload(event: NetworkEvent) -> dict[str, Any]:
    return {"source": "perseus", "summary": summary(event), "event": event.fields()}


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``X-Perseus-Signature``'s value: what a receiver recomputes over the raw body it got."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _signer(secret: bytes, wall: Callable[[], float]) -> Callable[[NetworkEvent, bytes], Mapping[str, str]]:
    def sign(event: NetworkEvent, body: bytes) -> Mapping[str, str]:
        stamp = str(int(wall()))
        return {
            EVENT_ID_HEADER: event.event_id,
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: signature(secret, stamp, body),
        }

    return sign


def channel_of(config: NotifyChannel, *, wall: Callable[[], float] = time.time) -> Channel:
    """The delivery description of one configured channel."""
    kinds = frozenset(config.events) if config.events is not None else NOTIFIED
    exchanges = frozenset(e.lower() for e in config.exchanges) if config.exchanges is not None else None
    secret = config.secret.get_secret_value() if config.secret is not None else ""
    url = str(config.url) if config.url is not None else PAGERDUTY_URL
    if config.kind == "discord":
        return discord_channel(url, name=config.name, kinds=kinds, exchanges=exchanges)
    if config.kind == "slack":
        return Channel(
            config.name, "Slack", url, slack_payload, SLACK_WINDOWS, kinds=kinds, exchanges=exchanges
        )
    if config.kind == "pagerduty":
        return Channel(
            config.name,
            "PagerDuty",
            url,
            lambda event: pagerduty_payload(event, secret),
            PAGERDUTY_WINDOWS,
            rate_identity=secret,
            kinds=kinds,
            exchanges=exchanges,
        )
    return Channel(
        config.name,
        f"webhook {config.name}",
        url,
        webhook_payload,
        WEBHOOK_WINDOWS,
        sign=_signer(secret.encode(), wall),
        kinds=kinds,
        exchanges=exchanges,
    )


class Notifications:
    """The ``notify_event`` activity's notifier: one event to every channel that wants it."""

    def __init__(self, notifiers: Sequence[WebhookNotifier]) -> None:
        self.notifiers = list(notifiers)

    async def send(self, req: NotifyRequest) -> str:
        wanted = [n for n in self.notifiers if n.channel.wants(req.event)]
        if not wanted:
            return f"not notified: {req.event.event.value}"
        if len(wanted) == 1:  # its own errors, as they are
            return await wanted[0].send(req)
        results = await asyncio.gather(*(n.send(req) for n in wanted), return_exceptions=True)
        retry: list[str] = []
        refused: list[str] = []
        done: list[str] = []
        for notifier, result in zip(wanted, results, strict=True):
            name = notifier.channel.name
            if isinstance(result, WebhookRejected):
                refused.append(f"{name}: {result}")
            elif isinstance(result, BaseException):
                # Any other failure is worth another attempt: the delivered channels are marked.
                retry.append(f"{name}: {result}")
            else:
                done.append(f"{name}: {result}")
        if retry:
            raise NotifyRetry("; ".join(retry + refused))
        if refused:
            raise WebhookRejected("; ".join(refused + done))
        return "; ".join(done)


def notifications(settings: Settings, http: httpx.AsyncClient, store: RedisStore) -> Notifications | None:
    """Every channel the settings configure, or None (notifications off) when there is none."""
    notifiers: list[WebhookNotifier] = []
    if settings.discord_webhook_url is not None:
        url = str(settings.discord_webhook_url)
        notifiers.append(DiscordNotifier(url, http, store, limiter=discord_limiter(store, url)))
    for config in settings.notify_channels:
        notifiers.append(WebhookNotifier(channel_of(config), http, store, kind=config.kind))
    return Notifications(notifiers) if notifiers else None
