"""Notifications about network events. :mod:`perseus.notify.discord` posts them to a Discord webhook."""

from perseus.notify.discord import (
    DiscordNotifier,
    RateLimiter,
    SharedRateLimiter,
    discord_notifier,
    render,
)

__all__ = ["DiscordNotifier", "RateLimiter", "SharedRateLimiter", "discord_notifier", "render"]
