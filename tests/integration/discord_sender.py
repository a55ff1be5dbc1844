"""A notifier in a process of its own, for the cross-process rate-limit test:

``python -m tests.integration.discord_sender REDIS_URL WEBHOOK_URL COUNT LABEL``
``LIMIT WINDOW_S CHANNEL_N CHANNEL_S``

Sends COUNT events at once through a :class:`DiscordNotifier` whose :class:`SharedRateLimiter` uses
the given windows, and prints one JSON line: every send's outcome, by event id.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime

import httpx

from perseus.core.lifecycle import State
from perseus.models import EventKind, NetworkEvent, NotifyRequest
from perseus.notify.discord import DiscordNotifier, discord_limiter
from perseus.store.redis_store import RedisStore, make_client


async def main(argv: list[str]) -> None:
    redis_url, url, count, label = argv[0], argv[1], int(argv[2]), argv[3]
    windows = ((int(argv[4]), float(argv[5])), (int(argv[6]), float(argv[7])))
    redis = make_client(redis_url)
    try:
        async with httpx.AsyncClient() as http:
            store = RedisStore(redis)
            notifier = DiscordNotifier(url, http, store, limiter=discord_limiter(store, url, windows))
            events = [
                NetworkEvent(
                    event=EventKind.STATE_TRANSITION,
                    event_id=str(uuid.uuid4()),
                    timestamp=datetime.now(UTC),
                    exchange_id=n,
                    exchange_name=f"{label}{n}",
                    hostname=label,
                    instance_id=str(uuid.uuid4()),
                    epoch=1,
                    from_state=State.WARMING,
                    to_state=State.ACTIVE,
                )
                for n in range(count)
            ]
            results = await asyncio.gather(
                *(notifier.send(NotifyRequest(event=e)) for e in events), return_exceptions=True
            )
            print(json.dumps({e.event_id: str(r) for e, r in zip(events, results, strict=True)}))
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
