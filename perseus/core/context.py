"""What every part of an instance's core is given: its input, its workflow id, its clock, and who
and where it is (learnt once, at registration). Passed to each part explicitly; no part keeps
memory of another's.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Protocol

from perseus.core.actions import Details
from perseus.core.state import Identity
from perseus.keys import host_task_queue, iso
from perseus.models import Claim, InstanceInput, Resolved
from perseus.timing import HOST_WAIT_FLOOR_S


class Clock(Protocol):
    """The only sources of time and identity the core reads (the workflow's deterministic ones)."""

    def now(self) -> datetime: ...

    def uuid4(self) -> str: ...


class Context:
    """An instance's fixed facts, and its identity (a frozen value, replaced at registration)."""

    def __init__(self, inp: InstanceInput, workflow_id: str, clock: Clock, identity: Identity) -> None:
        self.inp = inp
        self.wf_id = workflow_id
        self.clock = clock
        self.host_queue = host_task_queue(inp.host)
        self.identity = identity

    @property
    def resolved(self) -> Resolved:
        """The exchange and admin (registration resolved them before anything asks)."""
        assert self.identity.resolved
        return self.identity.resolved

    @property
    def hostname(self) -> str:
        return self.identity.hostname or self.inp.host

    def identify(self, **changes: object) -> None:
        self.identity = replace(self.identity, **changes)  # type: ignore[arg-type]

    def host_wait(self) -> float:
        # Long enough for a live worker to pick the task up, short enough to report a missing host.
        return max(HOST_WAIT_FLOOR_S, self.inp.heartbeat_interval_s)


def details(
    ctx: Context,
    *,
    state: str,
    claim: Claim | None,
    symbols: int,
    last_heartbeat: datetime | None,
    last_error: str | None,
    last_decision: str | None,
    outcome: str | None,
) -> Details:
    """The Web UI's current details of the run, from what each part says."""
    held = f"epoch {claim.epoch}" if claim else "no claim"
    return Details(
        f"**state**: {state}  \n**host**: {ctx.hostname} "
        f"({ctx.identity.ip_address or 'IP unknown'})  \n**claim**: {held}  \n"
        f"**symbols**: {symbols}  \n**last heartbeat**: "
        f"{iso(last_heartbeat) if last_heartbeat else 'see status key'}  \n"
        f"**last error**: {last_error or '-'}  \n**last decision**: {last_decision or '-'}"
        + (f"  \n**outcome**: {outcome}" if outcome else "")
    )
