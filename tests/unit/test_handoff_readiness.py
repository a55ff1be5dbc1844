"""What a handoff's target host answers before anything stops, and how a failed warm-up reads."""

from __future__ import annotations

import sys
from pathlib import Path

from perseus.connectors.factory import cannot_start
from perseus.models import ConnectorSpec
from perseus.readmodel.network import StandbyView, readiness, warmth


def process(*command: str, **more: object) -> ConnectorSpec:
    return ConnectorSpec.model_validate({"kind": "process", "command": list(command), **more})


def test_a_connector_whose_executable_is_missing_or_not_executable_cannot_start(tmp_path: Path) -> None:
    script = tmp_path / "collector"
    assert "does not exist" in (cannot_start(process(str(script))) or "")
    script.write_text("#!/bin/sh\n")
    assert "is not executable" in (cannot_start(process(str(script))) or "")
    script.chmod(0o755)
    assert cannot_start(process(str(script))) is None
    assert "not on the PATH" in (cannot_start(process("no-such-collector-here")) or "")
    assert cannot_start(process(sys.executable, "-u", "x.py")) is None
    assert "working directory" in (cannot_start(process(sys.executable, cwd=str(tmp_path / "gone"))) or "")
    assert cannot_start(ConnectorSpec()) is None  # the simulated connector always can


def view(**fields: object) -> StandbyView:
    base: dict[str, object] = {
        "host": "b",
        "hostname": "b",
        "instance_id": "i",
        "priority": 0,
        "heartbeat_age_s": 0.1,
        "ttl_ms": 3000,
    }
    return StandbyView.model_validate(base | fields)


def test_a_warm_standby_reads_ready_warming_or_failed_with_its_retry() -> None:
    assert warmth(view()) == ""
    assert warmth(view(warm=True, warm_ready=True)) == "warm"
    assert warmth(view(warm=True)) == "warm (not ready)"
    assert warmth(view(warm=True, warm_error="boom; no output", warm_retry_in_s=39.6)) == (
        "warm (failed, retry in 40s: boom; no output)"
    )
    long = warmth(view(warm=True, warm_error="x" * 500))
    assert long.startswith("warm (failed: x") and len(long) < 200


def test_a_standby_whose_promotion_could_not_start_says_so_and_for_how_long_it_stays_behind() -> None:
    assert readiness(view()) == ""
    assert readiness(view(start_error="no such file", start_retry_in_s=39.6)) == (
        "could not start, behind the others for 40s: no such file"
    )
    assert (
        readiness(view(start_error="no such file", start_retry_in_s=0.0)) == "could not start: no such file"
    )
    assert readiness(view(warm=True, warm_ready=True, start_error="x")) == "warm, could not start: x"
