"""One exception tree: every class lives in perseus.errors, and its class decides retrying."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from perseus import errors

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    *(ROOT / "perseus").rglob("*.py"),
    *(ROOT / "activities").rglob("*.py"),
    *(ROOT / "workflows").rglob("*.py"),
]
SOURCES.append(ROOT / "worker.py")


def _base_names(node: ast.ClassDef) -> list[str]:
    return [
        b.id if isinstance(b, ast.Name) else b.attr
        for b in node.bases
        if isinstance(b, ast.Name | ast.Attribute)
    ]


def test_every_exception_class_is_in_perseus_errors() -> None:
    ours = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception)
    }
    outside = []
    for path in SOURCES:
        if path == ROOT / "perseus" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                bases = _base_names(node)
                if any(b.endswith(("Error", "Exception")) or b in ours for b in bases):
                    outside.append(f"{path.relative_to(ROOT)}: {node.name}({', '.join(bases)})")
    assert outside == []


def test_non_retryable_types_follow_each_class() -> None:
    tree: list[type[errors.PerseusError]] = []
    todo: list[type[errors.PerseusError]] = [errors.PerseusError]
    while todo:
        cls = todo.pop()
        tree.append(cls)
        todo.extend(cls.__subclasses__())
    assert set(errors.NON_RETRYABLE_ERROR_TYPES) == {c.__name__ for c in tree if not c.retryable}
    assert {"ServiceUnavailable", "ConnectorError", "NotifyRetry"}.isdisjoint(
        errors.NON_RETRYABLE_ERROR_TYPES
    )
    assert {"ClaimLost", "RenewDeadline", "ConnectorGone", "PayloadKeyError"} <= set(
        errors.NON_RETRYABLE_ERROR_TYPES
    )


def test_a_payload_key_error_is_still_a_value_error() -> None:
    assert issubclass(errors.PayloadKeyError, errors.PerseusError) and issubclass(
        errors.PayloadKeyError, ValueError
    )


def test_service_unavailable_names_its_server_and_survives_a_rebuild() -> None:
    assert errors.ServiceUnavailable("x", server=errors.Server.REDIS).server is errors.Server.REDIS
    rebuilt = errors.ServiceUnavailable.__new__(
        errors.ServiceUnavailable
    )  # as control.error_from_failure does
    Exception.__init__(rebuilt, "Redis unreachable")
    assert rebuilt.server is None


def test_the_tree_drawing_names_every_class_under_its_parent() -> None:
    """The module docstring draws the whole tree: every class, indented under its own parent."""
    import re

    from perseus import errors

    drawing = [
        line for line in (errors.__doc__ or "").splitlines() if re.search(r"[├└]── |^    PerseusError", line)
    ]
    depth_of: dict[str, str | None] = {}
    parents: list[str] = []
    for line in drawing:
        name = line.split("── ")[-1].split()[0] if "── " in line else line.split()[0]
        depth = line.index(name) // 4 - 1
        parents = parents[:depth] + [name]
        depth_of[name] = parents[-2] if len(parents) > 1 else None
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.PerseusError)
    }
    assert set(depth_of) == set(classes), set(classes) ^ set(depth_of)
    for name, parent in depth_of.items():
        if parent is not None:
            assert classes[name].__mro__[1].__name__ == parent, (name, parent)
