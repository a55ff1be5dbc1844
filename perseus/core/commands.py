"""Commands: queued one at a time, each answered once it ran (or once the instance ended).

Owns :class:`~perseus.core.state.CommandState`. What a command does is :mod:`perseus.core.execute`'s;
whether it is accepted at all, :func:`perseus.core.decisions.refuse_command`'s.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from perseus.core.lifecycle import Command, State
from perseus.core.state import CommandState, Ticket
from perseus.models import CommandResult, HandoffRequest


class Commands:
    """The command queue, its answers, and who is acting now."""

    def __init__(self, st: CommandState) -> None:
        self.st = st

    @property
    def queued(self) -> bool:
        return bool(self.st.queue)

    @property
    def pending(self) -> list[Command]:
        return [t.command for t in self.st.queue]

    @property
    def actor(self) -> str | None:
        return self.st.actor

    def _update(self, **changes: Any) -> None:
        self.st = replace(self.st, **changes)

    def enqueue(
        self,
        command: Command,
        *,
        handoff: HandoffRequest | None = None,
        confirm_to: str | None = None,
        first: bool = False,
        internal: bool = False,
        promoted: bool = False,
        actor: str | None = None,
    ) -> Ticket:
        """Queue a command; ``internal`` ones (promotion, restart) have no caller waiting (number -1)."""
        st = self.st
        ticket = Ticket(
            -1 if internal else st.next_ticket,
            command,
            handoff=handoff,
            confirm_to=confirm_to,
            promoted=promoted,
            actor=actor,
        )
        queue = (ticket, *st.queue) if first else (*st.queue, ticket)
        self._update(queue=queue, next_ticket=st.next_ticket if internal else st.next_ticket + 1)
        return ticket

    def next(self) -> Ticket:
        ticket, *rest = self.st.queue
        self._update(queue=tuple(rest))
        return ticket

    def acting(self, actor: str | None) -> None:
        """Whose command runs now (None: the instance's own doing)."""
        self._update(actor=actor)

    def answer(self, ticket: Ticket, result: CommandResult) -> None:
        if ticket.number >= 0:  # internal tickets (promotion, restart) have nobody waiting
            self._update(results={**self.st.results, ticket.number: result})

    def has_result(self, ticket: Ticket) -> bool:
        return ticket.number in self.st.results

    def take_result(self, ticket: Ticket) -> CommandResult:
        results = dict(self.st.results)
        result = results.pop(ticket.number)
        self._update(results=results)
        return result

    def confirm_start(self, confirm_to: str) -> bool:
        """Have the queued start (if any) answer a handoff's confirmation once done."""
        queue = self.st.queue
        at = next((i for i, t in enumerate(queue) if t.command is Command.START), None)
        if at is None:
            return False
        changed = replace(queue[at], confirm_to=confirm_to)
        self._update(queue=(*queue[:at], changed, *queue[at + 1 :]))
        return True

    def close(self, outcome: str, state: State) -> None:
        """The instance ended: every queued command is answered with why, and none stays queued."""
        ended = {
            t.number: CommandResult(
                command=t.command,
                from_state=state,
                state=state,
                transitions=[],
                error=f"instance ended: {outcome}",
            )
            for t in self.st.queue
        }
        self._update(results={**self.st.results, **ended}, queue=())
