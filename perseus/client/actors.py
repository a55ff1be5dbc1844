"""Who asked (DESIGN §2.10): the actor every command carries into the events it causes. Light on
purpose: the CLI imports it at start-up."""

from __future__ import annotations

import getpass
import socket


def cli_actor() -> str:
    """The actor of a command typed on this machine: ``cli:<os user>@<machine>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (a bare container): still someone
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def api_actor(key_name: str) -> str:
    """The actor of a command sent with an API key: the key's name."""
    return f"api:{key_name}"


def fleet_actor(actor: str) -> str:
    """The actor of what a fleet apply causes, after whoever applied it."""
    return f"fleet:{actor}"
