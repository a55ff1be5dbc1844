"""A killed workflow worker and the commands behind it: ``.venv/bin/python -m bench.killed_worker``.

Issue 24's target: a killed worker that serves the shared workflow queue delays no exchange's command
by more than one interval. Temporal keeps a workflow's next task on the sticky queue of the worker that
ran its last one; if that worker is dead, the task waits there for the sticky schedule-to-start
timeout before any live worker may take it (10 s by the SDK's default; Perseus sets it far lower).

One exchange on three hosts (active, two standbys), in both topologies, on scratch servers:

* ``hosts`` — the README's: every ``perseus worker --host H`` also serves the shared queue, plus a
  fourth host worker with no instance, so a worker that runs workflows can die without its host
  holding the exchange;
* ``dedicated`` — hosts with ``--no-shared`` and two workflow workers of their own.

Each trial reads, from the histories, which worker ran the last workflow task of the handoff's
target and of its holder — the worker whose sticky queue their next tasks go to — and SIGKILLs it
(when it is neither the holder's host nor the target's: killing those is a crash, measured by
``bench.failover``), then at once hands the exchange over to the target. Beside each such trial, a
handoff with nothing killed is the baseline of the same run. A worker killed is started again
before the next trial. Figures go to the "Killed workflow worker" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench.failover import (
    PRIORITIES,
    TOPOLOGIES,
    Board,
    Worker,
    loadavg,
    pct,
    register_again,
    scratch_exchange,
    scratch_servers,
    write_section,
)
from perseus.client import control
from perseus.core.lifecycle import Command
from perseus.devstack import services
from perseus.keys import workflow_id
from perseus.store.redis_store import RedisStore

SECTION = "## Killed workflow worker (issue 24)"


async def last_task_pid(client: Client, wf_id: str) -> int | None:
    """The pid of the worker that completed the workflow's last task (identity ``pid@machine``)."""
    history = await client.get_workflow_handle(wf_id).fetch_history()
    for event in reversed(history.events):
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            identity = event.workflow_task_completed_event_attributes.identity
            head = identity.split("@", 1)[0]
            return int(head) if head.isdigit() else None
    return None


async def trial_set(
    client: Client,
    store: RedisStore,
    env: dict[str, str],
    database_url: str,
    interval: float,
    trials: int,
    log_dir: Path,
    topology: str,
) -> dict[str, object]:
    name, ex_id = await scratch_exchange(database_url, "kw_")
    tag = uuid.uuid4().hex[:4]
    hosts = [f"ka-{tag}", f"kb-{tag}", f"kc-{tag}"]
    priority = dict(zip(hosts, PRIORITIES, strict=True))
    shared = topology == "hosts"
    workers = {h: Worker(env, h, log_dir, shared=shared) for h in hosts}
    # Workers that run workflows and hold no instance: the fourth host, or the dedicated pair.
    spare = [f"kd-{tag}"] if shared else [f"core1-{tag}", f"core2-{tag}"]
    for h in spare:
        workers[h] = Worker(env, h, log_dir, shared=True)
    await asyncio.gather(*(w.ready() for w in workers.values()))

    board = Board(store, ex_id, interval)
    active_host, standbys_visible = board.active_host, board.standbys_visible

    async def handoff(active: str, target: str) -> float:
        started = time.monotonic()
        await control.handoff(
            client, exchange=name, to_host=target, from_host=active, default_host=target, shutdown=False
        )
        await active_host(not_host=active)
        return time.monotonic() - started

    for i, host in enumerate(hosts):
        await register_again(client, name, host, interval, standby=i > 0, priority=priority[host])
    await active_host()
    figures: dict[str, list[float]] = {"baseline": [], "killed": []}
    no_victim = 0
    for i in range(2 * trials):
        active = await active_host()
        target = max((h for h in hosts if h != active), key=priority.__getitem__)
        await standbys_visible({h for h in hosts if h != active})
        await asyncio.sleep(interval)
        kind = "killed" if i % 2 else "baseline"
        victim: str | None = None
        if kind == "killed":
            pids = {w.proc.pid: h for h, w in workers.items()}
            for wf in (workflow_id(name, target), workflow_id(name, active)):
                last = pids.get(await last_task_pid(client, wf) or -1)
                if last is not None and last not in (active, target):
                    victim = last
                    break
            if victim is None:
                no_victim += 1
                kind = "baseline"
            else:
                workers[victim].kill()
        took = await handoff(active, target)
        figures[kind].append(took)
        print(
            f"  {topology} interval {interval:g}s {kind} handoff {i + 1}/{2 * trials}: {took:.2f}s"
            + (f" (killed {victim}, which last ran a workflow task of the handoff)" if victim else ""),
            flush=True,
        )
        if victim is not None:
            workers[victim] = Worker(env, victim, log_dir, shared=shared or victim in spare)
            await workers[victim].ready()
    for host in hosts:
        try:
            await control.command(
                client, exchange=name, host=host, default_host=host, command=Command.SHUTDOWN
            )
        except Exception as exc:  # noqa: BLE001 - best-effort cleanup of a scratch exchange
            print(f"  cleanup {host}: {exc}")
    for worker in workers.values():
        worker.kill()
    return {**figures, "no victim": no_victim}


def markdown(runs: list[dict[str, object]], load: list[str]) -> str:
    lines = [
        SECTION,
        "",
        f"`.venv/bin/python -m bench.killed_worker` on {platform.node()} ({os.cpu_count()} cores, load "
        f"average before/after {load[0]} → {load[1]}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        "One exchange on three hosts (priorities 3, 2, 1); a handoff to the best standby, either with "
        "nothing killed (baseline) or right after a SIGKILL of the worker that ran the last workflow "
        "task of the target or the holder (neither of their hosts), whose sticky queue their next "
        "tasks go to. Simulated connector (0.7 s walk).",
        "",
        "| topology | interval | handoff | n | p50 | p99 | max | killed − baseline (p50) "
        "| within one interval |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        base, killed = run["baseline"], run["killed"]
        assert isinstance(base, list) and isinstance(killed, list)
        interval = float(str(run["interval"]))
        for label, values in (("baseline", base), ("after a kill", killed)):
            if not values:
                lines.append(f"| {run['topology']} | {interval:g} s | {label} | 0 | | | | | |")
                continue
            extra = ""
            if label == "after a kill" and base:
                delta = statistics.median(values) - statistics.median(base)
                within = max(values) - statistics.median(base) <= interval
                extra = f"{delta:+.2f} s | {'yes' if within else '**no**'}"
            else:
                extra = " | "
            lines.append(
                f"| {run['topology']} | {interval:g} s | {label} | {len(values)} | "
                f"{statistics.median(values):.2f} s | {pct(values, 0.99):.2f} s | {max(values):.2f} s "
                f"| {extra} |"
            )
    skipped = sum(int(str(r["no victim"])) for r in runs)
    lines += [
        "",
        '"Within one interval": the slowest handoff after a kill took at most one interval more than '
        "the baseline's median. "
        + (
            f"{skipped} trial(s) found the last tasks run by the holder's or the target's own worker "
            "(no one to kill without a crash) and ran as baselines."
            if skipped
            else "Every killed trial found a worker to kill."
        ),
        "",
    ]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="perseus-killed-worker-"))
    children: list[services.Service] = []
    try:
        env, database_url, client, store = await scratch_servers(base, children)
        load = [loadavg()]
        runs: list[dict[str, object]] = []
        for topology in args.topologies:
            for interval in args.intervals:
                results = await trial_set(
                    client, store, env, database_url, interval, args.trials, base, topology
                )
                runs.append({"topology": topology, "interval": interval, **results})
        load.append(loadavg())
        await store.client.aclose()
        text = markdown(runs, load)
        print(text)
        if not args.no_write:
            write_section(text, SECTION)
    finally:
        for child in reversed(children):
            child.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 2.0])
    parser.add_argument("--trials", type=int, default=5, help="killed trials (as many baselines beside)")
    parser.add_argument(
        "--topologies", type=lambda s: [t for t in s.split(",") if t], default=list(TOPOLOGIES)
    )
    parser.add_argument("--no-write", action="store_true")
    asyncio.run(main(parser.parse_args()))
