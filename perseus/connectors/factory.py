"""Build the connector an instance's spec asks for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from perseus.connectors.base import Connector
from perseus.errors import ConfigError
from perseus.lifecycle import Role
from perseus.models import Claim, ConnectorSpec

CONNECTOR_KINDS = ("simulated", "process")


@dataclass(frozen=True)
class ConnectorContext:
    """Where and for whom a connector runs: what a process connector tells its child."""

    workflow_id: str
    exchange_id: int
    exchange_name: str
    #: The claim held while it runs (None if the caller does not know it).
    claim: Claim | None = None
    #: Directory for the child's output files; None keeps only the last lines in memory.
    log_dir: Path | None = None
    #: ``standby``: a warm standby (prepared and warmed, promoted by ``activate``); the child gets
    #: ``PERSEUS_ROLE``. For a standby, ``claim`` is the standby's own instance id with epoch 0.
    role: Role = Role.ACTIVE
    #: How often a process connector probes its health URL while active (the lease's interval).
    heartbeat_interval_s: float = 15.0


def build_connector(exchange_name: str, spec: object, context: ConnectorContext | None = None) -> Connector:
    if not isinstance(spec, ConnectorSpec):
        raise ConfigError(f"not a connector spec: {spec!r}")
    if spec.kind == "simulated":
        from perseus.connectors.simulated import SimulatedConnector

        return SimulatedConnector(exchange_name, spec, context.role if context else Role.ACTIVE)
    if spec.kind == "process":
        from perseus.connectors.process import ProcessConnector

        if context is None:
            raise ConfigError("a process connector needs its context (workflow id, exchange, claim)")
        return ProcessConnector(exchange_name, spec, context)
    raise ConfigError(f"unknown connector kind {spec.kind!r}; available: {', '.join(CONNECTOR_KINDS)}")
