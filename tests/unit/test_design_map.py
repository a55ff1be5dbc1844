"""docs/design.md's module map is the tree's: regenerate it with ``python docs/module_map.py --write``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("module_map", ROOT / "docs" / "module_map.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("module_map", module)
    spec.loader.exec_module(module)
    return module


def test_the_module_map_in_the_design_is_the_trees() -> None:
    generator = _generator()
    assert generator.in_design() == generator.module_map(), "run: python docs/module_map.py --write"


def test_every_module_is_on_the_map() -> None:
    generator = _generator()
    listed = {path for path, _ in generator.entries()}
    for top in ("workflows", "activities", "perseus"):
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if path.name != "__init__.py":
                assert rel in listed, rel
