"""Notifications about network events (every configured channel), sent by their own activity so
that a slow or rate-limited target never delays a transition. No channel configured → off."""

from __future__ import annotations

from typing import Protocol

from temporalio import activity

from activities.edge import edge
from perseus.models import NotifyRequest


class Notifier(Protocol):
    async def send(self, req: NotifyRequest) -> str:
        """Deliver one event's message at most once per eventId; return a short outcome."""
        ...


class NotifyActivities:
    def __init__(self, notifier: Notifier | None) -> None:
        self._notifier = notifier

    @activity.defn(name="notify_event")
    @edge
    async def notify_event(self, req: NotifyRequest) -> str:
        if self._notifier is None:
            return "disabled"
        return await self._notifier.send(req)
