"""Notifications about network events, to every configured channel: Discord
(:mod:`perseus.notify.discord`), Slack, PagerDuty and generic webhooks (:mod:`perseus.notify.channels`),
all delivered by :mod:`perseus.notify.delivery`.

May import the store (its markers and rate windows), the shared models, keys, errors and redact;
nothing else of ``perseus``.
"""

from perseus.notify.channels import Notifications, notifications
from perseus.notify.delivery import RateLimiter, SharedRateLimiter, WebhookNotifier
from perseus.notify.discord import DiscordNotifier, discord_notifier, render

__all__ = [
    "DiscordNotifier",
    "Notifications",
    "RateLimiter",
    "SharedRateLimiter",
    "WebhookNotifier",
    "discord_notifier",
    "notifications",
    "render",
]
