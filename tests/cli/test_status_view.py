"""`perseus status` through the real command line: styled without markup, each instance's Web UI
link, and `--watch` redrawing until interrupted."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from temporalio.client import Client

from perseus.client import control
from perseus.core.lifecycle import Command
from tests.conftest import PERSEUS, ROOT, Servers, exchange_id, perseus
from tests.integration.helpers import active_on, wait_for

pytestmark = pytest.mark.integration


async def test_status_links_each_instance_to_the_web_ui_and_never_prints_markup(
    servers: Servers, shared_worker: str, client: Client, store: object, exchange: str
) -> None:
    await control.register(
        client,
        exchange=exchange,
        host=shared_worker,
        admin_email=None,
        heartbeat_interval_s=1.0,
        start=True,
    )
    ex_id = await exchange_id(servers, exchange)
    await wait_for(lambda: active_on(store, ex_id, shared_worker))  # type: ignore[arg-type]
    ui = "http://ui.example:8233"
    done = await asyncio.to_thread(perseus, servers, "status", exchange, "--json", PERSEUS_TEMPORAL_UI_URL=ui)
    assert done.returncode == 0, done.stderr
    item = json.loads(done.stdout)
    assert item["webUi"] == f"{ui}/namespaces/default/workflows/instance-{exchange}-{shared_worker}"
    table = await asyncio.to_thread(
        perseus, servers, "status", exchange, PERSEUS_TEMPORAL_UI_URL=ui, COLUMNS="400"
    )
    assert table.returncode == 0, table.stderr
    assert f"instance-{exchange}-{shared_worker}" in table.stdout
    assert "[green]" not in table.stdout and "[/" not in table.stdout  # styles, never literal markup
    await control.command(
        client, exchange=exchange, host=shared_worker, default_host=shared_worker, command=Command.SHUTDOWN
    )


def test_watch_redraws_until_interrupted_and_refuses_bad_values(servers: Servers, tmp_path: Path) -> None:
    for args in (["--watch", "0.01"], ["--watch", "2", "--json"]):
        done = perseus(servers, "status", *args)
        assert done.returncode == 2 and done.stderr.startswith("error: --watch"), done.stderr
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout_file, err.open("w") as stderr_file:
        proc = subprocess.Popen(
            [PERSEUS, "status", "--watch", "0.5"],
            stdout=stdout_file,
            stderr=stderr_file,
            text=True,
            env=servers.env(COLUMNS="200", PYTHONFAULTHANDLER="1"),
            cwd=ROOT,
        )
        try:
            # Until it has drawn twice (its start-up is slow on a busy machine): then interrupt it.
            deadline = time.monotonic() + 60
            while err.read_text().count("server time") < 2 and time.monotonic() < deadline:
                assert proc.poll() is None, err.read_text()
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)  # faulthandler: where it hangs, for the report
                proc.wait(timeout=10)
                raise AssertionError(f"no exit 20 s after Ctrl-C: {err.read_text()[-8000:]}") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stdout, stderr = out.read_text(), err.read_text()
    assert stderr.count("server time") >= 2, stderr  # drawn more than once
    assert "Traceback" not in stderr and stdout.count("exchange") >= 2
