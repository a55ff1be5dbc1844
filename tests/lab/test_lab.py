"""The lab end to end (root only): three connector hosts in namespaces of their own, the servers in
the infrastructure namespace, one exchange active on one host and standing by on two; the active
host is partitioned from Redis past its renew deadline and healed. The judge, reading only the
sink's log, finds no two connectors acting at once and epochs that never went down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.lab.judge import judge, read_log
from tests.lab.netns import Lab, namespaces, root_reason
from tests.lab.stack import LabStack

REASON = root_reason()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
]

EXCHANGE = "kraken"


def _hosts_acting(stack: LabStack, since: float) -> set[str]:
    return (
        {a.host for a in read_log(stack.sink_log) if a.accepted and a.at >= since}
        if stack.sink_log.exists()
        else set()
    )


def _until(what: str, check: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_partition_from_redis_keeps_one_connector(tmp_path: Path) -> None:
    lab = Lab(name="plab-e2e", hosts=3)
    stack = LabStack(lab, tmp_path / "lab", interval=1.0)
    try:
        stack.up()
        stack.register(EXCHANGE, 1, standby=False)
        stack.register(EXCHANGE, 2, standby=True)
        stack.register(EXCHANGE, 3, standby=True)
        _until("host 1 acting at the sink", lambda: lab.host(1) in _hosts_acting(stack, 0))
        # The fault: host 1 cut off from Redis, both ways, for 8 renew intervals.
        lab.partition(1, "redis")
        time.sleep(8 * stack.interval)
        lab.heal(1, "redis")
        start = time.monotonic()
        # Someone acts afterwards (a standby promoted, or host 1 again under a new epoch).
        _until(
            "a connector acting after the partition", lambda: _hosts_acting(stack, start - 0.5 + 0 * start)
        )
        time.sleep(3 * stack.interval)
        verdict = judge(read_log(stack.sink_log), link_delay_s=0.05, gap_s=3 * 0.1)
        print("lab availability", verdict.availability, "longest gap", verdict.longest_gap)
        assert verdict.ok, verdict.violations
        assert len({a.epoch for a in read_log(stack.sink_log) if a.accepted}) >= 2
    finally:
        stack.down()
    assert not [ns for ns in namespaces() if ns.startswith(lab.name)]
