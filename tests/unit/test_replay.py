"""Golden histories replayed against the working tree's workflow code, with no server.

Two sets, both replayed here:

* **the current goldens** (``tests/histories/*.json``): every lifecycle path as this code runs it,
  written by ``tests/integration/test_workflow_paths.py``. A path changed on purpose is re-recorded
  with ``PERSEUS_RECORD_HISTORIES=1 pytest tests/integration/test_workflow_paths.py``.
* **every release's histories** (``tests/histories/release-<version>/``): the goldens as they were
  when that release was made, copied there by the release step (``docs/releases.md``) and never
  re-recorded. They stand for the runs a fleet on that release has open when it is upgraded, which
  the new code must go on replaying. A change that alters the commands a run issues without a patch
  (``docs/design.md``, "Versioning the workflow") fails here; with the patch, those runs replay
  through the old branch while the current goldens, re-recorded, take the new one.
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
RELEASES_FILE = Path(__file__).resolve().parents[2] / "RELEASES"
CURRENT = sorted(ROOT.glob("*.json"))
RELEASED = sorted(ROOT.glob("release-*/*.json"))
HISTORIES = CURRENT + RELEASED
#: Every path recorded with the current code (test_workflow_paths.py writes them).
EXPECTED = {
    "lifecycle",
    "start-failure",
    "claim-conflict",
    "claim-lost",
    "no-host-worker",
    "continue-as-new",
    "warm-promotion",
    "standby-promotion",
    "handoff-handing-over",
    "handoff-taking-over",
    "handoff-taken-back",
    "handoff-warm-target",
    "reattach",
    "vacancy-lapsed",
    "vacancy-not-lapsed",
    "vacancy-claimed-over",
    "promotion-start-failed",
}


def name(path: Path) -> str:
    return path.relative_to(ROOT).with_suffix("").as_posix()


def last_release() -> str:
    """The version ``RELEASES`` names (``<version> <commit>``, comments aside)."""
    lines = [line.split() for line in RELEASES_FILE.read_text().splitlines() if not line.startswith("#")]
    (version, _commit) = next(fields for fields in lines if fields)
    return version


def test_every_path_has_a_golden_history() -> None:
    assert {name(p) for p in CURRENT} >= EXPECTED


def test_the_last_release_keeps_its_histories() -> None:
    """The release step copies the goldens into ``release-<version>/``: from then on CI replays
    the last release's histories against every change."""
    kept = {p.stem for p in (ROOT / f"release-{last_release()}").glob("*.json")}
    # Every path there was when it was made (a path added since has no history in it).
    assert kept, f"no histories under tests/histories/release-{last_release()}/"


@pytest.mark.parametrize("path", HISTORIES, ids=[name(p) for p in HISTORIES])
async def test_golden_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(f"golden-{name(path)}", path.read_text())
    result = await Replayer(workflows=[InstanceWorkflow], data_converter=converter).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None, result.replay_failure
