"""A connector that pretends: configurable delays and injectable failures, for the demo and tests.

It has the process connector's modes: a warm standby (``role=Role.STANDBY``) is prepared and warmed,
then promoted by :meth:`activate` (taking ``connect_delay_s``, like the real child's ACTIVATE →
ACTIVE round trip) and demoted by :meth:`deactivate`. ``fail_steps`` may name ``prepare``,
``warm_up``, ``connect``, ``activate`` and ``health`` (unhealthy once active: a failure with the
spec's ``on_unhealthy`` policy).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from perseus.connectors.base import Connector
from perseus.core.lifecycle import Role
from perseus.errors import ConnectorError, ConnectorNotActive
from perseus.models import ConnectorFailure, ConnectorHealth, ConnectorSpec


class SimulatedConnector(Connector):
    def __init__(self, exchange_name: str, spec: ConnectorSpec, role: Role = Role.ACTIVE) -> None:
        super().__init__(exchange_name, spec, role)
        self._connected = False
        self._warm = False
        self.symbols: list[str] = []
        #: The claim it was activated under (a warm standby's promotion), for the demo and tests.
        self.epoch: int | None = None

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
        self._warm = True

    async def connect(self) -> None:
        if self.role is not Role.ACTIVE:
            raise ConnectorError(f"the {self.exchange_name} connector is a warm standby: activate it")
        await asyncio.sleep(self.spec.connect_delay_s)
        self._maybe_fail("connect")
        self._connected = True
        if "health" in self.spec.fail_steps:
            self.faulted.set()

    async def activate(self, epoch: int, instance_id: str) -> None:
        if self._connected:
            raise ConnectorError(f"the {self.exchange_name} connector is already active")
        if not self._warm:
            raise ConnectorError(f"the {self.exchange_name} connector is not warmed up: cannot activate")
        self.faulted.clear()
        await asyncio.sleep(self.spec.connect_delay_s)
        if "activate" in self.spec.fail_steps:
            self._warm = False
            raise ConnectorNotActive(f"simulated activate failure on {self.exchange_name} (epoch {epoch})")
        self.epoch = epoch
        self.role = Role.ACTIVE
        self._connected = True
        if "health" in self.spec.fail_steps:
            self.faulted.set()

    async def deactivate(self) -> None:
        self._connected = False
        self.role = Role.STANDBY

    async def disconnect(self, reason: str, *, at_once: bool = False) -> None:
        self._connected = False
        self._warm = False

    def fault(self) -> ConnectorFailure | None:
        if self._connected and "health" in self.spec.fail_steps:
            return ConnectorFailure(
                kind="unhealthy",
                reason=f"simulated health failure on {self.exchange_name}",
                policy=self.spec.on_unhealthy,
            )
        return None

    def health(self) -> ConnectorHealth:
        unhealthy = "health" in self.spec.fail_steps
        return ConnectorHealth(
            healthy=not unhealthy if (self._connected or self._warm) else None,
            last_health_at=datetime.now(UTC) if (self._connected or self._warm) else None,
            symbol_count=len(self.symbols) if self._warm else None,
            degraded_reason="simulated health failure" if unhealthy else None,
            warm_ready=self.warm_ready,
        )

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def warm_ready(self) -> bool:
        return self._warm
