"""Golden histories of every lifecycle path, replayed against the current workflow code.

A change to the decision core (perseus/core/) or to the workflow that carries its actions out
(workflows/instance.py) that would break workflows already running in production (a
non-deterministic change) fails here. Re-record deliberately, after adding a patch (the core yields
``Patched("<id>")`` where the new behaviour begins; the workflow asks ``workflow.patched``), with:
PERSEUS_RECORD_HISTORIES=1 pytest tests/integration/test_workflow_paths.py — and keep the histories
recorded before the patch in a folder named for it (``before-<patch id>/``): they are the runs
already in production, which must go on replaying through the old branch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from perseus.temporal import converter
from workflows.instance import InstanceWorkflow

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1] / "histories"
HISTORIES = sorted(ROOT.rglob("*.json"))
#: The paths recorded before ``claim-on-host``: runs that may still be open in production.
BEFORE_CLAIM_ON_HOST = {
    "lifecycle",
    "start-failure",
    "claim-conflict",
    "claim-lost",
    "no-host-worker",
    "continue-as-new",
    "warm-promotion",
}
#: Every path recorded with the current code (test_workflow_paths.py writes them).
EXPECTED = BEFORE_CLAIM_ON_HOST | {
    "standby-promotion",
    "handoff-handing-over",
    "handoff-taking-over",
    "handoff-taken-back",
    "handoff-warm-target",
    "reattach",
    "vacancy-lapsed",
    "vacancy-not-lapsed",
    "promotion-start-failed",
}
#: Per ``before-<patch id>/`` folder, the paths it keeps. A path added after a version was cut has
#: no history from before it: no run of the older code was recorded taking it.
BEFORE = {
    "before-claim-on-host": BEFORE_CLAIM_ON_HOST,
    "before-handoff-asks-target-first": {"handoff-handing-over"},
    "before-handoff-checks-target-ready": {
        "handoff-handing-over",
        "handoff-taken-back",
        "handoff-warm-target",
    },
    "before-wake-standby-on-shutdown": {"lifecycle"},
    "before-release-ends-deadline-wait": {"vacancy-not-lapsed"},
    "before-promoted-start-tries-once": {
        "handoff-taking-over",
        "promotion-start-failed",
        "standby-promotion",
        "vacancy-claimed-over",
        "vacancy-lapsed",
        "vacancy-not-lapsed",
    },
    "before-handoff-watches-target-claim": {
        "handoff-handing-over",
        "handoff-taken-back",
        "handoff-warm-target",
    },
}


def name(path: Path) -> str:
    return path.relative_to(ROOT).with_suffix("").as_posix()


def test_every_path_has_a_golden_history_now_and_before_each_version() -> None:
    names = {name(p) for p in HISTORIES}
    assert names >= EXPECTED
    for before, paths in BEFORE.items():
        assert names >= {f"{before}/{n}" for n in paths}


@pytest.mark.parametrize("path", HISTORIES, ids=[name(p) for p in HISTORIES])
async def test_golden_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(f"golden-{path.stem}", path.read_text())
    result = await Replayer(workflows=[InstanceWorkflow], data_converter=converter).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None, result.replay_failure
