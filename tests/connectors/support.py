"""Helpers for tests that run real connector children (``child.py``)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from perseus.devstack import services

CHILD = str(Path(__file__).with_name("child.py"))


def child_command(*args: str) -> list[str]:
    return [sys.executable, "-u", CHILD, *args]


def alive(pid: int) -> bool:
    """Running (a zombie or a vanished pid is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        await asyncio.sleep(0.01)
    return not alive(pid)


def journal(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def free_port() -> int:
    return services.free_port()  # away from the kernel's ephemeral ports (see there)
