"""One timing module: every figure of ``perseus.timing`` is written there and nowhere else.

The interval bounds, its default, the TTL and renew-deadline factors, the claim-over line and the
health thresholds were once written in four places each; a change to one copy silently left the
others behind. This test reads every module of the product (not tests, not benchmarks) and fails
where one of those figures is written out as a literal in a timing context: a constant named like
one (or named as any figure of ``perseus.timing``), a default for anything called ``*interval*``, a
bound compared with an interval, or an interval multiplied by one of the factors.

The parts that time a claim — the decision core, the host (keeper, grid, watchdog, health, worker
records), the activities, the workflow and the worker — are held to more: there, no number of
seconds is written at all where a timing figure is meant. A constant named as a duration
(``*_S``, ``*_MS``, ``*_INTERVALS``, ``*_FACTOR``) given a number, a timeout, delay or duration
argument given one (``timeout_s=10``, ``timeout=timedelta(seconds=5)``, ``sleep(0.2)``), a
parameter default for one (``timeout_s: float = 120``), or a floor beside an interval
(``max(5.0, interval_s)``) fails; zero (no wait) and unit conversions (``* 1000``) do not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from perseus import timing

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = [
    *sorted((ROOT / "perseus").rglob("*.py")),
    *sorted((ROOT / "workflows").rglob("*.py")),
    *sorted((ROOT / "activities").rglob("*.py")),
    ROOT / "worker.py",
]
HOME = ROOT / "perseus" / "timing.py"
#: The parts that time a claim: no number of seconds is written there at all (see the docstring).
TIMED = [
    ROOT / "perseus" / "core",
    ROOT / "perseus" / "host",
    ROOT / "activities",
    ROOT / "workflows",
    ROOT / "worker.py",
]

#: Constant names that only perseus.timing may give a value.
TIMING_NAME = re.compile(
    r"(^|_)(TTL_FACTOR|RENEW_DEADLINE|RELEASE_MARGIN|CLAIM_OVER|ALIVE_INTERVALS|LATE_FACTOR|"
    r"STALE_FACTOR|HEAD_START|HEARTBEAT_FLOOR|HEARTBEAT_TIMEOUT_FACTOR)|(MIN|MAX|DEFAULT)_\w*INTERVAL"
)
#: Values an interval must not be given or compared with by hand.
BOUNDS = {timing.MIN_INTERVAL_S, timing.MAX_INTERVAL_S, timing.DEFAULT_INTERVAL_S}
#: Every figure perseus.timing defines: no other module of the product may give one of these names
#: a value of its own.
TIMING_FIGURES = {
    name for name, value in vars(timing).items() if name.isupper() and isinstance(value, int | float)
}
#: In the timed parts, a constant so named is a duration and belongs in perseus.timing (a rate such
#: as ``TROUBLED_SPANS_PER_S`` is a count, not a duration).
DURATION_NAME = re.compile(r"(_S|_MS|_INTERVALS|_FACTOR|_TIMEOUT|_WINDOW|_WITHIN)$")
RATE_NAME = re.compile(r"_PER_S$")
#: An argument or parameter so named is a duration (``timeout_s``, ``start_to_close_s``, ``every_s``,
#: ``graceful_shutdown_timeout``, ``maximum_interval``, ``rpc_timeout``).
DURATION_ARG = re.compile(r"(^|_)(s|ms|timeout|interval|seconds|milliseconds|minutes|hours|days)$")
#: Calls whose arguments are durations.
DURATION_CALLS = {"timedelta", "sleep", "Sleep", "WaitLease", "WaitUntil", "wait_for", "timeout"}
#: ... and perseus.timing's own rules, which take an interval.
DURATION_CALLS |= {"ttl_ms", "ttl_s", "renew_deadline_s", "claim_over_s"}
#: Unit conversions, not timing figures.
UNITS = {1000.0, 1_000_000.0}
#: Factors an interval must not be multiplied by by hand.
FACTORS = {
    float(timing.TTL_FACTOR),
    timing.RENEW_DEADLINE_FACTOR,
    timing.CLAIM_OVER_INTERVALS,
    timing.ALIVE_INTERVALS,
}


def _number(node: ast.AST) -> float | None:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return float(node.value)
    return None


def _mentions_interval(node: ast.AST) -> bool:
    return "interval" in ast.unparse(node).lower()


def _numbers_within(node: ast.AST) -> list[float]:
    return [n for sub in ast.walk(node) if (n := _number(sub)) is not None]


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _terms(node: ast.AST) -> list[float]:
    """The numbers that make up the amount ``node`` comes to: its sums' and products' terms, either
    branch of a conditional, a ``max``/``min``/``timedelta``'s arguments — not a divisor, exponent,
    or what another call makes of its arguments (``interval / 2``, ``2 ** n``, ``round(x, 3)``)."""
    if (n := _number(node)) is not None:
        return [n]
    if isinstance(node, ast.UnaryOp):
        return _terms(node.operand)
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Add | ast.Sub | ast.Mult):
            return _terms(node.left) + _terms(node.right)
        return _terms(node.left)
    if isinstance(node, ast.IfExp):
        return _terms(node.body) + _terms(node.orelse)
    if isinstance(node, ast.Call) and _call_name(node) in {"max", "min", "timedelta", "float", "int"}:
        return [t for arg in [*node.args, *(k.value for k in node.keywords)] for t in _terms(arg)]
    return []


def _figures_within(node: ast.AST) -> list[float]:
    """The numbers ``node`` is made of that can be timing figures (not zero, not a unit conversion)."""
    return [n for n in _terms(node) if n != 0 and n not in UNITS]


def _duration(node: ast.AST) -> bool:
    """Whether ``node`` reads as an amount of time (an interval, or something named ``*_s``), not a
    count made from one (``math.ceil(floor_s / interval_s)``)."""
    if isinstance(node, ast.Call) and _call_name(node) not in {"max", "min"}:
        return False
    return _mentions_interval(node) or bool(re.search(r"_s\b|deadline", ast.unparse(node)))


def timed_violations(source: str) -> list[str]:
    """Each place ``source`` — a module of a part that times a claim — writes a number of seconds by
    hand, as ``line: what``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = ast.unparse(target)
                if (
                    name.isupper()
                    and DURATION_NAME.search(name)
                    and not RATE_NAME.search(name)
                    and _figures_within(node.value)
                ):
                    found.append(f"{node.lineno}: {name} is a timing figure")
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if name in DURATION_CALLS and any(_figures_within(arg) for arg in node.args):
                found.append(f"{node.lineno}: {ast.unparse(node)} waits a figure written by hand")
            for keyword in node.keywords:
                if keyword.arg and DURATION_ARG.search(keyword.arg) and _figures_within(keyword.value):
                    found.append(f"{node.lineno}: {keyword.arg}={ast.unparse(keyword.value)} by hand")
            literal = [a for a in node.args if _number(a) is not None and _figures_within(a)]
            if (
                name in {"max", "min"}
                and literal
                and any(_duration(a) for a in node.args if a not in literal)
            ):
                found.append(f"{node.lineno}: {ast.unparse(node)} bounds a duration by hand")
        if isinstance(node, ast.arguments):
            positional = [*node.posonlyargs, *node.args]
            pairs = list(zip(positional[len(positional) - len(node.defaults) :], node.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d is not None]
            for arg, default in pairs:
                if DURATION_ARG.search(arg.arg) and _figures_within(default):
                    found.append(f"{default.lineno}: default of {arg.arg} by hand")
    return found


def violations(source: str) -> list[str]:
    """Each place ``source`` writes a timing figure by hand, as ``line: what``."""
    found: list[str] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            name = ast.unparse(target)
            if value is None:
                continue
            if (TIMING_NAME.search(name) or name in TIMING_FIGURES) and _numbers_within(value):
                found.append(f"{line}: {name} is perseus.timing's")
            elif "interval" in name.lower() and BOUNDS & set(_numbers_within(value)):
                found.append(f"{line}: {name} given an interval figure by hand")
        if isinstance(node, ast.arguments):
            positional = [*node.posonlyargs, *node.args]
            pairs = list(zip(positional[len(positional) - len(node.defaults) :], node.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d is not None]
            for arg, default in pairs:
                if "interval" in arg.arg.lower() and _number(default) in BOUNDS:
                    found.append(f"{default.lineno}: default of {arg.arg} by hand")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            for literal, other in ((node.left, node.right), (node.right, node.left)):
                if _number(literal) in FACTORS and _mentions_interval(other):
                    found.append(f"{node.lineno}: {ast.unparse(node)} multiplies an interval by hand")
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_number(x) in BOUNDS for x in operands) and any(_mentions_interval(x) for x in operands):
                found.append(f"{node.lineno}: {ast.unparse(node)} compares an interval by hand")
    return found


def _timed(path: Path) -> bool:
    return any(path == part or part in path.parents for part in TIMED)


def test_no_timing_figure_is_written_outside_the_timing_module() -> None:
    assert HOME.exists()
    assert all(part.exists() for part in TIMED)
    report = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in PRODUCT
        if path != HOME
        for line in [
            *violations(path.read_text()),
            *(timed_violations(path.read_text()) if _timed(path) else []),
        ]
    ]
    assert report == [], "timing figures belong in perseus/timing.py:\n" + "\n".join(report)


@pytest.mark.parametrize(
    "source",
    [
        "TTL_FACTOR = 3",
        "MIN_INTERVAL_S = 0.5",
        "class S:\n    heartbeat_interval: float = Field(default=15.0)",
        "def parse(text, *, default_interval_s: float = 15.0): ...",
        "ttl = 3 * heartbeat_interval_s",
        "late = age > interval_s * 1.5",
        "over = (2.1) * self.inp.heartbeat_interval_s",
        "ok = 0.5 <= interval <= 3600",
    ],
)
def test_the_check_finds_each_kind_of_duplicate(source: str) -> None:
    assert violations(source), source


@pytest.mark.parametrize(
    "source",
    [
        "from perseus.timing import TTL_FACTOR\nttl = TTL_FACTOR * interval_s",
        "limit = ready_timeout_s + WARM_WAIT_SLACK_INTERVALS * interval",
        "POST_TIMEOUT_S = 15.0",
        "half = interval_s / 2",
        "step = max(1.0, interval_s)",
    ],
)
def test_the_check_leaves_other_figures_alone(source: str) -> None:
    assert violations(source) == [], source


@pytest.mark.parametrize(
    "source",
    [
        # the figures issue 26 moved, each written back as it once was
        "PICKUP_FACTOR = 1.0",
        "CONNECTOR_HEARTBEAT_TIMEOUT_S = 5.0",
        "HOST_BUSY_LIMIT_S = 120.0",
        "WARM_RETRY_CAP_S = 300.0",
        "HANDOFF_CLAIM_FLOOR_S = 3.0",
        "DETACHED_INTERVALS = 3.0",
        "SLOT_S = 0.1",
        "CHECK_TIMEOUT_S = 2.0",
        "QUIET_INTERVALS = 1.05",
        "LIVE_POLL_WINDOW = timedelta(seconds=75)",
        "picked_up_at = now + timedelta(seconds=pickup + max(interval, 3.0))",
        "wait = max(wake_at - now, timedelta(milliseconds=50))",
        "return max(5.0, self.inp.heartbeat_interval_s)",
        "step = max(1.0, self.ctx.inp.heartbeat_interval_s / 2)",
        "Call(Activity.PUT_STANDBY, record, start_to_close_s=10, retry=Retry.SHARED)",
        "self.host.step(Activity.CONNECTOR_DISCONNECT, claim, timeout_s=30)",
        "def step(self, activity, claim, timeout_s: float = 120): ...",
        "async def with_heartbeats(work, every_s: float = 1.0): ...",
        "await asyncio.sleep(0.2)",
        "await asyncio.wait_for(task, 5)",
        "Worker(client, graceful_shutdown_timeout=timedelta(seconds=5))",
        "RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10))",
        "await handle.describe(rpc_timeout=timedelta(seconds=2))",
        "self._watchdog.arm(pgid, time.monotonic() + renew_deadline_s(0.5))",
    ],
)
def test_the_timed_parts_write_no_figure_by_hand(source: str) -> None:
    assert violations(source) + timed_violations(source), source


@pytest.mark.parametrize(
    "source",
    [
        "from perseus.timing import STEP_TIMEOUT_S\nCall(a, r, start_to_close_s=STEP_TIMEOUT_S)",
        "wake = min(picked_up_at, now + timedelta(seconds=stale + LOOK_SLACK_S))",
        "yield WaitUntil(answered, timeout_s=min(look_in, limit - waited))",
        "host.step(a, claim, act_after_s=0.0 if stopped else act_after_vacancy_s(interval))",
        "record(heartbeat_interval_ms=int(interval_s * 1000))",
        "TROUBLED_SPANS_PER_S = 2",
        "STEP_SLOTS = 500",
        "RetryPolicy(backoff_coefficient=2.0, maximum_attempts=5)",
        "async with asyncio.timeout(interval_s / 2): ...",
        "late = renewed_ms_ago / 1000",
    ],
)
def test_the_timed_parts_may_still_compute(source: str) -> None:
    assert timed_violations(source) == [], source


def test_elsewhere_a_module_keeps_its_own_io_timeouts() -> None:
    """Outside the timed parts (an HTTP client's, a database pool's timeouts) only the claim's own
    figures and perseus.timing's names are checked; a figure named as perseus.timing's is not."""
    assert violations("POST_TIMEOUT_S = 15.0\nawait asyncio.sleep(0.2)") == []
    assert violations("LIVE_POLL_WINDOW_S = 75.0")
    assert violations("STEP_TIMEOUT_S = 10")


def test_the_rules_hold_together() -> None:
    """The order the design depends on: late < renew deadline < claim-over line < TTL."""
    assert timing.MIN_INTERVAL_S <= timing.DEFAULT_INTERVAL_S <= timing.MAX_INTERVAL_S
    assert timing.LATE_FACTOR < timing.RENEW_DEADLINE_FACTOR < timing.CLAIM_OVER_INTERVALS < timing.TTL_FACTOR
    # This release's deadline is at most an undeclared one: a line drawn for a holder that does not
    # say is never earlier than the one its own record would give.
    assert timing.RENEW_DEADLINE_FACTOR <= timing.UNDECLARED_RENEW_DEADLINE_FACTOR
    assert timing.claim_over_s(1.0, timing.renew_deadline_s(1.0)) == pytest.approx(1.8)
    assert timing.claim_over_s(2.0, timing.renew_deadline_s(2.0)) == pytest.approx(3.6)
    assert timing.STALE_FACTOR == timing.UNDECLARED_RENEW_DEADLINE_FACTOR
    assert timing.ttl_ms(timing.DEFAULT_INTERVAL_S) == 45_000
    assert timing.claim_over_s(1.0) == pytest.approx(2.1)
    assert timing.interval_in_bounds(timing.DEFAULT_INTERVAL_S)
    assert not timing.interval_in_bounds(float("nan"))
    assert not timing.interval_in_bounds(float("inf"))
    assert not timing.interval_in_bounds(timing.MIN_INTERVAL_S / 2)


@pytest.mark.parametrize(
    ("interval_s", "expected_s"), [(0.5, 1.0), (1.0, 1.0), (2.0, 1.0), (4.0, 2.0), (15.0, 7.5), (60.0, 10.0)]
)
def test_the_workflow_task_timeout_is_half_an_interval_within_its_floor_and_cap(
    interval_s: float, expected_s: float
) -> None:
    assert timing.workflow_task_timeout_s(interval_s) == expected_s
