"""The failsafe's messages through Temporal (docs/design.md, "Failsafe: holding through a Redis
outage", the protocol): enrolling in an exchange's roster, a holder reading it, and a holder asking
a member for a promise. Plain calls over the worker's client, handed to the keeper and the host's
activities; they decide nothing.

Every call is bounded by its caller (the keeper bounds a round by how long its promises could
count); none has a deadline of its own that would decide anything (Patroni's fixed 2 s timeout
demoted primaries on slow links, #3550).
"""

from __future__ import annotations

import logging
from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from perseus.keys import ROSTER_ENROL, ROSTER_READ, ROSTER_WORKFLOW, SHARED_TASK_QUEUE, roster_workflow_id
from perseus.models import PromiseAnswer, PromiseRequest, RosterAnswer, RosterInput, RosterMember
from perseus.temporal import UPDATE_FAILSAFE_PROMISE

log = logging.getLogger(__name__)


class FailsafeCalls:
    """The worker's side of the roster and the promises, over its Temporal client."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def enrol(self, exchange: str, member: RosterMember) -> RosterAnswer:
        """Add ``member`` to the exchange's roster, starting the roster if there is none yet; the
        answer is the roster with it."""
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            ROSTER_WORKFLOW,
            RosterInput(exchange=exchange),
            id=roster_workflow_id(exchange),
            task_queue=SHARED_TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        answer: RosterAnswer = await self._client.execute_update_with_start_workflow(
            ROSTER_ENROL, member, start_workflow_operation=start, result_type=RosterAnswer
        )
        return answer

    async def read(self, exchange: str) -> RosterAnswer | None:
        """The exchange's roster, or None when there is none: a holder never starts one (an empty
        roster it started itself would say nobody else could claim)."""
        handle = self._client.get_workflow_handle(roster_workflow_id(exchange))
        try:
            answer: RosterAnswer = await handle.execute_update(ROSTER_READ, result_type=RosterAnswer)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        return answer

    async def ask(self, workflow_id: str, req: PromiseRequest) -> PromiseAnswer:
        """Ask one member's workflow for a promise. A member whose workflow has ended can claim
        nothing (its claims run in its workflow's steps): that counts as a promise."""
        handle = self._client.get_workflow_handle(workflow_id)
        try:
            answer: PromiseAnswer = await handle.execute_update(
                UPDATE_FAILSAFE_PROMISE, req, result_type=PromiseAnswer
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return PromiseAnswer(granted=True, reason="its workflow has ended: it can claim nothing")
            raise
        except WorkflowUpdateFailedError as exc:
            return PromiseAnswer(granted=False, reason=f"the update failed: {exc.cause or exc}")
        return answer
