"""The patch mechanism the versioning policy relies on for every workflow change after a release.

The core yields :class:`~perseus.core.actions.Patched` where new behaviour begins, and the instance
workflow carries it out with ``workflow.patched`` (``workflows/instance.py``): a run begun on the new
code takes the new branch and records the patch's marker; a run begun on the release before it
replays through the old branch. The release itself guards no change (its pre-release patches were
retired), so this proves the mechanism with a patch id of its own, through the instance workflow's
own driver of the core's actions (its core aside), on the test server.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from perseus.core import actions as act
from perseus.temporal import converter
from workflows.instance import InstanceWorkflow

pytestmark = pytest.mark.integration

PATCH = "test-only-patch"


def release_code() -> act.Answer[str]:
    """The workflow as the release runs it: one timer."""
    yield act.Sleep(1.0, summary="the release's step")
    return "old"


def patched_code() -> act.Answer[str]:
    """The next version: one more timer (a command the release's runs never issued), behind a
    patch, as the policy says."""
    if (yield act.Patched(PATCH)):
        yield act.Sleep(2.0, summary="the new step")
        yield from release_code()
        return "new"
    return (yield from release_code())


def unguarded_code() -> act.Answer[str]:
    """The same change without the patch: what the policy forbids."""
    yield act.Sleep(2.0, summary="the new step")
    yield from release_code()
    return "new"


#: The code the probe runs now: a fleet sees one workflow type whose code changes under it.
CODE: dict[str, Callable[[], act.Answer[str]]] = {"now": release_code}
#: The branch each run (or replay) took, in order.
TAKEN: list[str] = []


@workflow.defn(name="PatchProbe", sandboxed=False)
class PatchProbe:
    @workflow.run
    async def run(self) -> str:
        # The instance workflow's driver, without the core it is built around: the procedure here
        # stands in for the core.
        driver = InstanceWorkflow.__new__(InstanceWorkflow)
        driver.lease, driver.warm_up, driver.notifications = None, None, []
        branch: str = await driver._drive(CODE["now"]())
        TAKEN.append(branch)
        return branch


def patch_markers(history: WorkflowHistory) -> list[str]:
    """The patch ids a run recorded, in order."""
    found = []
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = e.marker_recorded_event_attributes
            if marker.marker_name == "core_patch":
                data = converter.payload_converter.from_payload(marker.details["patch-data"].payloads[0])
                found.append(data["id"])
    return found


async def run_probe(env: WorkflowEnvironment, code: Callable[[], act.Answer[str]]) -> WorkflowHistory:
    CODE["now"] = code
    queue = f"patch-{uuid.uuid4().hex[:8]}"
    async with Worker(env.client, task_queue=queue, workflows=[PatchProbe]):
        handle = await env.client.start_workflow(PatchProbe.run, id=f"probe-{queue}", task_queue=queue)
        await handle.result()
        return await handle.fetch_history()


async def replay(history: WorkflowHistory, code: Callable[[], act.Answer[str]]) -> BaseException | None:
    CODE["now"] = code
    replayer = Replayer(workflows=[PatchProbe], data_converter=converter)
    return (await replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure


async def test_a_patched_change_is_new_in_new_runs_and_old_in_runs_begun_before_it(
    ts_env: WorkflowEnvironment,
) -> None:
    TAKEN.clear()
    begun_before = await run_probe(ts_env, release_code)
    begun_after = await run_probe(ts_env, patched_code)
    assert TAKEN == ["old", "new"]
    assert patch_markers(begun_before) == [] and patch_markers(begun_after) == [PATCH]

    # The new code replays both: the run begun on the release through the old branch.
    TAKEN.clear()
    assert await replay(begun_before, patched_code) is None
    assert await replay(begun_after, patched_code) is None
    assert TAKEN == ["old", "new"]

    # The same change without the patch cannot replay the run begun before it.
    failure = await replay(begun_before, unguarded_code)
    assert isinstance(failure, workflow.NondeterminismError), failure
