"""The ``perseus`` entry point: a Ctrl-C while the app is still loading is an abort, not a traceback."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import pytest

import perseus.cli as entry
from worker import COLLECTOR_YOUNG_THRESHOLD

pytestmark = pytest.mark.unit


class Exited(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def test_ctrl_c_while_loading_is_aborted_with_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_import = builtins.__import__

    def interrupted(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "perseus.cli.app":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    def exit_now(code: int) -> None:
        raise Exited(code)

    monkeypatch.delitem(sys.modules, "perseus.cli.app", raising=False)
    monkeypatch.setattr(builtins, "__import__", interrupted)
    monkeypatch.setattr("perseus.cli.os._exit", exit_now)
    with pytest.raises(Exited) as exited:
        entry.main()
    assert exited.value.code == 130
    assert capsys.readouterr().err == "aborted\n"


def test_a_worker_process_makes_the_collectors_full_passes_rare() -> None:
    """``perseus worker`` tunes its collector (a full pass stops every renewal of the process); run
    in a child, since the test process must keep Python's own settings."""
    import subprocess

    probe = (
        "import gc, worker; before = gc.get_threshold(); worker.tune_collector(); "
        "print(before[0], gc.get_threshold()[0], gc.get_freeze_count() > 0)"
    )
    root = Path(__file__).resolve().parents[2]  # where worker.py is
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True, timeout=60
    )
    before, after, frozen = out.stdout.split()
    assert int(before) == 700 and int(after) == COLLECTOR_YOUNG_THRESHOLD > 700 and frozen == "True"
