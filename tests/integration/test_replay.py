"""Golden histories of every lifecycle path, replayed against the current workflow code.

A change to workflows/instance.py that would break workflows already running in production (a
non-deterministic change) fails here. Re-record deliberately, after adding a `workflow.patched`
guard, with: PERSEUS_RECORD_HISTORIES=1 pytest tests/integration/test_workflow_paths.py — and keep
the histories recorded before the guard in a folder named for it (``before-<patch id>/``): they are
the runs already in production, which must go on replaying through the old branch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from perseus.temporal import converter
from workflows.instance import InstanceWorkflow

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1] / "histories"
HISTORIES = sorted(ROOT.rglob("*.json"))
EXPECTED = {
    "lifecycle",
    "start-failure",
    "claim-conflict",
    "claim-lost",
    "no-host-worker",
    "continue-as-new",
    "warm-promotion",
}


def name(path: Path) -> str:
    return path.relative_to(ROOT).with_suffix("").as_posix()


def test_every_path_has_a_golden_history_now_and_before_each_version() -> None:
    names = {name(p) for p in HISTORIES}
    assert names >= EXPECTED
    for before in ("before-claim-on-host",):
        assert names >= {f"{before}/{n}" for n in EXPECTED}


@pytest.mark.parametrize("path", HISTORIES, ids=[name(p) for p in HISTORIES])
async def test_golden_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(f"golden-{path.stem}", path.read_text())
    result = await Replayer(workflows=[InstanceWorkflow], data_converter=converter).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None, result.replay_failure
