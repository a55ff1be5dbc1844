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
    # Every module a workflow runs: the workers run them without the SDK's sandbox (worker.py), so
    # this check and the sandboxed golden replays are what keep them deterministic.
    sources = [
        *sorted((root / "workflows").glob("*.py")),
        *sorted((root / "perseus" / "core").rglob("*.py")),
        root / "perseus" / "models.py",
        root / "perseus" / "timing.py",
        root / "perseus" / "keys.py",
        root / "perseus" / "errors.py",
    ]
    banned = [
        r"datetime\.now\(",
        r"datetime\.utcnow\(",
        r"date\.today\(",
        r"\bimport os\b",
        r"\bimport time\b",
        r"\bfrom time import\b",
        r"\bimport random\b",
        r"\bimport secrets\b",
        r"\bimport threading\b",
        r"uuid\.uuid[14]\(",
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
        "import sys, perseus.cli.app, perseus.client.control, perseus.api.app, perseus.devstack.stack; "
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


# --- the layout by concern: which part of perseus/ may import which ---------------------------------

#: For each part of ``perseus/`` (a package, or a top-level module), the parts it may import besides
#: itself. Each package's docstring says the same in words (``test_every_package_says_...``).
SHARED = {"errors", "keys", "models", "timing", "version"}
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "keys": set(),
    "version": set(),
    "timing": set(),
    "redact": set(),
    "codec": {"errors"},
    "tracing": {"errors"},
    "fencing": {"errors", "keys"},
    "logs": set(),
    "models": {"core", "keys", "timing"},
    "core": SHARED - {"core"},
    "metrics": {"core", "errors"},
    "temporal": {"codec", "core", "errors", "tracing"},
    "config": SHARED | {"codec", "store"},
    "store": SHARED | {"metrics", "fleet", "host"},
    "connectors": SHARED | {"core", "redact"},
    "notify": SHARED | {"redact", "store"},
    "host": SHARED | {"core", "metrics", "tracing"},
    "readmodel": SHARED | {"core", "metrics", "store"},
    "client": SHARED | {"config", "core", "store", "temporal", "tracing"},
    "fleet": SHARED | {"client", "config", "core", "host", "store", "temporal"},
    "api": SHARED
    | {"client", "codec", "config", "core", "fleet", "host", "metrics", "readmodel", "redact", "store"}
    | {"temporal", "tracing"},
    "devstack": SHARED | {"api", "codec", "config", "fleet", "store", "temporal"},
    "cli": {"*"},
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "perseus"


def test_each_part_of_perseus_imports_only_what_it_may() -> None:
    """The layout shows the architecture: the core imports only the shared modules, the read model
    never the client side, nothing but the CLI and the dev stack the API, nothing the CLI."""
    from tests.unit.test_import_cycles import imports_of, modules

    known = modules()
    wrong = []
    for name, path in known.items():
        here = _part(name)
        if here == "perseus":
            continue
        allowed = MAY_IMPORT[here]
        for other in sorted(imports_of(name, path, known)):
            there = _part(other)
            if there not in (here, "perseus") and "*" not in allowed and there not in allowed:
                wrong.append(f"{name} imports {other}")
    assert wrong == []
    parts = {_part(name) for name in known} - {"perseus"}
    assert parts == set(MAY_IMPORT), "a new part of perseus/ needs its line in MAY_IMPORT"


def test_every_package_says_what_it_owns_and_may_import() -> None:
    """One paragraph per package, read by whoever opens it first: what it owns, what it may import."""
    import importlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "perseus"
    for init in sorted(root.glob("*/__init__.py")):
        module = importlib.import_module(f"perseus.{init.parent.name}")
        doc = (module.__doc__ or "").lower()
        assert "may import" in doc or "a leaf" in doc, (
            f"perseus.{init.parent.name} does not say what it may import"
        )
