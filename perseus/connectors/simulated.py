"""A connector that pretends: configurable delays and injectable failures, for the demo and tests."""

from __future__ import annotations

import asyncio

from perseus.connectors.base import Connector
from perseus.errors import ConnectorError


class SimulatedConnector(Connector):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._connected = False
        self.symbols: list[str] = []

    def _maybe_fail(self, step: str) -> None:
        if step in self.spec.fail_steps:
            raise ConnectorError(f"simulated {step} failure on {self.exchange_name}")

    async def prepare(self, symbols: list[str]) -> int:
        await asyncio.sleep(self.spec.prepare_delay_s)
        self._maybe_fail("prepare")
        self.symbols = list(symbols)
        return len(self.symbols)

    async def warm_up(self) -> None:
        await asyncio.sleep(self.spec.warmup_delay_s)
        self._maybe_fail("warm_up")

    async def connect(self) -> None:
        await asyncio.sleep(self.spec.connect_delay_s)
        self._maybe_fail("connect")
        self._connected = True

    async def disconnect(self, reason: str) -> None:
        self._connected = False

    def failure(self) -> str | None:
        if self._connected and "health" in self.spec.fail_steps:
            return f"simulated health failure on {self.exchange_name}"
        return None

    @property
    def connected(self) -> bool:
        return self._connected


def build_connector(exchange_name: str, spec: object) -> Connector:
    """Kept for existing callers; the factory lives in :mod:`perseus.connectors.factory`."""
    from perseus.connectors.factory import build_connector as build

    return build(exchange_name, spec)
