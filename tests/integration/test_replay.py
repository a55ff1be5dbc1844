"""Golden histories of every lifecycle path, replayed against the current workflow code.

A change to workflows/instance.py that would break workflows already running in production (a
non-deterministic change) fails here. Re-record deliberately, after adding a `workflow.patched`
guard, with: PERSEUS_RECORD_HISTORIES=1 pytest tests/integration/test_workflow_paths.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from perseus.temporal import converter
from workflows.instance import InstanceWorkflow

pytestmark = pytest.mark.integration

HISTORIES = sorted((Path(__file__).resolve().parents[1] / "histories").glob("*.json"))
EXPECTED = {
    "lifecycle",
    "start-failure",
    "claim-conflict",
    "claim-lost",
    "no-host-worker",
    "continue-as-new",
    "warm-promotion",
}


def test_every_path_has_a_golden_history() -> None:
    assert {p.stem for p in HISTORIES} >= EXPECTED


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_golden_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(f"golden-{path.stem}", path.read_text())
    result = await Replayer(workflows=[InstanceWorkflow], data_converter=converter).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None, result.replay_failure
