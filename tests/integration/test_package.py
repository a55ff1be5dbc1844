"""A built wheel, installed into a fresh venv (not editable, outside the checkout), names its version
and build and initialises a scratch database with ``perseus db init``: the SQL ships as package
data. ``make check-package``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import uuid
from pathlib import Path

import pytest

from perseus.devstack import services
from perseus.store import db
from tests.conftest import ROOT, Servers

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def source_files() -> list[str]:
    """The checkout's files as a clone would have them (tracked and new, never ignored ones)."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True,
        check=True,
    )
    return [name for name in listed.stdout.decode().split("\0") if name]


def copy_source(target: Path) -> None:
    """Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout."""
    for name in source_files():
        src, dst = ROOT / name, target / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree, not yet committed
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)


def fresh_venv(path: Path) -> Path:
    """A venv without pip whose dependencies come from the project venv's site-packages (a .pth line,
    after its own site-packages): only Perseus itself is installed into it, from the wheel."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "project-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def head_commit() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def project_version() -> str:
    """pyproject's version: the one source of the release number."""
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


async def test_built_wheel_installs_and_initialises_a_database(servers: Servers, tmp_path: Path) -> None:
    source, dist = tmp_path / "src", tmp_path / "dist"
    copy_source(source)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    # The copy has no git: the build takes the commit from PERSEUS_BUILD, as a release build does.
    stamp = f"{head_commit()}-test"
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        check=True,
        env={**os.environ, "PERSEUS_BUILD": stamp},
    )
    (wheel,) = dist.glob("perseus-*.whl")
    python = fresh_venv(tmp_path / "venv")
    subprocess.run(
        [*pip, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True
    )

    installed = subprocess.run(
        [
            str(python),
            "-c",
            "import perseus, worker; from perseus.store import db; "
            "print(perseus.__file__); print(worker.__file__); "
            "print(db.SCHEMA_PATH.is_symlink(), db.DEMO_DATA_PATH.stat().st_size > 0)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split()
    venv = str(tmp_path / "venv")
    assert installed[0].startswith(venv) and installed[1].startswith(venv), installed
    assert installed[2:] == ["False", "True"]  # the schema is a real file in the wheel, demo data too

    perseus = str(tmp_path / "venv" / "bin" / "perseus")
    shown = subprocess.run([perseus, "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"perseus {project_version()} (build {stamp})\n"
    # A wheel without a stamp, on a machine without git: the build is unknown, nothing fails.
    Path(installed[0]).with_name("BUILD").unlink()
    bare = subprocess.run(
        [perseus, "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PATH": str(tmp_path / "empty")},
    )
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout == f"perseus {project_version()} (build unknown)\n"

    name = f"scratch_{uuid.uuid4().hex[:8]}"
    url = await services.ensure_database(servers.postgres, name)
    env = servers.env(PERSEUS_DATABASE_URL=url)
    result = subprocess.run(
        [perseus, "db", "init"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,  # not the checkout: nothing may be found through the working directory
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "schema applied"
    conn = await db.connect(url)
    async with conn:
        row = await (await conn.execute("SELECT count(*) AS n FROM exchanges")).fetchone()
        assert row is not None and row["n"] > 0  # the schema seeds the exchange catalog
