"""What the parts of the core are given of each other, as two typed bundles: the parts others are
built on (:class:`Shared`), and what a procedure may ask of the core itself (:class:`Hooks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

from perseus.core.actions import Proc
from perseus.core.leases import Leases
from perseus.core.standbys import Standbys
from perseus.core.state import Ticket
from perseus.core.status import Status


class Shared(TypedDict):
    """The parts the procedures of others are built on."""

    leases: Leases
    status: Status
    standbys: Standbys


class Hooks(TypedDict):
    """What the procedures may ask of the core itself: queue a command, wait here as a standby,
    end the run with an outcome."""

    enqueue: Callable[..., Ticket]
    become_standby: Callable[..., Proc]
    end: Callable[[str], None]
