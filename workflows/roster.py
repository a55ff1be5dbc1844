"""The failsafe's roster of one exchange, as a durable workflow (id ``roster-{exchange}``).

Every instance that could take the exchange with its failsafe on: an instance's registration
*enrols* it (an update, answered once the roster holds it) before it watches or claims, and its
run's end *leaves* (a signal: an instance whose workflow ended can claim nothing). A holder that
cannot renew *reads* it with an update — answered after every enrolment completed before it, which
a query or the visibility store would not promise — and asks each member for a promise
(docs/design.md, "Failsafe: holding through a Redis outage", the protocol). Temporal carries the
promises anyway, so the roster adds no store to the path of a Redis outage.

It decides nothing and keeps only the members, keyed by workflow id (a successor run under the
same id is the same member: it enrols again). It continues as new when its history grows long.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from perseus.models import RosterAnswer, RosterInput, RosterMember


@workflow.defn(name="RosterWorkflow")
class RosterWorkflow:
    @workflow.init
    def __init__(self, inp: RosterInput) -> None:
        self._members: dict[str, RosterMember] = {m.workflow_id: m for m in inp.members}

    def _answer(self) -> RosterAnswer:
        return RosterAnswer(members=sorted(self._members.values(), key=lambda m: m.workflow_id))

    @workflow.update
    def enrol(self, member: RosterMember) -> RosterAnswer:
        """Add ``member``; the answer is the roster with it (the enrolling host binds itself if
        anyone else is in it)."""
        self._members[member.workflow_id] = member
        return self._answer()

    @workflow.update
    def roster(self) -> RosterAnswer:
        """The roster after every enrolment that completed before this read (a holder's round)."""
        return self._answer()

    @workflow.query
    def members(self) -> RosterAnswer:
        """The roster for the status views (a query: it adds nothing to the history)."""
        return self._answer()

    @workflow.signal
    def leave(self, member: RosterMember) -> None:
        """``member``'s run ended. Only that member's entry goes: a newer run's enrolment of the
        same workflow id, if one raced ahead, is the same entry and stays harmlessly until it leaves."""
        self._members.pop(member.workflow_id, None)

    @workflow.run
    async def run(self, inp: RosterInput) -> None:
        def long() -> bool:
            info = workflow.info()
            limit = inp.history_limit
            return info.is_continue_as_new_suggested() or info.get_current_history_length() > limit

        await workflow.wait_condition(long)
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp.model_copy(update={"members": self._answer().members}))
