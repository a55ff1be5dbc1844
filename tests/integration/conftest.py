"""Fixtures of the integration tests beside the harness' own (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from temporalio.client import Client
from temporalio.service import RPCError

from perseus.devstack import services
from perseus.temporal import converter
from tests.integration.helpers import PrivateTemporal


@pytest_asyncio.fixture
async def temporal(tmp_path: Path) -> AsyncIterator[PrivateTemporal]:
    service = await services.start_temporal(tmp_path / "temporal", None, None)
    port = service.port
    client = await Client.connect(f"127.0.0.1:{port}", data_converter=converter)
    for _ in range(100):  # the dev server answers before its namespace exists
        try:
            await client.count_workflows()
            break
        except RPCError:
            await asyncio.sleep(0.1)
    made = PrivateTemporal(service, port, client)
    try:
        yield made
    finally:
        made.freeze(False)
        service.stop()


@pytest_asyncio.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[services.Service]:
    """A Redis of one test's own: it can be paused or frozen, and no other test's worker announces
    itself there."""
    service = await services.start_redis(tmp_path / "redis", None)
    try:
        yield service
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.proc.send_signal(signal.SIGCONT)
        service.stop()
