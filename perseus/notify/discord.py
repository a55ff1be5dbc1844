"""Discord webhook notifications: one message per network event, paced by Discord's rate limits.

The instance workflow starts the ``notify_event`` activity for every event it records and retries it
(initial 2 s, at most 60 s apart, for up to 10 minutes). This module makes those retries safe and the
sends polite:

**Exactly one message per event.** A marker key ``notify:discord:{eventId}`` in Redis goes through
two states. Before posting, an attempt takes it as ``sending:{token}`` (SET-if-absent with a short
lease); after Discord accepted the message it becomes ``sent`` (kept a day, far longer than the
workflow retries). A retry that finds ``sent`` does not post again; one that finds another attempt's
lease waits for it (retryable error) instead of racing it. An attempt whose POST was refused (429,
5xx, connection failure) drops its own lease so the retry can post. If Redis fails after a
successful POST, the process remembers the delivery and the retry only writes the marker.

*The accepted window*: if the worker process dies in the milliseconds between Discord's answer and
the ``sent`` write (or a POST times out after Discord stored it), the lease expires and a retry posts
again — one duplicate. The alternative, treating a stale lease as delivered, would instead lose the
message; for "instance lost" a duplicate is the better failure.

**Rate limits, across workers.** Every worker process posts to the same webhook, so the limiter
lives in Redis (:class:`SharedRateLimiter`, one hash key per webhook, named by a hash of the URL so
the token never appears in Redis): a send starts only when no other process's send is in flight,
the webhook's own pause is over, and Discord's documented windows have room (5 per 2 s per webhook,
30 per minute per channel). Each answer is read before the next send starts: a 429 pauses every
process for ``Retry-After``, and ``X-RateLimit-Remaining: 0`` pauses them until
``X-RateLimit-Reset-After`` (or ``X-RateLimit-Reset``). Concurrent events therefore queue up,
in every process, instead of producing 429s. :class:`RateLimiter` is the same pacing within one
process only (tests, or a notifier without Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx

from perseus.errors import NotifyRetry, PerseusError, WebhookRejected
from perseus.keys import iso
from perseus.models import EventKind, NetworkEvent, NotifyRequest
from perseus.redact import mask_text
from perseus.store.redis_store import RedisStore

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
}

_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\*_~`|>#[]()"})

MARKER_PREFIX = "notify:discord:"
SENT = "sent"
#: A sent marker outlives every retry of the activity (the workflow gives up after 10 minutes).
SENT_TTL_MS = 24 * 3600 * 1000
#: How long one attempt's lease on an event lasts: one POST, bounded by the HTTP timeout below.
LEASE_MS = 60_000
POST_TIMEOUT_S = 15.0
#: Never wait longer than this on one rate-limit answer (a bogus header must not park the worker).
MAX_WAIT_S = 300.0
#: Consecutive 429s within one attempt before handing the retry back to Temporal.
MAX_429_PER_ATTEMPT = 5
#: Discord's documented limits for one webhook: (sends, per seconds). The headers of each answer
#: refine them; these keep every process inside them before the first answer says anything.
DISCORD_WINDOWS: tuple[tuple[int, float], ...] = ((5, 2.0), (30, 60.0))
RATE_KEY_PREFIX = "notify:discord:rate:"
#: A send's in-flight mark outlives one POST (its timeout), so a crashed sender blocks others briefly.
RATE_LEASE_MS = int((POST_TIMEOUT_S + 5) * 1000)
#: Re-ask Redis at least this often while waiting (another process may free the webhook sooner).
MAX_POLL_S = 1.0


def marker_key(event_id: str) -> str:
    return MARKER_PREFIX + event_id


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


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class RateLimiter:
    """Serialises the sends of one process to one webhook and paces them by Discord's answers.

    Use ``async with limiter.slot(): response = await post(); limiter.observe(response)``: the next
    slot opens only after the previous answer was read, so concurrent senders never burst.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._lock = asyncio.Lock()
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._not_before = 0.0
        self.waited_s = 0.0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._lock:
            delay = self._not_before - self._clock()
            if delay > 0:
                log.info("discord rate limit: waiting %.2f s", delay)
                self.waited_s += delay
                await self._sleep(delay)
            yield

    def observe(
        self, status: int, headers: Mapping[str, str], body: Mapping[str, Any] | None = None
    ) -> float:
        """Learn from one answer; returns how long the next send will wait."""
        wait = 0.0
        if status == 429:
            retry_after = _seconds(headers.get("retry-after"))
            if retry_after is None and body is not None:
                retry_after = _seconds(str(body.get("retry_after")))
            wait = retry_after if retry_after is not None else 1.0
        if headers.get("x-ratelimit-remaining", "").strip() in {"0", "0.0"}:
            reset_after = _seconds(headers.get("x-ratelimit-reset-after"))
            if reset_after is None:
                reset_at = _seconds(headers.get("x-ratelimit-reset"))
                reset_after = max(0.0, reset_at - self._wall()) if reset_at is not None else 1.0
            wait = max(wait, reset_after)
        wait = min(wait, MAX_WAIT_S)
        self._not_before = max(self._not_before, self._clock() + wait)
        return wait


def rate_key(url: str) -> str:
    """The Redis key of a webhook's shared rate window (a digest: the URL holds the webhook token)."""
    return RATE_KEY_PREFIX + hashlib.sha256(url.encode()).hexdigest()[:24]


class SharedRateLimiter(RateLimiter):
    """:class:`RateLimiter` for every process posting to one webhook, kept in one Redis key.

    Within the process sends are still serialised by the lock (one Redis grant at a time); across
    processes the key's fenced in-flight mark, window and pause do the same. ``observe`` learns the
    pause from the answer; leaving the slot hands it to Redis for everyone.
    """

    def __init__(
        self,
        store: RedisStore,
        url: str,
        *,
        windows: tuple[tuple[int, float], ...] = DISCORD_WINDOWS,
        lease_ms: int = RATE_LEASE_MS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(sleep=sleep)
        self._store = store
        self._key = rate_key(url)
        self._windows = [(limit, int(seconds * 1000)) for limit, seconds in windows]
        self._lease_ms = lease_ms
        self._pause_s = 0.0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._lock:
            token = uuid.uuid4().hex
            while True:
                fence, wait_ms = await self._store.rate_acquire(
                    self._key, token, self._lease_ms, self._windows
                )
                if fence:
                    break
                delay = min(wait_ms / 1000, MAX_POLL_S)
                self.waited_s += delay
                await self._sleep(delay)
            self._pause_s = 0.0
            try:
                yield
            finally:
                pause_ms = math.ceil(self._pause_s * 1000)
                if pause_ms:
                    log.info("discord rate limit: every sender pauses %.2f s", self._pause_s)
                await self._store.rate_release(self._key, fence, pause_ms)

    def observe(
        self, status: int, headers: Mapping[str, str], body: Mapping[str, Any] | None = None
    ) -> float:
        wait = super().observe(status, headers, body)
        self._pause_s = max(self._pause_s, wait)
        return wait


class DiscordNotifier:
    """The :class:`activities.notify.Notifier` for a Discord webhook.

    It owns nothing: the HTTP client and the Redis store belong to the composition root.
    """

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        store: RedisStore,
        *,
        limiter: RateLimiter | None = None,
        lease_ms: int = LEASE_MS,
        timeout_s: float = POST_TIMEOUT_S,
    ) -> None:
        self._url = url
        self._http = http
        self._store = store
        self.limiter = limiter or SharedRateLimiter(store, url)
        self._lease_ms = lease_ms
        self._timeout_s = timeout_s
        # Deliveries whose ``sent`` marker could not be written yet (Redis failed after the POST).
        self._delivered: OrderedDict[str, None] = OrderedDict()

    async def send(self, req: NotifyRequest) -> str:
        event = req.event
        if event.event not in NOTIFIED:
            return f"not notified: {event.event.value}"
        key = marker_key(event.event_id)
        if event.event_id in self._delivered:
            await self._store.set_marker(key, SENT, SENT_TTL_MS)
            self._delivered.pop(event.event_id, None)
            return "already sent"
        if await self._store.marker(key) == SENT:
            return "already sent"
        payload = render(event)
        for _ in range(MAX_429_PER_ATTEMPT):
            async with self.limiter.slot():
                token = f"sending:{uuid.uuid4().hex}"
                holder = await self._store.take_marker(key, token, self._lease_ms)
                if holder == SENT:
                    return "already sent"
                if holder is not None:
                    raise NotifyRetry(f"event {event.event_id} is being sent by another attempt")
                response = await self._post(key, token, payload)
                body = _json(response) if response.status_code == 429 else None
                self.limiter.observe(response.status_code, response.headers, body)
            if response.is_success:
                self._remember(event.event_id)
                await self._store.set_marker(key, SENT, SENT_TTL_MS)
                self._delivered.pop(event.event_id, None)
                return "sent"
            await self._store.drop_marker(key, token)
            if response.status_code == 429:
                continue
            if response.status_code >= 500:
                raise NotifyRetry(f"Discord answered {response.status_code}")
            raise WebhookRejected(
                f"Discord refused the message ({response.status_code}): {response.text[:200]}"
            )
        raise NotifyRetry(f"Discord answered 429 {MAX_429_PER_ATTEMPT} times in a row")

    async def _post(self, key: str, token: str, payload: dict[str, Any]) -> httpx.Response:
        try:
            return await self._http.post(
                self._url, params={"wait": "true"}, json=payload, timeout=self._timeout_s
            )
        except httpx.HTTPError as exc:
            # Not delivered — or, after a read timeout, perhaps delivered: the retry may then repeat it
            # (the documented window). Free the lease so the retry does not wait for it.
            with contextlib.suppress(PerseusError):
                await self._store.drop_marker(key, token)
            # Masked: an httpx message may quote the URL, and the webhook's token is in its path.
            raise NotifyRetry(f"Discord unreachable: {type(exc).__name__}: {mask_text(str(exc))}") from None

    def _remember(self, event_id: str) -> None:
        self._delivered[event_id] = None
        while len(self._delivered) > 10_000:
            self._delivered.popitem(last=False)


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def discord_notifier(
    url: object | None, http: httpx.AsyncClient, store: RedisStore
) -> DiscordNotifier | None:
    """The notifier for ``PERSEUS_DISCORD_WEBHOOK_URL``, or None (notifications off) when it is unset."""
    return DiscordNotifier(str(url), http, store) if url else None
