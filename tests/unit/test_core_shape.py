"""The decision core stays in parts a reader can hold in their head.

No module of ``perseus/core/`` over 300 lines, no class there over 25 methods (its bases included);
each part's memory is a frozen slice that no other part reads (only the core's read side,
``answers.py``, sees them all); and what continues as new is exactly the slices' carried fields.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

from perseus.core import state
from perseus.models import CarriedState

pytestmark = pytest.mark.unit

CORE = Path(__file__).resolve().parents[2] / "perseus" / "core"
MODULES = sorted(CORE.rglob("*.py"))
MAX_LINES = 300
MAX_METHODS = 25
#: The core's read side: it answers queries and serialises the carried state from every slice.
READS_ALL_SLICES = {"answers.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_no_module_of_the_core_is_longer_than_a_sitting(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name}: {lines} lines"


def _methods(cls: type) -> set[str]:
    """Functions and properties of ``cls`` and its bases (not object's, not typing's)."""
    found: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("perseus."):
            found |= {
                name
                for name, value in vars(klass).items()
                if inspect.isfunction(value) or isinstance(value, property)
            }
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_no_class_of_the_core_has_more_than_25_methods(path: Path) -> None:
    dotted = ".".join(path.relative_to(CORE.parent.parent).with_suffix("").parts)
    module = importlib.import_module(dotted.removesuffix(".__init__"))
    for name, cls in vars(module).items():
        if inspect.isclass(cls) and cls.__module__ == module.__name__:
            assert len(_methods(cls)) <= MAX_METHODS, f"{name}: {sorted(_methods(cls))}"


SLICES = [
    state.Identity,
    state.StatusState,
    state.LeaseState,
    state.RecoveryState,
    state.StandbyState,
    state.WarmState,
    state.HandoffState,
    state.CommandState,
    state.RegistrationState,
    state.LoopState,
]


@pytest.mark.parametrize("cls", SLICES, ids=lambda c: c.__name__)
def test_every_slice_is_a_frozen_value(cls: type) -> None:
    params = getattr(cls, "__dataclass_params__", None)
    assert params is not None and params.frozen


def test_what_continues_as_new_is_exactly_the_carried_fields_of_the_slices() -> None:
    carried = {f.name for cls in SLICES for f in dataclasses.fields(cls) if f.metadata.get("carried")}
    # The queue is carried as its commands, notifications in flight and the run count by the loop.
    assert carried | {"pending", "undelivered", "runs"} == set(CarriedState.model_fields)
    # One owner per carried field: no two parts remember the same thing.
    names = [f.name for cls in SLICES for f in dataclasses.fields(cls) if f.metadata.get("carried")]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_no_part_reads_another_parts_slice(path: Path) -> None:
    if path.name in READS_ALL_SLICES:
        return
    tree = ast.parse(path.read_text())
    foreign = [
        f"line {node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "st"
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    ]
    assert foreign == [], f"{path.name} reads another part's slice: {foreign}"
