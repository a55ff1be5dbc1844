"""The judge's rules on hand-made sink logs, and the sink, the lab connector and the judge together
on loopback: a clean handover passes, a stale holder is caught, the fenced sink refuses it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perseus.devstack import services
from tests.lab.judge import Action, judge, read_log, window

ROOT = Path(__file__).resolve().parents[2]


def _run(host: str, epoch: int, start: float, stop: float, every: float = 0.1) -> list[Action]:
    out, t, seq = [], start, 0
    while t < stop:
        seq += 1
        out.append(Action("coinbase", host, epoch, seq, round(t, 6)))
        t += every
    return out


@pytest.mark.unit
def test_a_clean_handover_passes_and_its_gap_is_measured() -> None:
    actions = _run("a", 1, 0.0, 5.0) + _run("b", 2, 6.0, 10.0)
    verdict = judge(actions, link_delay_s=0.05, gap_s=0.3, end=10.0)
    assert verdict.ok, verdict.violations
    one, none, several = verdict.availability["coinbase"]
    assert several == 0 and none > 0 and abs(one + none - 1) < 1e-9
    # a's last action at 5.0 (float steps of 0.1 just under 5.0), acting until 5.3; b from 6.0.
    assert 0.6 < verdict.longest_gap["coinbase"] < 0.8


@pytest.mark.unit
def test_a_stale_holder_acting_after_the_handover_is_caught() -> None:
    actions = _run("a", 1, 0.0, 7.0) + _run("b", 2, 6.0, 10.0)
    verdict = judge(actions, link_delay_s=0.05, gap_s=0.3, end=10.0)
    assert not verdict.ok and "acted under epoch 1" in verdict.violations[0]
    assert verdict.availability["coinbase"][2] > 0  # the overlap is reported too


@pytest.mark.unit
def test_one_action_in_flight_across_the_handover_is_within_the_link_delay() -> None:
    actions = _run("a", 1, 0.0, 6.0) + [Action("coinbase", "a", 1, 99, 6.03)] + _run("b", 2, 6.0, 10.0)
    assert judge(actions, link_delay_s=0.05, gap_s=0.3).ok
    # ... but not with the sink fencing: there an older epoch accepted at all is a violation.
    assert not judge(actions, link_delay_s=0.05, gap_s=0.3, fenced=True).ok


@pytest.mark.unit
def test_two_hosts_under_one_epoch_is_split_brain() -> None:
    actions = _run("a", 3, 0.0, 1.0) + _run("b", 3, 2.0, 3.0)
    verdict = judge(actions, link_delay_s=0.05, gap_s=0.3)
    assert any("epoch 3 acted by a and b" in v for v in verdict.violations)


@pytest.mark.unit
def test_refused_actions_do_not_count() -> None:
    stale = [Action("coinbase", "a", 1, i, 7.0 + i / 10, accepted=False) for i in range(5)]
    actions = _run("a", 1, 0.0, 5.0) + _run("b", 2, 6.0, 10.0) + stale
    assert judge(actions, link_delay_s=0.05, gap_s=0.3, fenced=True).ok


def _connector(sink_port: int, host: str, epoch: int) -> subprocess.Popen[bytes]:
    env = {"PERSEUS_EXCHANGE": "kraken", "PERSEUS_EPOCH": str(epoch), "PERSEUS_ROLE": "active", "PATH": ""}
    argv = [sys.executable, "-m", "tests.lab.connector", "--sink", f"127.0.0.1:{sink_port}", "--host", host]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def _count(log: Path, n: int, host: str) -> None:
    deadline = time.monotonic() + 30
    while not log.exists() or sum(1 for a in read_log(log) if a.host == host) < n:
        assert time.monotonic() < deadline, f"no {n} actions from {host}"
        time.sleep(0.05)


@pytest.mark.integration
@pytest.mark.parametrize("fenced", [False, True])
def test_sink_connectors_and_judge_on_loopback(tmp_path: Path, fenced: bool) -> None:
    log = tmp_path / "sink.jsonl"
    port = services.free_port()
    argv = [sys.executable, "-m", "tests.lab.sink", "--port", str(port), "--log", str(log)]
    sink = subprocess.Popen([*argv, *(["--fenced"] if fenced else [])], cwd=ROOT, stdout=subprocess.PIPE)
    children = [sink]
    try:
        assert sink.stdout is not None and b"listening" in sink.stdout.readline()
        a = _connector(port, "host-a", 1)
        children.append(a)
        _count(log, 5, "host-a")
        a.kill()  # a clean handover: a is gone before b acts
        a.wait(10)
        b = _connector(port, "host-b", 2)
        children.append(b)
        _count(log, 5, "host-b")
        assert judge(read_log(log), link_delay_s=0.05, gap_s=0.5).ok
        # A zombie: a starts again under its old epoch while b acts.
        zombie = _connector(port, "host-a", 1)
        children.append(zombie)
        before = len([x for x in read_log(log) if x.host == "host-a"])
        _count(log, before + 5, "host-a")
        verdict = judge(read_log(log), link_delay_s=0.05, gap_s=0.5, fenced=fenced)
        refused = [x for x in read_log(log) if not x.accepted]
        if fenced:
            # The exchange-side fence refused every stale action: nothing older was accepted.
            assert verdict.ok and refused and all(x.host == "host-a" and x.epoch == 1 for x in refused)
        else:
            assert not verdict.ok and not refused
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait(10)
        if sink.stdout is not None:
            sink.stdout.close()


@pytest.mark.unit
def test_a_window_says_whether_the_holder_was_kept_or_another_took_over() -> None:
    """The failsafe's outcomes as the sink saw them around a fault starting at 5.0."""
    kept = window(_run("a", 3, 0.0, 12.0), "coinbase", 5.0)
    assert kept.before == ("a", 3) and kept.during == {("a", 3)} and kept.after == ("a", 3)
    assert kept.kept and not kept.moved and kept.longest_silence < 0.15
    # A silence inside the window, then another host under a newer epoch.
    moved = window(_run("a", 3, 0.0, 7.0) + _run("b", 4, 9.0, 12.0), "coinbase", 5.0)
    assert moved.moved and not moved.kept and moved.after == ("b", 4)
    assert 1.9 < moved.longest_silence < 2.2
    # The same host back under a newer epoch (it stopped and claimed again) is neither.
    again = window(_run("a", 3, 0.0, 7.0) + _run("a", 4, 8.0, 12.0), "coinbase", 5.0)
    assert not again.kept and not again.moved
    # A standby acting for a moment inside the window, the holder after: not kept.
    flap = window(_run("a", 3, 0.0, 7.0) + _run("b", 4, 7.5, 8.0) + _run("a", 5, 8.5, 12.0), "coinbase", 5.0)
    assert not flap.kept and flap.during == {("a", 3), ("b", 4), ("a", 5)}
    # Refused actions and other exchanges do not count; nobody before: neither.
    refused = [Action("coinbase", "z", 9, 1, 6.0, accepted=False), Action("kraken", "y", 1, 1, 6.0)]
    assert window(_run("a", 3, 0.0, 12.0) + refused, "coinbase", 5.0).kept
    empty = window(_run("a", 3, 6.0, 12.0), "coinbase", 5.0)
    assert empty.before is None and not empty.kept and not empty.moved
