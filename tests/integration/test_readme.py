"""The README's connector examples run as written: each ``perseus register … --exec`` command that
runs a program shipped in this checkout is taken from the README itself and run against the test
servers, under a host worker started the way ``make run`` starts one (its PATH without the venv),
and must reach what the README promises. A new such example in the README fails the first test
until it is listed here, so the two cannot drift apart."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from temporalio.client import Client

from perseus.client import control
from perseus.core.lifecycle import Command
from perseus.fencing import fenced_key
from perseus.models import StandbyRecord
from perseus.store.redis_store import RedisStore
from tests.conftest import ROOT, Servers, WorkerProcess, exchange_id, perseus
from tests.integration.helpers import active_on, holder, host_name, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = ROOT / "README.md"
#: What the README's examples name, and what each stands for in a test run.
README_EXCHANGE, README_HOST, README_REDIS = "coinbase", "host-b", "redis://127.0.0.1:7379/0"


def readme_exec_examples() -> list[str]:
    """The README's ``perseus register … --exec`` commands (continuation lines joined) whose
    program is one of this checkout's ``examples/``: the ones a reader can run as they are."""
    text = README.read_text()
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["perseus", "register"] and "--exec" in words:
                program = shlex.split(words[words.index("--exec") + 1])
                if any(w.startswith("examples/") for w in program):
                    commands.append(" ".join(shlex.quote(w) for w in words))
    return commands


Check = Callable[["Run"], Awaitable[None]]


class Run:
    """One README example run: the servers, the names it was given, and where to look."""

    def __init__(self, servers: Servers, client: Client, store: RedisStore, exchange: str, host: str) -> None:
        self.servers, self.client, self.store = servers, client, store
        self.exchange, self.host = exchange, host

    def args(self, command: str) -> list[str]:
        """The README's words with its exchange, host and Redis replaced by the test run's."""
        names = {README_EXCHANGE: self.exchange, README_HOST: self.host}
        words = [names.get(w, w).replace(README_REDIS, self.servers.redis_url) for w in shlex.split(command)]
        assert words[0] == "perseus"
        return words[1:]


async def warm_standby_then_handoff(run: Run) -> None:
    """README: a warm standby, warmed (``warm``, not ``warm (not ready)``), promoted by a handoff
    with ``ACTIVATE <epoch>``; the ticker then writes fenced ticks under that epoch to Perseus'
    Redis — so its interpreter and its Redis URL reached the child."""
    ex_id = await exchange_id(run.servers, run.exchange)

    async def warm_ready() -> StandbyRecord | None:
        records = await run.store.standbys(ex_id)
        return next((r for r in records if r.host == run.host and r.warm and r.warm_ready), None)

    # The example's warm-up plus the child's start, well inside the default ready timeout (30 s).
    await wait_for(warm_ready, timeout=20)
    result = await asyncio.to_thread(perseus, run.servers, "handoff", run.exchange, "--to", run.host)
    assert result.returncode == 0, result.stderr
    held = await wait_for(lambda: active_on(run.store, ex_id, run.host))
    rds = aioredis.from_url(run.servers.redis_url, decode_responses=True)
    try:

        async def tick_epochs() -> set[str] | None:
            entries = await rds.xrange(fenced_key(ex_id, "ticks")) or []
            return {str((fields or {}).get("epoch")) for _, fields in entries} or None

        assert await wait_for(tick_epochs, timeout=15) == {str(held["epoch"])}
    finally:
        await rds.aclose()
    assert (await holder(run.store, ex_id) or {}).get("hostname") == run.host


#: Each runnable README example and what the README promises of it.
EXAMPLES: dict[str, Check] = {
    "perseus register coinbase --host host-b --standby --warm --exec '.venv/bin/python -u "
    "examples/ticker_connector.py --warmup 5' --ready-line READY "
    "--env TICKER_REDIS_URL=redis://127.0.0.1:7379/0": warm_standby_then_handoff,
}


@pytest.mark.unit
def test_every_runnable_readme_example_is_checked() -> None:
    assert sorted(readme_exec_examples()) == sorted(EXAMPLES)


def make_run_path() -> str:
    """PATH as ``make run`` gives its worker: the venv is not activated there."""
    venv_bin = os.path.abspath(Path(sys.executable).parent)
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if os.path.abspath(p) != venv_bin)


@pytest.mark.parametrize("command", sorted(EXAMPLES))
async def test_a_readme_example_reaches_what_the_readme_promises(
    command: str,
    servers: Servers,
    shared_worker: str,
    client: Client,
    store: RedisStore,
    exchange: str,
    worker_processes: list[WorkerProcess],
) -> None:
    assert (ROOT / ".venv" / "bin" / "python").exists(), "the README's examples use the venv `make` builds"
    host = host_name("readme")
    proc = WorkerProcess(servers, host, PATH=make_run_path())
    worker_processes.append(proc)
    await proc.ready()
    ex_id = await exchange_id(servers, exchange)
    # The exchange runs on another host first (the README's setup for a standby).
    result = await asyncio.to_thread(
        perseus, servers, "register", exchange, "--host", shared_worker, "--start"
    )
    assert result.returncode == 0, result.stderr
    await wait_for(lambda: active_on(store, ex_id, shared_worker))
    run = Run(servers, client, store, exchange, host)
    result = await asyncio.to_thread(perseus, servers, *run.args(command))
    assert result.returncode == 0, result.stderr
    try:
        await EXAMPLES[command](run)
    finally:
        for h in (host, shared_worker):
            try:
                await control.command(
                    client, exchange=exchange, host=h, default_host=h, command=Command.SHUTDOWN
                )
            except Exception:  # noqa: BLE001 - already gone is fine at the end of a test
                pass
