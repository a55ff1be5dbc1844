"""Build the connector an instance's spec asks for."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from perseus.connectors.base import Connector
from perseus.core.lifecycle import Role
from perseus.errors import ConfigError
from perseus.models import Claim, ConnectorSpec
from perseus.timing import DEFAULT_INTERVAL_S

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
    heartbeat_interval_s: float = DEFAULT_INTERVAL_S


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


def cannot_start(spec: ConnectorSpec) -> str | None:
    """Why the connector ``spec`` describes could not start on this host now, or None.

    What a handoff asks its target's host before anything stops (cheap: no child is spawned). The
    simulated connector always can; a process connector needs its working directory and an
    executable first argument — looked up on the PATH the child would get, the way the spawn does.
    """
    if spec.kind != "process":
        return None
    if not spec.command:
        return "the process connector has no command"
    cwd = Path(spec.cwd) if spec.cwd else Path.cwd()
    if not cwd.is_dir():
        return f"the connector's working directory {spec.cwd} does not exist"
    program = spec.command[0]
    if os.sep in program:
        path = cwd / program
        if not path.is_file():
            return f"the connector's executable {program!r} does not exist"
        if not os.access(path, os.X_OK):
            return f"the connector's executable {program!r} is not executable"
        return None
    search = spec.env.get("PATH", os.environ.get("PATH", os.defpath))
    if shutil.which(program, path=search) is None:
        return f"the connector's executable {program!r} is not on the PATH ({search})"
    return None
