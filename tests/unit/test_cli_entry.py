"""The ``perseus`` entry point: a Ctrl-C while the app is still loading is an abort, not a traceback."""

from __future__ import annotations

import builtins
import sys
from typing import Any

import pytest

import perseus.cli as entry

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
