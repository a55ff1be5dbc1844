"""The connector interface and the per-process registry of running connectors."""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from perseus.core.lifecycle import Role
from perseus.errors import ConnectorGone
from perseus.models import ConnectorFailure, ConnectorHealth, ConnectorSpec

log = logging.getLogger(__name__)


# A connector's role (perseus.core.lifecycle.Role): ``active`` serves the exchange; ``standby`` is
# prepared and warmed, waiting for ``activate``. The child learns it from ``PERSEUS_ROLE``.


class Connector(abc.ABC):
    """One exchange's market-data connector on this host.

    The lifecycle drives it in order: ``prepare`` (load symbols) while *starting*, ``warm_up`` while
    *warming*, ``connect`` to become *active*; ``disconnect`` on stop or when the claim is lost. Each
    step raises :class:`perseus.errors.ConnectorError` on failure. ``disconnect`` must be idempotent
    and must not fail: it is also the emergency brake.

    A connector built with ``role=Role.STANDBY`` (a warm standby) runs ``prepare`` and ``warm_up`` and
    then waits: ``activate(epoch, instance_id)`` makes it active under the new claim (instead of
    ``connect``), ``deactivate()`` makes an active one a warm standby again. ``warm_ready`` says
    whether it could be activated now.

    While active, the lease reads ``fault()`` and ``health()`` after each renewal.
    """

    def __init__(self, exchange_name: str, spec: ConnectorSpec, role: Role = Role.ACTIVE) -> None:
        self.exchange_name = exchange_name
        self.spec = spec
        self.role: Role = role
        #: Set when :meth:`fault` turns non-None (the child exited, it turned unhealthy), cleared by
        #: ``activate``: the lease can wait on it between renewals and act at once instead of on its
        #: next beat. A hint: read :meth:`fault` for the verdict.
        self.faulted = asyncio.Event()
        #: ``ACTIVATE`` may have been sent and not confirmed yet: it may act already (see ConnectorHost).
        self.activating = False

    @abc.abstractmethod
    async def prepare(self, symbols: list[str]) -> int:
        """Load what the connector needs; return the number of symbols it will serve."""

    @abc.abstractmethod
    async def warm_up(self) -> None: ...

    @abc.abstractmethod
    async def connect(self) -> None:
        """Become active (role ``active`` only; a standby is promoted by :meth:`activate`)."""

    @abc.abstractmethod
    async def disconnect(self, reason: str, *, at_once: bool = False) -> None:
        """Stop, with the connector's grace unless ``at_once``: the claim is gone (lost, or not
        renewed within the renew deadline), and a connector must never act without it."""

    @abc.abstractmethod
    async def activate(self, epoch: int, instance_id: str) -> None:
        """Promote a warm standby to active under the claim (``instance_id``, ``epoch``) just taken.

        Returns once the connector confirmed; raises :class:`perseus.errors.ConnectorNotActive`
        (the connector is stopped then) if it did not in time, :class:`perseus.errors.ConnectorError`
        if it is not a prepared, warmed standby.
        """

    @abc.abstractmethod
    async def deactivate(self) -> None:
        """Demote an active connector to a warm standby (it keeps running, it stops serving)."""

    @abc.abstractmethod
    def fault(self) -> ConnectorFailure | None:
        """Why the connector stopped working while it should be running; None while it is fine."""

    @abc.abstractmethod
    def health(self) -> ConnectorHealth:
        """Its health now. Each reported error is returned once (``last_error`` is cleared)."""

    def failure(self) -> str | None:
        """The reason of :meth:`fault`, for callers that only need text."""
        fault = self.fault()
        return fault.reason if fault is not None else None

    def healthy(self) -> bool:
        return self.fault() is None

    def process_group(self) -> int | None:
        """The process group a kill deadline applies to (the watchdog's), if the connector has one."""
        return None

    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    @property
    @abc.abstractmethod
    def warm_ready(self) -> bool:
        """Prepared and warmed and still running: a standby that ``activate`` can promote now."""


@dataclass(frozen=True)
class WarmFailure:
    """Why a warm standby's warm-up failed on this host, and when its workflow tries again."""

    reason: str
    retry_at: datetime | None


class ConnectorHost:
    """The connectors running in this worker process, keyed by workflow id.

    Shared by the connector activities and the lease activity, so that a lease that loses its claim
    can stop the connector at once, on this host, without a round trip through Temporal.
    """

    def __init__(self, journal: Path | None = None) -> None:
        self._running: dict[str, Connector] = {}
        self._journal = journal
        #: A warm standby's last failed warm-up per workflow id: why, and when its workflow tries
        #: again (None: it does not). The keeper writes it into the standby's record at each renewal,
        #: so that the status shows why a warm standby is not ready (only while it is not); dropped
        #: with the connector.
        self._warm_failures: dict[str, WarmFailure] = {}

    def note_warm_failure(self, workflow_id: str, reason: str, retry_at: datetime | None) -> None:
        self._warm_failures[workflow_id] = WarmFailure(reason=reason, retry_at=retry_at)

    def warm_failure(self, workflow_id: str) -> WarmFailure | None:
        return self._warm_failures.get(workflow_id)

    def record(self, kind: str, workflow_id: str, **fields: object) -> None:
        """Append one line to the connector journal (tests' invariant checker), if one is configured.

        Times are CLOCK_MONOTONIC, comparable across processes on one machine. ``valid_until`` lines
        say how long the connector may act on the strength of its last renewal.
        """
        if self._journal is None:
            return
        line = {"t": time.monotonic(), "kind": kind, "workflowId": workflow_id, "pid": os.getpid(), **fields}
        with self._journal.open("a") as out:
            out.write(json.dumps(line) + "\n")

    def put(self, workflow_id: str, connector: Connector) -> None:
        self._running[workflow_id] = connector

    def get(self, workflow_id: str) -> Connector | None:
        return self._running.get(workflow_id)

    async def stop(self, workflow_id: str, reason: str, *, at_once: bool = False) -> bool:
        """Disconnect and forget the connector (without grace when ``at_once``); True if one was there."""
        self._warm_failures.pop(workflow_id, None)
        connector = self._running.pop(workflow_id, None)
        if connector is None:
            return False
        log.info("stopping connector %s (%s): %s", workflow_id, connector.exchange_name, reason)
        await connector.disconnect(reason, at_once=at_once)
        self.record("disconnect", workflow_id, exchange=connector.exchange_name, reason=reason)
        return True

    async def activate(self, workflow_id: str, epoch: int, instance_id: str) -> Connector:
        """Promote this host's warm standby connector under the claim just taken (see
        :meth:`Connector.activate`); raises :class:`ConnectorGone` if there is none.

        The journal's ``connect`` line is written *before* ``ACTIVATE`` is sent — the child may act
        from then on — and a failed activation (the connector is stopped then) writes ``disconnect``.
        """
        connector = self._running.get(workflow_id)
        if connector is None:
            raise ConnectorGone(
                f"no warm connector for {workflow_id} on this host (the worker was restarted)"
            )
        self.record("connect", workflow_id, exchange=connector.exchange_name, epoch=epoch, warm=True)
        connector.activating = True
        try:
            await connector.activate(epoch, instance_id)
        except BaseException as exc:
            if not connector.connected:
                self.record("disconnect", workflow_id, exchange=connector.exchange_name, reason=str(exc))
            raise
        finally:
            connector.activating = False
        return connector

    async def deactivate(self, workflow_id: str) -> bool:
        """Demote this host's active connector to a warm standby; True if one was there."""
        connector = self._running.get(workflow_id)
        if connector is None:
            return False
        await connector.deactivate()
        # For the journal it stopped acting, like a disconnect (it keeps running, warm).
        self.record("disconnect", workflow_id, exchange=connector.exchange_name, reason="deactivated")
        return True

    def health(self, workflow_id: str) -> ConnectorHealth | None:
        """The connector's :meth:`Connector.health` (consumes its new error), None if none runs here."""
        connector = self._running.get(workflow_id)
        return connector.health() if connector is not None else None

    async def stop_all(self, reason: str) -> None:
        for workflow_id in list(self._running):
            await self.stop(workflow_id, reason)

    def workflow_ids(self) -> list[str]:
        return list(self._running)
