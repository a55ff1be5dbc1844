"""A worker process logs what it does (INFO is no longer dropped), as JSON lines when asked, and a
normal SIGTERM shutdown that releases an instance prints no traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import signal

import pytest
from temporalio.client import Client

from perseus.client import control
from perseus.store.redis_store import RedisStore
from tests.conftest import Servers, WorkerProcess, exchange_id
from tests.integration.helpers import active_on, host_name, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_worker_logs_json_lines_and_a_graceful_stop_without_traceback(
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="temporalio.workflow")
    host = host_name("logs")
    worker = WorkerProcess(servers, host, PERSEUS_LOG_FORMAT="json", PERSEUS_LOG_LEVEL="INFO")
    worker_processes.append(worker)
    await worker.ready()
    await control.register(
        client, exchange=exchange, host=host, admin_email=None, heartbeat_interval_s=0.5, start=True
    )
    ex_id = await exchange_id(servers, exchange)
    await wait_for(lambda: active_on(store, ex_id, host))
    worker.signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 60) == 0
    assert (await store.raw_status(ex_id))[0] is None  # released before the worker exited

    output = worker.log.read_text()
    assert "Traceback" not in output, output
    ready = f"worker ready: host {host}"  # the one plain line, for scripts (on stderr)
    lines = output.splitlines()
    assert lines.count(ready) == 1
    records = [json.loads(line) for line in lines if line != ready]
    assert all(set(r) == {"ts", "level", "logger", "msg"} for r in records), records
    said = [(r["level"], r["msg"]) for r in records]
    assert any(level == "INFO" and msg.startswith(f"worker for host {host} polling") for level, msg in said)
    assert ("INFO", f"worker for host {host} stopped") in said, said
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], said
    # The release at shutdown is at most one line here, said by the keeper if it noticed before the
    # worker stopped (the workflow says it anyway), never again as a lost claim by the lease.
    released = [m for _, m in said if "claim at epoch" in m and "released" in m]
    assert len(released) <= 1, said
    assert not [m for _, m in said if "ClaimMissing" in m], said

    # The workflow (run by the shared worker, in this process) said one line per decision of its
    # loop and one per transition, each naming the instance.
    wf = f"instance-{exchange}-{host}"
    decided = [
        r.getMessage() for r in caplog.records if r.name == "temporalio.workflow" and wf in r.getMessage()
    ]
    for line in (
        f"{wf}: command (idle)",
        f"{wf}: idle → starting",
        f"{wf}: warming → active",
        f"{wf}: host going down",
    ):
        assert any(m.startswith(line) for m in decided), (line, decided)
    assert sum("→" in m for m in decided) == len({m for m in decided if "→" in m})  # each said once
