"""One timing module: every figure of ``perseus.timing`` is written there and nowhere else.

The interval bounds, its default, the TTL and renew-deadline factors, the claim-over line and the
health thresholds were once written in four places each; a change to one copy silently left the
others behind. This test reads every module of the product (not tests, not benchmarks) and fails
where one of those figures is written out as a literal in a timing context: a constant named like
one, a default for anything called ``*interval*``, a bound compared with an interval, or an interval
multiplied by one of the factors.
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

#: Constant names that only perseus.timing may give a value.
TIMING_NAME = re.compile(
    r"(^|_)(TTL_FACTOR|RENEW_DEADLINE|RELEASE_MARGIN|CLAIM_OVER|ALIVE_INTERVALS|LATE_FACTOR|"
    r"STALE_FACTOR|HEAD_START|HEARTBEAT_FLOOR|HEARTBEAT_TIMEOUT_FACTOR)|(MIN|MAX|DEFAULT)_\w*INTERVAL"
)
#: Values an interval must not be given or compared with by hand.
BOUNDS = {timing.MIN_INTERVAL_S, timing.MAX_INTERVAL_S, timing.DEFAULT_INTERVAL_S}
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
            if TIMING_NAME.search(name) and _numbers_within(value):
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


def test_no_timing_figure_is_written_outside_the_timing_module() -> None:
    assert HOME.exists()
    report = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in PRODUCT
        if path != HOME
        for line in violations(path.read_text())
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


def test_the_rules_hold_together() -> None:
    """The order the design depends on: late < renew deadline < claim-over line < TTL."""
    assert timing.MIN_INTERVAL_S <= timing.DEFAULT_INTERVAL_S <= timing.MAX_INTERVAL_S
    assert timing.LATE_FACTOR < timing.RENEW_DEADLINE_FACTOR < timing.CLAIM_OVER_INTERVALS < timing.TTL_FACTOR
    assert timing.STALE_FACTOR == timing.RENEW_DEADLINE_FACTOR
    assert timing.ttl_ms(timing.DEFAULT_INTERVAL_S) == 45_000
    assert timing.claim_over_s(1.0) == pytest.approx(2.1)
    assert timing.interval_in_bounds(timing.DEFAULT_INTERVAL_S)
    assert not timing.interval_in_bounds(float("nan"))
    assert not timing.interval_in_bounds(float("inf"))
    assert not timing.interval_in_bounds(timing.MIN_INTERVAL_S / 2)
