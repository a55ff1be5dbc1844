"""How an enrolment carries out its plan: exchanges side by side, each exchange's actions in order,
the report in the plan's order. The actions themselves (registrations through Temporal) are
stood in for here; tests/integration/test_fleet.py runs them for real."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from perseus.fleet import enrol
from perseus.fleet.enrol import EnrolReport, carry_out
from perseus.fleet.file import Change, ChangeKind, Placement

pytestmark = pytest.mark.unit


def actions(exchanges: int) -> list[Change]:
    plan: list[Change] = []
    for i in range(exchanges):
        plan.append(Change(kind=ChangeKind.REGISTER_ACTIVE, exchange=f"ex{i}", host="a"))
        plan.append(Change(kind=ChangeKind.REGISTER_STANDBY, exchange=f"ex{i}", host="b", priority=1))
    return plan


async def test_exchanges_run_side_by_side_and_each_in_its_planned_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = 0
    most = 0
    order: list[tuple[str, str | None]] = []

    async def one(
        client: Any, placements: dict[str, Placement], action: Change, actor: str | None = None
    ) -> tuple[str, str]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        order.append((action.exchange, action.host))
        # Later exchanges finish first: the report must still follow the plan.
        await asyncio.sleep(0.001 * (100 - int(action.exchange[2:])))
        running -= 1
        if action.exchange == "ex3" and action.host == "a":
            return "failed", f"{action.exchange} on {action.host}: refused"
        return "done", f"{action.exchange} on {action.host}"

    monkeypatch.setattr(enrol, "_carry_out_one", one)
    plan = actions(100)
    report = EnrolReport()
    await carry_out(None, {}, plan, report)  # type: ignore[arg-type]

    assert most == enrol.ENROL_CONCURRENCY  # side by side, and never more than the bound
    for i in range(100):  # each exchange: its active before its standby, even after a failure
        assert order.index((f"ex{i}", "a")) < order.index((f"ex{i}", "b"))
    expected = [f"{a.exchange} on {a.host}" for a in plan if (a.exchange, a.host) != ("ex3", "a")]
    assert report.done == expected
    assert report.failed == ["ex3 on a: refused"]
