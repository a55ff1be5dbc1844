"""Workflows never load drivers, OS access or settings: importing them must not pull those in."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

FORBIDDEN = [
    "redis",
    "psycopg",
    "psycopg_pool",
    "httpx",
    "perseus.config",
    "perseus.store.db",
    "perseus.store.redis_store",
    # The implementations load the drivers; the workflow calls them through workflows/calls.py.
    "activities",
]


def test_workflow_modules_import_no_driver() -> None:
    code = (
        "import sys, workflows.instance; "
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]; print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_workflow_and_core_sources_avoid_nondeterminism() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sources = [root / "workflows" / "instance.py", *sorted((root / "perseus" / "core").glob("*.py"))]
    banned = [
        r"datetime\.now\(",
        r"\bimport os\b",
        r"\bimport time\b",
        r"\bimport random\b",
        r"uuid\.uuid4\(",
    ]
    for path in sources:
        source = path.read_text()
        for pattern in banned:
            assert not re.search(pattern, source), f"{path.name}: {pattern}"


def test_the_decision_core_imports_no_temporal_and_no_driver() -> None:
    """The core is plain code: it runs under tests with no server and no SDK (it yields actions)."""
    code = (
        "import sys, perseus.core.loop; "
        f"bad = [m for m in {[*FORBIDDEN, 'temporalio', 'workflows', 'asyncio']!r} if m in sys.modules]; "
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


#: The user's layout (top-level workflows/, activities/, worker.py) depends on perseus/, never back.
USER_LAYOUT = ("workflows", "activities", "worker")


def test_perseus_never_imports_the_user_layout() -> None:
    """The CLI, the client side and the API load without the workflow, the activities or the worker."""
    code = (
        "import sys, perseus.cli.app, perseus.control, perseus.api.app, perseus.devstack.stack; "
        f"roots = {USER_LAYOUT!r}; "
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in roots)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_client_names_match_the_workflow_definition() -> None:
    """perseus/temporal.py names the workflow and its handlers as strings (clients cannot import the
    workflow): each name must be one the workflow really registers, with the matching kind."""
    from temporalio import workflow

    from perseus import temporal
    from workflows.instance import InstanceWorkflow

    definition = workflow._Definition.must_from_class(InstanceWorkflow)
    assert definition.name == temporal.INSTANCE_WORKFLOW
    names = {
        "update": {n for n in vars(temporal) if n.startswith("UPDATE_")},
        "query": {n for n in vars(temporal) if n.startswith("QUERY_")},
        "signal": {n for n in vars(temporal) if n.startswith("SIGNAL_")},
    }
    registered = {"update": definition.updates, "query": definition.queries, "signal": definition.signals}
    assert all(names.values()), names
    for kind, constants in names.items():
        for constant in constants:
            assert getattr(temporal, constant) in registered[kind], f"{constant} is not a {kind} handler"
