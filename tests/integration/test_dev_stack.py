"""`perseus dev`: comes up, prints its URLs, stops everything on SIGTERM, reuses its data."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from perseus.devstack.services import free_port
from tests.conftest import NO_IP_LOOKUP, PERSEUS, ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def dev_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSEUS_", "TEMPORAL_"))}
    env["PERSEUS_DATA_DIR"] = str(data_dir)
    env["PERSEUS_HOSTNAME"] = "devtest"
    env["PERSEUS_IP_SERVICES"] = NO_IP_LOOKUP  # never the real lookup services from a test
    return env


def start_dev(data_dir: Path, ports: dict[str, int], log: Path) -> subprocess.Popen[bytes]:
    args = [PERSEUS, "dev", "--headless"]
    for flag, port in ports.items():
        args += [f"--{flag}", str(port)]
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=dev_env(data_dir), cwd=ROOT)


def wait_up(proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if "Child PIDs" in text:
            return text
        assert proc.poll() is None, text
        time.sleep(0.2)
    raise AssertionError(log.read_text())


def test_dev_starts_stops_without_orphans_and_reuses_data(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("temporal-port", "redis-port", "postgres-port", "api-port")}
    data_dir = tmp_path / "data"
    # As root with a private data dir (pytest's are 0700), PostgreSQL's data lives elsewhere; say where.
    location = data_dir / "postgres" / "LOCATION"
    keys = []
    try:
        for run in range(2):
            log = tmp_path / f"dev{run}.log"
            proc = start_dev(data_dir, ports, log)
            try:
                text = wait_up(proc, log)
                pids = [int(p) for p in re.search(r"Child PIDs\s+([\d ]+)", text).group(1).split()]  # type: ignore[union-attr]
                # Temporal, Redis, PostgreSQL and the worker (the API is served by `perseus dev` itself).
                assert len(pids) == 4 and all(psutil.pid_exists(p) for p in pids)
                # The banner names the secrets' files (0600), shows a key prefix, and no secret.
                key = (data_dir / "api.key").read_text().strip()
                keys.append(key)
                assert f"API key         {key[:8]}…" in text and key not in text
                for name in ("api.key", "payload.key", "postgres.password", "valkey.password"):
                    assert (data_dir / name).stat().st_mode & 0o077 == 0, name
                    assert name in text
                    assert (data_dir / name).read_text().strip() not in text
                if location.exists():
                    assert f"PostgreSQL data {location.read_text().strip()}" in text
                with socket.create_connection(("127.0.0.1", ports["api-port"]), timeout=5):
                    pass
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(60) == 0, log.read_text()
                time.sleep(0.5)
                alive = [
                    p
                    for p in pids
                    if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                ]
                assert alive == [], f"orphans left: {alive}"
            finally:
                if proc.poll() is None:
                    proc.kill()
    finally:
        if location.exists():
            shutil.rmtree(location.read_text().strip(), ignore_errors=True)
    assert keys[0] == keys[1]  # the second run found the first run's database
    assert (data_dir / "temporal" / "temporal.db").exists()
    assert (data_dir / "redis" / "appendonlydir").exists()


def test_taken_port_is_a_one_line_error_naming_the_flag(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                PERSEUS,
                "dev",
                "--headless",
                "--redis-port",
                str(port),
                "--temporal-port",
                str(free_port()),
                "--postgres-port",
                str(free_port()),
                "--api-port",
                str(free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=dev_env(tmp_path),
            cwd=ROOT,
        )
    assert result.returncode == 2  # usage: choose another port
    assert result.stderr.strip() == (
        f"error: port {port} for Redis is already in use: choose another with --redis-port"
    )
    assert not (tmp_path / "temporal").exists()  # nothing was started


def test_a_server_child_that_exits_stops_the_stack_with_one_line(tmp_path: Path) -> None:
    """PostgreSQL killed under `perseus dev`: one line naming it, and nothing left running."""
    ports = {name: free_port() for name in ("temporal-port", "redis-port", "postgres-port", "api-port")}
    data_dir = tmp_path / "data"
    location = data_dir / "postgres" / "LOCATION"
    log = tmp_path / "dev.log"
    proc = start_dev(data_dir, ports, log)
    try:
        text = wait_up(proc, log)
        pids = [int(p) for p in re.search(r"Child PIDs\s+([\d ]+)", text).group(1).split()]  # type: ignore[union-attr]
        postgres = pids[2]  # started in this order: Temporal, Redis, PostgreSQL, the worker
        assert "postgres" in psutil.Process(postgres).name()
        os.kill(postgres, signal.SIGKILL)
        assert proc.wait(90) != 0, log.read_text()
        output = log.read_text()
        said = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(said) == 1 and "the PostgreSQL server exited" in said[0], output
        assert "Traceback" not in output
        time.sleep(0.5)
        alive = [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        assert alive == [], f"orphans left: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
        if location.exists():
            shutil.rmtree(location.read_text().strip(), ignore_errors=True)
