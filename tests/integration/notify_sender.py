"""Notifications from a process of its own, for the cross-process test of every channel:

``python -m tests.integration.notify_sender REDIS_URL CHANNELS_JSON EVENTS_JSON``

Builds the notifiers exactly as a worker does (``perseus.notify.notifications`` over settings with
those channels), sends every event at once, and prints one JSON line: each send's outcome by event id.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
from pydantic import TypeAdapter

from perseus.config import load_settings
from perseus.models import NetworkEvent, NotifyChannel, NotifyRequest
from perseus.notify import notifications
from perseus.store.redis_store import RedisStore, make_client


async def main(argv: list[str]) -> None:
    redis_url, channels_json, events_json = argv
    channels = TypeAdapter(list[NotifyChannel]).validate_json(channels_json)
    events = TypeAdapter(list[NetworkEvent]).validate_json(events_json)
    settings = load_settings(redis_url=redis_url, notify_channels=channels, discord_webhook_url=None)
    redis = make_client(redis_url)
    try:
        async with httpx.AsyncClient() as http:
            notifier = notifications(settings, http, RedisStore(redis))
            assert notifier is not None
            results = await asyncio.gather(
                *(notifier.send(NotifyRequest(event=e)) for e in events), return_exceptions=True
            )
            print(json.dumps({e.event_id: str(r) for e, r in zip(events, results, strict=True)}))
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
