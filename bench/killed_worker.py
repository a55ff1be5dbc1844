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

``--sticky 0.5,0.2`` measures each sticky timeout (the workers' ``PERSEUS_STICKY_TIMEOUT``) in the
same run: every topology and interval runs one trial set per timeout per round, their order swapped
from one round to the next, so the machine's load falls on all of them alike. A set is never run
beside another: the workers of both would serve the one shared queue, and a workflow would carry
whichever worker's timeout ran it last. Each set also counts, from the three workflows' histories,
the workflow tasks that ran and those that missed the sticky window (timed out schedule-to-start on
a worker's sticky queue, then replayed elsewhere) — during baseline handoffs, during handoffs after a
kill, and in a quiet stretch (``--steady`` seconds with no command) after the trials: what a shorter
timeout costs when the worker that has the run cached is alive but slow to poll.
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

from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client

from bench.failover import (
    PRIORITIES,
    TOPOLOGIES,
    Board,
    Worker,
    loadavg,
    register_again,
    scratch_exchange,
    scratch_servers,
    topologies,
    write_section,
)
from perseus import errors
from perseus.client import control
from perseus.core.lifecycle import Command
from perseus.devstack import services
from perseus.keys import workflow_id
from perseus.store.redis_store import RedisStore
from perseus.timing import STICKY_TIMEOUT_S

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


async def task_times(client: Client, wf_ids: list[str]) -> tuple[list[float], list[float], list[float]]:
    """When each workflow task of these workflows (every run) completed, and when each timed out
    schedule-to-start — a task that waited out a sticky queue's window — as POSIX times; and how
    long each of the latter had waited (the sticky timeout the workers were given, as it worked)."""
    done: list[float] = []
    missed: list[float] = []
    waited: list[float] = []
    for wf_id in wf_ids:
        runs: list[str | None] = [r.run_id async for r in client.list_workflows(f"WorkflowId = '{wf_id}'")]
        for run_id in runs or [None]:
            handle = client.get_workflow_handle(wf_id, run_id=run_id)
            scheduled = 0.0
            async for event in handle.fetch_history_events():
                at = event.event_time.seconds + event.event_time.nanos / 1e9
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                    scheduled = at
                elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                    done.append(at)
                elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                    kind = event.workflow_task_timed_out_event_attributes.timeout_type
                    if kind == TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START:
                        missed.append(at)
                        waited.append(at - scheduled)
    return done, missed, waited


async def trial_set(
    client: Client,
    store: RedisStore,
    env: dict[str, str],
    database_url: str,
    interval: float,
    trials: int,
    log_dir: Path,
    topology: str,
    sticky: float,
    steady_s: float,
) -> dict[str, object]:
    env = {**env, "PERSEUS_STICKY_TIMEOUT": f"{sticky:g}"}
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
    failed: list[str] = []
    # (kind, POSIX start) of each trial: its handoff, and the waits up to the next trial's start.
    spans: list[tuple[str, float]] = []
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
        spans.append((kind, time.time()))
        try:
            took = await handoff(active, target)
        except errors.PerseusError as exc:
            # The exchange went elsewhere (a lower standby whose head start ran out while the
            # target's workflow waited): a figure of its own, and the trials go on from there.
            failed.append(f"{kind}: {exc}")
            print(f"  {topology} interval {interval:g}s {kind} handoff {i + 1}/{2 * trials} failed: {exc}")
            await active_host()
        else:
            figures[kind].append(took)
            print(
                f"  {topology} interval {interval:g}s sticky {sticky:g}s {kind} handoff "
                f"{i + 1}/{2 * trials}: {took:.2f}s"
                + (f" (killed {victim}, which last ran a workflow task of the handoff)" if victim else ""),
                flush=True,
            )
        if victim is not None:
            workers[victim] = Worker(env, victim, log_dir, shared=shared or victim in spare)
            await workers[victim].ready()
    # The quiet stretch: the exchange held, its standbys watching, no command.
    await standbys_visible({h for h in hosts if h != await active_host()})
    spans.append(("steady", time.time()))
    await asyncio.sleep(steady_s)
    spans.append(("end", time.time()))
    done, missed, waited = await task_times(client, [workflow_id(name, h) for h in hosts])
    tasks = {kind: [0, 0] for kind in ("baseline", "killed", "steady")}
    for times, column in ((done, 0), (missed, 1)):
        for at in times:
            # Each in the trial (or the quiet stretch) that began last before it; registration's
            # tasks, before the first trial, are none of them.
            kinds = [kind for kind, start in spans if start <= at]
            if kinds and kinds[-1] in tasks:
                tasks[kinds[-1]][column] += 1
    for host in hosts:
        try:
            await control.command(
                client, exchange=name, host=host, default_host=host, command=Command.SHUTDOWN
            )
        except Exception as exc:  # noqa: BLE001 - best-effort cleanup of a scratch exchange
            print(f"  cleanup {host}: {exc}")
    for worker in workers.values():
        worker.kill()
    print(
        f"  {topology} interval {interval:g}s sticky {sticky:g}s tasks (done, missed): {tasks}; "
        f"missed tasks waited {', '.join(f'{w:.2f}' for w in sorted(waited))} s",
        flush=True,
    )
    return {
        **figures,
        "failed": failed,
        "no victim": no_victim,
        "tasks": tasks,
        "steady s": steady_s,
        "waited": waited,
    }


def merged(runs: list[dict[str, object]]) -> list[dict[str, object]]:
    """The rounds' sets of one topology, interval and sticky timeout, as one (in the run's order)."""
    out: dict[tuple[str, float, float], dict[str, object]] = {}
    for run in runs:
        key = (str(run["topology"]), float(str(run["interval"])), float(str(run["sticky"])))
        into = out.setdefault(
            key,
            {
                "topology": key[0],
                "interval": key[1],
                "sticky": key[2],
                "baseline": [],
                "killed": [],
                "failed": [],
                "no victim": 0,
                "tasks": {k: [0, 0] for k in ("baseline", "killed", "steady")},
                "steady s": 0.0,
                "waited": [],
            },
        )
        for kind in ("baseline", "killed", "failed", "waited"):
            values, more = into[kind], run[kind]
            assert isinstance(values, list) and isinstance(more, list)
            values.extend(more)
        into["no victim"] = int(str(into["no victim"])) + int(str(run["no victim"]))
        into["steady s"] = float(str(into["steady s"])) + float(str(run["steady s"]))
        tasks, more_tasks = into["tasks"], run["tasks"]
        assert isinstance(tasks, dict) and isinstance(more_tasks, dict)
        for kind, (done, missed) in more_tasks.items():
            tasks[kind][0] += done
            tasks[kind][1] += missed
    return list(out.values())


def markdown(runs: list[dict[str, object]], load: list[str], rounds: int) -> str:
    stickies = sorted({float(str(r["sticky"])) for r in runs}, reverse=True)
    lines = [
        SECTION,
        "",
        f"`.venv/bin/python -m bench.killed_worker --sticky {','.join(f'{x:g}' for x in stickies)}` on "
        f"{platform.node()} ({os.cpu_count()} cores, load average before/after {load[0]} → {load[1]}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        "One exchange on three hosts (priorities 3, 2, 1); a handoff to the best standby, either with "
        "nothing killed (baseline) or right after a SIGKILL of the worker that ran the last workflow "
        "task of the target or the holder (neither of their hosts), whose sticky queue their next "
        "tasks go to. Simulated connector (0.7 s walk). Each sticky timeout (the workers' "
        f"`PERSEUS_STICKY_TIMEOUT`) had its own trial sets, {rounds} per topology and interval, run "
        "one after the other in alternating order, so that the load fell on each alike.",
        "",
        "| topology | interval | sticky | handoff | n | p50 | max | killed − baseline (p50) "
        "| within one interval | tasks missed / run | a missed task waited (p50, max) |",
        "|---|---|---|---|---:|---:|---:|---:|---|---:|---|",
    ]
    merged_runs = merged(runs)
    for run in merged_runs:
        base, killed, tasks = run["baseline"], run["killed"], run["tasks"]
        assert isinstance(base, list) and isinstance(killed, list) and isinstance(tasks, dict)
        interval, sticky = float(str(run["interval"])), float(str(run["sticky"]))
        head = f"| {run['topology']} | {interval:g} s | {sticky:g} s"
        waited = run["waited"]
        assert isinstance(waited, list)
        # Across the set's missed tasks, whichever trial they fell in: the timeout as the server kept it.
        waits = f"{statistics.median(waited):.2f} s, {max(waited):.2f} s" if waited else ""
        for label, kind, values in (("baseline", "baseline", base), ("after a kill", "killed", killed)):
            done, missed = tasks[kind]
            share = f"{missed} / {done}"
            if not values:
                lines.append(f"{head} | {label} | 0 | | | | | {share} | |")
                continue
            extra = " | "
            if label == "after a kill" and base:
                delta = statistics.median(values) - statistics.median(base)
                within = max(values) - statistics.median(base) <= interval
                extra = f"{delta:+.2f} s | {'yes' if within else '**no**'}"
            lines.append(
                f"{head} | {label} | {len(values)} | {statistics.median(values):.2f} s | "
                f"{max(values):.2f} s | {extra} | {share} | {waits if label == 'after a kill' else ''} |"
            )
        done, missed = tasks["steady"]
        lines.append(
            f"{head} | quiet, {float(str(run['steady s'])):g} s in all | | | | | | {missed} / {done} | |"
        )
    skipped = sum(int(str(r["no victim"])) for r in merged_runs)
    for run in merged_runs:
        failed = run["failed"]
        assert isinstance(failed, list)
        if failed:
            lines += [
                "",
                f"**Handoffs that failed** ({run['topology']}, {float(str(run['interval'])):g} s): "
                + "; ".join(failed),
            ]
    lines += [
        "",
        '"Within one interval": the slowest handoff after a kill took at most one interval more than '
        "the baseline's median (the same sticky timeout's). \"Tasks missed / run\": of the workflow "
        "tasks the three instances' histories show in those trials (each trial from its handoff to "
        'the next trial\'s; "quiet" is a stretch with the exchange held and no command), how many '
        "timed out schedule-to-start — left a sticky queue after the window and replayed elsewhere — "
        "and how long such a task had waited there (all the set's missed tasks, on the kill's row). "
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
        block = 0
        for topology in args.topologies:
            for interval in args.intervals:
                for _ in range(args.rounds):
                    # Swapped from one block to the next: no timeout always runs first.
                    order = args.sticky if block % 2 == 0 else list(reversed(args.sticky))
                    block += 1
                    for sticky in order:
                        results = await trial_set(
                            client,
                            store,
                            env,
                            database_url,
                            interval,
                            args.trials,
                            base,
                            topology,
                            sticky,
                            args.steady,
                        )
                        runs.append({"topology": topology, "interval": interval, "sticky": sticky, **results})
        load.append(loadavg())
        await store.client.aclose()
        text = markdown(runs, load, args.rounds)
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
    parser.add_argument("--topologies", type=topologies, default=list(TOPOLOGIES))
    parser.add_argument(
        "--sticky",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[STICKY_TIMEOUT_S],
        help="sticky timeouts to compare, in seconds (each gets its own trial sets)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="trial sets per timeout, topology and interval")
    parser.add_argument("--steady", type=float, default=10.0, help="seconds of quiet counted after each set")
    parser.add_argument("--no-write", action="store_true")
    asyncio.run(main(parser.parse_args()))
