"""The renewal grid: a host's claim renewals leave together, one Redis round trip per slot.

Each claim keeps its own fixed schedule (:class:`~perseus.host.keeper.LeaseKeeper` owns it), but waits
for the start of the grid slot its due time falls in instead of the due time itself. Starting a
renewal up to one slot *early* is always safe (the TTL is reset from an earlier moment, never
stretched past three intervals from the last success); starting it late never happens on account
of the grid. Every renewal started in the same turn of the event loop joins one pipeline — the very
same fenced Lua renewal per claim, one command each, so each claim still gets its own outcome — and
the loop that asked is handed that outcome as if it had made the call alone.

Why: at 1,000 claims × 15 s the keeper made ~67 round trips a second, each with its own socket
write, read, epoll wake-up and connection checkout. With 100 ms slots they leave about seven to a
round trip (issue 18: the keeper's CPU per renewal against a plain redis-py loop's).

On a Redis Cluster the slot's renewals are split by the node that holds each status key, one
pipeline per node, sent side by side: a node that hangs or is down holds up (and fails) only the
claims it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from perseus.errors import ServiceUnavailable
from perseus.timing import GRID_SLOT_S, HEALTHY_SPAN_EVERY_S, SLOW_BATCH_S
from perseus.tracing import finished_span

if TYPE_CHECKING:
    from perseus.store.redis_store import FenceReply, RedisStore

#: At most this many spans for batches that went wrong in any second: a loaded host whose every
#: slot runs slow would otherwise trace ten batches a second just when it has the least CPU to
#: spare (+35 % of the worker's CPU in one such window of bench.tracing_overhead). The first few
#: show what went wrong; the keeper's own log line per failed renewal says the rest.
TROUBLED_SPANS_PER_S = 2


def worth_a_span(healthy: bool, since_last_healthy_span_s: float, troubled_this_second: int = 0) -> bool:
    """Whether a renewal batch gets a span (tracing on): one that went wrong or was slow, up to
    TROUBLED_SPANS_PER_S a second (``troubled_this_second`` already had one), and a healthy one once
    per HEALTHY_SPAN_EVERY_S — enough to show the rhythm in a trace viewer without a span per
    100 ms slot."""
    if not healthy:
        return troubled_this_second < TROUBLED_SPANS_PER_S
    return since_last_healthy_span_s >= HEALTHY_SPAN_EVERY_S


@dataclass(frozen=True, slots=True)
class Renewal:
    """One claim's fenced renewal, as it goes into a batch: the arguments of ``fenced(mode="renew")``."""

    exchange_id: int
    instance_id: str
    epoch: int
    patch: dict[str, object]
    ttl_ms: int


def slot_of(t: float, slot_s: float = GRID_SLOT_S) -> int:
    """The grid slot that monotonic time ``t`` falls in."""
    return math.floor(t / slot_s)


def slot_start(t: float, slot_s: float = GRID_SLOT_S) -> float:
    """When the slot holding ``t`` starts: never after ``t`` (a float product can land one ulp past
    it; the renewal must never start late on account of the grid)."""
    return min(t, slot_of(t, slot_s) * slot_s)


def groups_of(labels: Sequence[Hashable]) -> list[list[int]]:
    """Indices of ``labels`` grouped by equal label, groups in order of first appearance (the
    renewals of one batch per server that holds their keys)."""
    groups: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return list(groups.values())


@dataclass(slots=True)
class _Pending:
    renewal: Renewal
    reply: asyncio.Future[FenceReply]
    #: How long the asking loop waits for it (its own bound); the batch waits for its longest.
    bound_s: float


class RenewalGrid:
    """Wakes renewal loops at shared slot starts and sends what they ask for as one pipeline."""

    def __init__(self, store: RedisStore, slot_s: float = GRID_SLOT_S) -> None:
        self._store = store
        self._slot_s = slot_s
        #: Per slot about to start: the event its loops wait on, and the one timer that sets it.
        self._slots: dict[int, tuple[asyncio.Event, asyncio.TimerHandle]] = {}
        self._pending: list[_Pending] = []
        self._flush: asyncio.Handle | None = None
        #: Batches in flight (kept referenced until answered).
        self._sends: set[asyncio.Task[None]] = set()
        #: When the last healthy batch got a span (monotonic; tracing's sampling, see _trace).
        self._last_span = -math.inf
        #: The second (monotonic, whole) of the latest troubled batch's span, and how many it had.
        self._troubled_second = -1
        self._troubled_spans = 0

    async def until(self, due: float) -> None:
        """Sleep until the start of the slot holding ``due`` (no sleep if that has passed).

        Every loop of a slot waits on one event set by one timer, so they all wake in the same turn
        of the event loop and their renewals join one batch (separate sleeps end a few microseconds
        apart, in different turns)."""
        slot = slot_of(due, self._slot_s)
        delay = min(due, slot * self._slot_s) - time.monotonic()
        if delay <= 0:
            return
        entry = self._slots.get(slot)
        if entry is None:
            event = asyncio.Event()
            timer = asyncio.get_running_loop().call_later(delay, self._open, slot)
            entry = self._slots[slot] = (event, timer)
        await entry[0].wait()

    def _open(self, slot: int) -> None:
        entry = self._slots.pop(slot, None)
        if entry is not None:
            entry[0].set()

    async def renew(self, renewal: Renewal, bound_s: float) -> FenceReply:
        """This claim's renewal, sent with every other one asked for in this turn of the event loop.

        Raises what a lone ``fenced`` call would: ServiceUnavailable (Redis unreachable), TimeoutError
        (no answer within the batch's bound; the caller bounds its own wait too), or anything else
        Redis answered for this claim alone."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[FenceReply] = loop.create_future()
        self._pending.append(_Pending(renewal, reply, bound_s))
        if self._flush is None:
            # After every loop woken in this turn has asked; in a context of its own, not the first
            # asker's (its activity's context variables are no business of the batch).
            self._flush = loop.call_soon(self._send_pending, context=contextvars.Context())
        return await reply

    def _send_pending(self) -> None:
        self._flush = None
        batch = [p for p in self._pending if not p.reply.done()]  # done: its loop gave up already
        self._pending = []
        if not batch:
            return
        groups = self._store.renewal_groups([p.renewal.exchange_id for p in batch])
        for group in groups:
            task = asyncio.create_task(self._send([batch[i] for i in group]), name="renewal batch")
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        start_ns, started = time.time_ns(), time.monotonic()
        try:
            # The batch outlives none of its loops' waits: each loop stops waiting at its own bound.
            async with asyncio.timeout(max(p.bound_s for p in batch)):
                replies = await self._store.renew_many([p.renewal for p in batch])
        except asyncio.CancelledError:
            for p in batch:
                p.reply.cancel()
            raise
        except Exception as exc:  # the whole round trip failed: every claim in it hears so
            self._trace(len(batch), start_ns, started, len(batch), f"{type(exc).__name__}: {exc}")
            for p in batch:
                if not p.reply.done():
                    p.reply.set_exception(_own_copy(exc))
            return
        problems = sum(1 for r in replies if isinstance(r, BaseException) or r.outcome != "ok")
        self._trace(len(batch), start_ns, started, problems)
        for p, answer in zip(batch, replies, strict=True):
            if p.reply.done():
                continue
            if isinstance(answer, BaseException):
                p.reply.set_exception(answer)
            else:
                p.reply.set_result(answer)

    def _trace(
        self, claims: int, start_ns: int, started: float, problems: int, error: str | None = None
    ) -> None:
        """The batch's span, when it is worth one: every batch that went wrong or was slow, and one
        healthy batch per HEALTHY_SPAN_EVERY_S (a trace of its own; never a span per renewal)."""
        now = time.monotonic()
        took = now - started
        healthy = error is None and problems == 0 and took < SLOW_BATCH_S
        second = int(now)
        troubled = self._troubled_spans if second == self._troubled_second else 0
        if not worth_a_span(healthy, now - self._last_span, troubled):
            return
        if healthy:
            self._last_span = now
        else:
            self._troubled_second, self._troubled_spans = second, troubled + 1
        finished_span(
            "renew batch", start_ns, start_ns + int(took * 1e9), error=error, claims=claims, problems=problems
        )

    async def close(self) -> None:
        """Stop every slot timer and batch in flight (the keeper is closing)."""
        for _, timer in self._slots.values():
            timer.cancel()
        self._slots.clear()
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        for p in self._pending:
            p.reply.cancel()
        self._pending = []
        sends = list(self._sends)
        for task in sends:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*sends, return_exceptions=True)


def _own_copy(exc: Exception) -> BaseException:
    """An exception of the same kind for each claim of a failed batch: one shared instance would
    collect every claim's traceback."""
    if isinstance(exc, TimeoutError):
        return TimeoutError()
    if isinstance(exc, ServiceUnavailable):
        return ServiceUnavailable(str(exc), server=exc.server)
    return exc
