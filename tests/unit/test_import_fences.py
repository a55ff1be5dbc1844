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
]


def test_workflow_modules_import_no_driver() -> None:
    code = (
        "import sys, workflows.instance; "
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]; print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_workflow_source_avoids_nondeterminism() -> None:
    from pathlib import Path

    source = (Path(__file__).resolve().parents[2] / "workflows" / "instance.py").read_text()
    for banned in ("datetime.now(", "import os", "import time", "import random", "uuid.uuid4("):
        assert banned not in source, banned
