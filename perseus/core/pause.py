"""The pause (maintenance mode): while it holds, nobody takes an exchange over by themselves.

Pure decisions, fed by the keeper (a standby's watch), the claim step and the commands.

A pause is a Redis key, ``exchange:{id}:pause``, whose TTL is its deadline: it ends by itself
when the key expires, whatever else is down. It lives in Redis, not in a workflow, because the
decision it stops is taken there: a standby's keeper reads it with every renewal (the same round
trip) and does not report a vacancy or a silent holder while it holds, and the claim step refuses
an *automatic* claim (a promotion nobody asked for) while it holds, so a standby woken just before
the pause, or by a workflow that saw its holder die, claims nothing either. What an operator asks
for — a start, a handoff, a drain — is not automatic and goes ahead.

Invariants:

1. **While paused, an exchange changes hands only on an operator's command.** The active instance
   keeps running; if it dies, the exchange stays vacant and every standby keeps watching.
2. **A pause always ends.** It has a deadline (at most :data:`~perseus.timing.MAX_PAUSE_S` away), and a key
   without a TTL (a foreign writer) still reads as paused only until someone resumes.
3. **Resuming is seen within one interval:** the next renewal of each standby reads the key gone,
   and a vacancy found then is acted on like any other.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from perseus.timing import MAX_PAUSE_S

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
#: Redis's PTTL answer for a key that has no TTL.
NO_TTL = -1


def parse_span(text: str) -> float:
    """``30m``, ``2h``, ``90s``, ``1d`` or a number of seconds → seconds, within (0, MAX_PAUSE_S].

    Raises ValueError with a one-line reason for anything else.
    """
    match = _SPAN.match(text)
    if match is None:
        raise ValueError(f"invalid duration {text!r}: use a number with s, m, h or d (e.g. 30m)")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    return checked_span(seconds)


def checked_span(seconds: float) -> float:
    """``seconds`` if it is a usable pause length, else ValueError with a one-line reason."""
    if not seconds > 0:
        raise ValueError("a pause must last more than 0 seconds")
    if seconds > MAX_PAUSE_S:
        raise ValueError(f"a pause lasts at most {MAX_PAUSE_S / 86_400:g} days (asked {seconds:g}s)")
    return seconds


def pause_until(now: datetime, for_s: float) -> datetime:
    return now + timedelta(seconds=checked_span(for_s))


def paused_for_ms(pttl_ms: int | None) -> float | None:
    """What a PTTL read of the pause key says: milliseconds it still holds (``inf`` for a key with
    no TTL, which holds until resumed), or None when there is no pause."""
    if pttl_ms is None or pttl_ms == -2 or pttl_ms == 0:
        return None
    if pttl_ms == NO_TTL:
        return float("inf")
    return float(pttl_ms) if pttl_ms > 0 else None


def in_force(until: float | None, now: float) -> bool:
    """Whether a pause ending at ``until`` (None: no pause) holds at ``now``, on one clock."""
    return until is not None and now < until


def watch_ends(*, vacant: bool, holder_silent: bool, paused: bool, handed_elsewhere: bool = False) -> bool:
    """A standby's watch ends (and its workflow races for the exchange) when the exchange is vacant
    or its holder went silent — unless the exchange is paused: then it keeps watching (invariant 1).
    A vacancy a handoff left for another host (``handed_elsewhere``: its reservation stands) is not
    one to race for (``decisions.held_back_by_handoff``); a silent holder still is."""
    return ((vacant and not handed_elsewhere) or holder_silent) and not paused


def steps_aside(*, standbys: bool, paused: bool) -> bool:
    """An active instance whose connector failed its health checks (policy ``failover``) lets a
    standby take over only when there is one and the exchange is not paused — paused, no standby
    would take the exchange, so it restarts in place instead of leaving the exchange vacant."""
    return standbys and not paused


def refuses_claim(*, paused: bool, automatic: bool) -> bool:
    """A claim is refused while paused only when nobody asked for it (a promotion after a vacancy,
    a wake-up by a lost or failing holder); an operator's start or handoff goes ahead."""
    return paused and automatic
