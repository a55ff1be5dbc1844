"""The live feed behind ``GET /api/network/events``: one Redis reader per API process, fanned out.

One task per exchange stream blocks in ``XREAD BLOCK`` on ``logs:network:{name}`` (one key per
command: streams of different exchanges may live in different cluster slots). Each new entry is
read once, the exchange's judged status is read once (the workflow writes the status key before
the event, so it already shows the transition), and the resulting message goes into every connected
client's queue. A thousand open pages cost the same Redis work as one.

The readers block on a Redis client of their own (:data:`READER_CONNECTIONS`): each holds one
connection for as long as its XREAD waits, so on the request client a hundred exchanges took every
pooled connection and every read route failed with "Too many connections".

The same reader drives the ledger fold (:mod:`perseus.readmodel.ledger_fold`): one task per exchange folds its
stream from the fold's mark when it starts (a long history is caught up in batches) and again
whenever the reader sees new entries, so transitions other writers put in the stream reach the state
ledger as they arrive. The folds of a process share :data:`FOLD_CONNECTIONS` database connections,
so a catch-up never takes the connections the routes need.

A supervisor task re-reads the catalog every :data:`CATALOG_REFRESH_S` so that a new exchange gets a
reader. Everything is started in the API lifespan and cancelled and awaited when it ends. A client
that does not keep up (its queue is full) is disconnected rather than slowing the others: its page
falls back to polling and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from perseus import metrics
from perseus.errors import PerseusError
from perseus.models import Exchange
from perseus.readmodel.ledger_fold import LedgerFold
from perseus.readmodel.network import read_board
from perseus.store.db import Catalog
from perseus.store.redis_store import RedisStore

log = logging.getLogger("perseus.api.live")

#: How long one XREAD waits (below the Redis client's 5 s socket timeout).
BLOCK_MS = 2000
#: How often the list of exchanges (and so of streams to read) is refreshed from PostgreSQL.
CATALOG_REFRESH_S = 2.0
#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_S = 15.0
#: Messages a slow client may have waiting before it is disconnected.
QUEUE_SIZE = 256
#: Bound of the readers' own pool: one connection per exchange stream, blocked in XREAD. A guard
#: against a runaway, not a budget (Redis' own default limit is 10,000 clients).
READER_CONNECTIONS = 10_000
#: After a Redis error a reader waits this long before trying again.
RETRY_S = 1.0
#: Database connections the process's folds may hold at once.
FOLD_CONNECTIONS = 1
#: A fold runs at least this often even when the reader saw nothing (another process's reader may
#: be the one that sees an entry first; after a failure this is the retry).
FOLD_IDLE_S = 30.0
#: After a failed fold (PostgreSQL or Redis down) it is tried again after this long.
FOLD_RETRY_S = 5.0

_CLOSE = object()


def sse(event: str, data: object, event_id: str | None = None) -> bytes:
    """One Server-Sent Events message (``data`` as one line of JSON)."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class LiveFeed:
    """The single reader and its subscribers. ``start``/``stop`` belong to the API lifespan."""

    def __init__(
        self,
        store: RedisStore,
        catalog: Catalog,
        *,
        reader: RedisStore | None = None,
        fold: LedgerFold | None = None,
    ) -> None:
        """``store`` answers the status reads of each announcement; ``reader`` (default: ``store``)
        carries the blocking XREADs and should be a client of its own, sized for one connection per
        exchange. ``fold``: fold every stream into the ledger as entries arrive (None: don't)."""
        self._store = store
        self._reader = reader or store
        self._catalog = catalog
        self._fold = fold
        self._fold_gate = asyncio.Semaphore(FOLD_CONNECTIONS)
        self._clients: set[asyncio.Queue[object]] = set()
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._folds: dict[str, asyncio.Task[None]] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self.closing = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="live-feed-supervisor")

    async def stop(self) -> None:
        """Cancel the supervisor and every reader and wait until they are gone.

        A cancellation that lands inside a blocking XREAD can be turned into a connection error by
        the driver, which a reader treats as a Redis hiccup; so readers also stop at ``closing``,
        and whatever is still running is cancelled again until it ends.
        """
        self.close_streams()
        tasks = [self._supervisor, *self._readers.values(), *self._folds.values()]
        pending = {t for t in tasks if t is not None}
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self._readers.clear()
        self._folds.clear()

    def close_streams(self) -> None:
        """End every client's stream now (the server is shutting down; pages fall back to polling)."""
        self.closing.set()
        for queue in list(self._clients):
            self._drop(queue)

    # --- subscribers ----------------------------------------------------------------------------

    async def stream(self) -> AsyncIterator[bytes]:
        """One client's event stream: a ``hello``, then a ``network`` message per new entry."""
        queue: asyncio.Queue[object] = asyncio.Queue(QUEUE_SIZE)
        if self.closing.is_set():
            return
        self._clients.add(queue)
        metrics.LIVE_CLIENTS.set(len(self._clients))
        try:
            yield b"retry: 2000\n" + sse("hello", {"serverTime": datetime.now(UTC).isoformat()})
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if item is _CLOSE:
                    return
                assert isinstance(item, bytes)
                yield item
        finally:
            self._clients.discard(queue)
            metrics.LIVE_CLIENTS.set(len(self._clients))

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def streams(self) -> list[str]:
        return sorted(self._readers)

    def _drop(self, queue: asyncio.Queue[object]) -> None:
        self._clients.discard(queue)
        while True:  # make room for the close marker
            try:
                queue.put_nowait(_CLOSE)
                return
            except asyncio.QueueFull:
                queue.get_nowait()

    def publish(self, message: bytes) -> None:
        for queue in list(self._clients):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                log.info(
                    "a live client fell %d messages behind; disconnected (it falls back to polling)",
                    QUEUE_SIZE,
                )
                self._drop(queue)

    # --- the reader -----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self.closing.is_set():
            try:
                exchanges = await self._catalog.exchanges(active_only=True)
            except PerseusError as exc:
                log.warning("live feed: cannot list exchanges: %s", exc)
            else:
                for exchange in exchanges:
                    name = exchange.name.lower()
                    self._arrived.setdefault(name, asyncio.Event())
                    if name not in self._readers or self._readers[name].done():
                        self._readers[name] = asyncio.create_task(self._read(name), name=f"live-{name}")
                    if self._fold is not None and (name not in self._folds or self._folds[name].done()):
                        self._folds[name] = asyncio.create_task(
                            self._fold_stream(exchange), name=f"fold-{name}"
                        )
            await asyncio.sleep(CATALOG_REFRESH_S)

    async def _fold_stream(self, exchange: Exchange) -> None:
        """Fold the exchange's stream from the mark, then again whenever the reader saw entries."""
        assert self._fold is not None
        arrived = self._arrived[exchange.name.lower()]
        while not self.closing.is_set():
            arrived.clear()  # before the fold: an entry arriving during it sets it again
            try:
                await self._fold.catch_up(exchange, gate=self._fold_gate)
            except PerseusError as exc:
                if self.closing.is_set():
                    return
                log.warning("ledger fold of %s failed: %s; retrying in %gs", exchange.name, exc, FOLD_RETRY_S)
                await asyncio.sleep(FOLD_RETRY_S)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), FOLD_IDLE_S)

    async def _read(self, name: str) -> None:
        after: str | None = None
        while not self.closing.is_set():
            try:
                if after is None:
                    # Start after the newest entry that exists now: only what happens from here on is live.
                    newest = await self._reader.events(name, count=1)
                    after = newest[0][0] if newest else "0-0"
                rows = await self._reader.read_after(name, after, block_ms=BLOCK_MS)
                if rows:
                    self._arrived[name].set()
                for entry_id, fields in rows:
                    after = entry_id
                    await self._announce(name, entry_id, fields)
            except PerseusError as exc:
                if self.closing.is_set():
                    return
                log.warning("live feed: reading %s failed: %s; retrying", name, exc)
                await asyncio.sleep(RETRY_S)

    async def _announce(self, name: str, entry_id: str, fields: dict[str, str]) -> None:
        instance: object = None
        if self._clients:
            try:
                board = await read_board(self._store, self._catalog, name)
                instance = board.instances[0].model_dump(mode="json", by_alias=True)
                server_time = board.server_time.isoformat()
            except PerseusError as exc:
                log.info("live feed: status of %s unreadable: %s", name, exc)
                server_time = datetime.now(UTC).isoformat()
            message = {"entry": {"id": entry_id, **fields}, "instance": instance, "serverTime": server_time}
            self.publish(sse("network", message, f"{entry_id}@{name}"))
