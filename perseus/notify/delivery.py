"""Delivering one network event to one webhook-like channel: once, paced, never holding anything up.

The instance workflow starts the ``notify_event`` activity for every event it records and retries it
(initial 2 s, at most 60 s apart, for up to 10 minutes). This module makes those retries safe and the
sends polite, whatever the channel (Discord, Slack, PagerDuty, a generic webhook: each is a
:class:`Channel` — how to render and sign a message, and the target's documented limits):

**Exactly one message per event and channel.** A marker key ``notify:{channel}:{eventId}`` in Redis
goes through two states. Before posting, an attempt takes it as ``sending:{token}`` (SET-if-absent
with a short lease); after the target accepted the message it becomes ``sent`` (kept a day, far
longer than the workflow retries). A retry that finds ``sent`` does not post again; one that finds
another attempt's lease waits for it (retryable error) instead of racing it. An attempt whose POST
was refused (429, 5xx, connection failure) drops its own lease so the retry can post. If Redis fails
after a successful POST, the process remembers the delivery and the retry only writes the marker.

*The accepted window*: if the worker process dies in the milliseconds between the target's answer
and the ``sent`` write (or a POST times out after the target stored it), the lease expires and a
retry posts again — one duplicate. The alternative, treating a stale lease as delivered, would
instead lose the message; for "instance lost" a duplicate is the better failure.

**Rate limits, across workers.** Every worker process posts to the same target, so the limiter lives
in Redis (:class:`SharedRateLimiter`, one hash key per target, named by a hash of its URL — and of
its routing key, where it has one — so no token appears in Redis): a send starts only when no other
process's send is in flight, the target's own pause is over, and its documented windows have room.
Each answer is read before the next send starts: a 429 pauses every process for ``Retry-After``, and
Discord's ``X-RateLimit-Remaining: 0`` pauses them until ``X-RateLimit-Reset-After`` (or
``X-RateLimit-Reset``). Concurrent events therefore queue up, in every process, instead of producing
429s. :class:`RateLimiter` is the same pacing within one process only (tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from perseus.errors import NotifyRetry, PerseusError, WebhookRejected
from perseus.models import EventKind, NetworkEvent, NotifyRequest
from perseus.redact import mask_text
from perseus.store.redis_store import RedisStore

log = logging.getLogger(__name__)

#: Kinds that produce a message unless a channel lists its own. A standby registering changes
#: nothing for anyone and is only logged.
NOTIFIED: frozenset[EventKind] = frozenset(EventKind) - {EventKind.STANDBY_REGISTERED}

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
#: A send's in-flight mark outlives one POST (its timeout), so a crashed sender blocks others briefly.
RATE_LEASE_MS = int((POST_TIMEOUT_S + 5) * 1000)
#: Re-ask Redis at least this often while waiting (another process may free the target sooner).
MAX_POLL_S = 1.0


@dataclass(frozen=True)
class Channel:
    """One place events go, as far as delivery cares.

    ``render`` builds the JSON body for an event; ``sign`` adds headers computed over the exact body
    bytes (the generic webhook's HMAC); ``windows`` are the target's documented limits, (sends, per
    seconds), kept by every process before the first answer says anything.
    """

    name: str
    #: How errors and logs name the target ("Discord", "Slack", "webhook ops-hook"...).
    label: str
    url: str
    render: Callable[[NetworkEvent], dict[str, Any]]
    windows: tuple[tuple[int, float], ...]
    #: What names the target's rate window besides its URL (PagerDuty limits per routing key).
    rate_identity: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    sign: Callable[[NetworkEvent, bytes], Mapping[str, str]] | None = None
    kinds: frozenset[EventKind] = NOTIFIED
    #: Lower-case exchange names this channel wants (None: every exchange).
    exchanges: frozenset[str] | None = None

    def wants(self, event: NetworkEvent) -> bool:
        if event.event not in self.kinds:
            return False
        return self.exchanges is None or event.exchange_name.lower() in self.exchanges


def marker_key(channel: str, event_id: str) -> str:
    return f"notify:{channel}:{event_id}"


def rate_key(kind: str, url: str, identity: str = "") -> str:
    """The Redis key of a target's shared rate window (a digest: URLs and routing keys hold tokens)."""
    digest = hashlib.sha256(f"{url}\n{identity}".encode() if identity else url.encode()).hexdigest()
    return f"notify:{kind}:rate:{digest[:24]}"


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class RateLimiter:
    """Serialises the sends of one process to one target and paces them by its answers.

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
                log.info("rate limit: waiting %.2f s", delay)
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


class SharedRateLimiter(RateLimiter):
    """:class:`RateLimiter` for every process posting to one target, kept in one Redis key.

    Within the process sends are still serialised by the lock (one Redis grant at a time); across
    processes the key's fenced in-flight mark, window and pause do the same. ``observe`` learns the
    pause from the answer; leaving the slot hands it to Redis for everyone.
    """

    def __init__(
        self,
        store: RedisStore,
        key: str,
        windows: tuple[tuple[int, float], ...],
        *,
        lease_ms: int = RATE_LEASE_MS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(sleep=sleep)
        self._store = store
        self._key = key
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
                    log.info("rate limit: every sender pauses %.2f s", self._pause_s)
                await self._store.rate_release(self._key, fence, pause_ms)

    def observe(
        self, status: int, headers: Mapping[str, str], body: Mapping[str, Any] | None = None
    ) -> float:
        wait = super().observe(status, headers, body)
        self._pause_s = max(self._pause_s, wait)
        return wait


class WebhookNotifier:
    """Delivers events to one :class:`Channel` (the :class:`activities.notify.Notifier` protocol).

    It owns nothing: the HTTP client and the Redis store belong to the composition root.
    """

    def __init__(
        self,
        channel: Channel,
        http: httpx.AsyncClient,
        store: RedisStore,
        *,
        kind: str,
        limiter: RateLimiter | None = None,
        lease_ms: int = LEASE_MS,
        timeout_s: float = POST_TIMEOUT_S,
    ) -> None:
        self.channel = channel
        self._http = http
        self._store = store
        self.limiter = limiter or SharedRateLimiter(
            store, rate_key(kind, channel.url, channel.rate_identity), channel.windows
        )
        self._lease_ms = lease_ms
        self._timeout_s = timeout_s
        # Deliveries whose ``sent`` marker could not be written yet (Redis failed after the POST).
        self._delivered: OrderedDict[str, None] = OrderedDict()

    async def send(self, req: NotifyRequest) -> str:
        event = req.event
        if not self.channel.wants(event):
            return f"not notified: {event.event.value}"
        key = marker_key(self.channel.name, event.event_id)
        if event.event_id in self._delivered:
            await self._store.set_marker(key, SENT, SENT_TTL_MS)
            self._delivered.pop(event.event_id, None)
            return "already sent"
        if await self._store.marker(key) == SENT:
            return "already sent"
        body = json.dumps(self.channel.render(event), ensure_ascii=False, separators=(",", ":")).encode()
        label = self.channel.label
        for _ in range(MAX_429_PER_ATTEMPT):
            async with self.limiter.slot():
                token = f"sending:{uuid.uuid4().hex}"
                holder = await self._store.take_marker(key, token, self._lease_ms)
                if holder == SENT:
                    return "already sent"
                if holder is not None:
                    raise NotifyRetry(f"event {event.event_id} is being sent by another attempt")
                response = await self._post(key, token, event, body)
                answer = _json(response) if response.status_code == 429 else None
                self.limiter.observe(response.status_code, response.headers, answer)
            if response.is_success:
                self._remember(event.event_id)
                await self._store.set_marker(key, SENT, SENT_TTL_MS)
                self._delivered.pop(event.event_id, None)
                return "sent"
            await self._store.drop_marker(key, token)
            if response.status_code == 429:
                continue
            if response.status_code >= 500:
                raise NotifyRetry(f"{label} answered {response.status_code}")
            raise WebhookRejected(
                f"{label} refused the message ({response.status_code}): {mask_text(response.text[:200])}"
            )
        raise NotifyRetry(f"{label} answered 429 {MAX_429_PER_ATTEMPT} times in a row")

    async def _post(self, key: str, token: str, event: NetworkEvent, body: bytes) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if self.channel.sign is not None:
            # Signed per attempt: a retry carries a fresh timestamp, as the receiver's replay window expects.
            headers.update(self.channel.sign(event, body))
        try:
            return await self._http.post(
                self.channel.url,
                params=dict(self.channel.params),
                content=body,
                headers=headers,
                timeout=self._timeout_s,
            )
        except httpx.HTTPError as exc:
            # Not delivered — or, after a read timeout, perhaps delivered: the retry may then repeat it
            # (the documented window). Free the lease so the retry does not wait for it.
            with contextlib.suppress(PerseusError):
                await self._store.drop_marker(key, token)
            # Masked: an httpx message may quote the URL, and webhook URLs hold tokens in their path.
            raise NotifyRetry(
                f"{self.channel.label} unreachable: {type(exc).__name__}: {mask_text(str(exc))}"
            ) from None

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
