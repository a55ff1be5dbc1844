"""What a wheel must carry: the SQL files are package data, and the packaged schema is the one DDL."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from perseus.store import db

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "perseus"


def test_sql_files_are_package_data_inside_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]["perseus"]
    assert {"schema.sql", "demo_data.sql"} <= set(data)
    for path in (db.SCHEMA_PATH, db.DEMO_DATA_PATH):
        assert path.parent == PACKAGE and path.is_file(), path


def test_packaged_schema_is_the_top_level_schema() -> None:
    """schema.sql at the top is the source of truth (DESIGN §2.3); the package's copy is a link to it,
    which a build replaces by the file's content (tests/integration/test_package.py checks a wheel)."""
    packaged = PACKAGE / "schema.sql"
    assert packaged.is_symlink() and packaged.resolve() == (ROOT / "schema.sql").resolve()
    assert "CREATE TABLE IF NOT EXISTS exchanges" in db.SCHEMA_PATH.read_text()


def test_every_package_of_the_source_is_in_the_wheel() -> None:
    """setuptools builds only the packages pyproject lists: a new folder left out imports in a
    checkout and fails in an installed wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("perseus", "workflows", "activities")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found == listed
