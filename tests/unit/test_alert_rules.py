"""The alert rules of docs/metrics.md and the Grafana dashboard name only series Perseus exports: a
renamed metric must not leave an alert that silently never fires."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SERIES = re.compile(r"\bperseus_[a-z_]+")
#: What prometheus_client appends to a counter's or a histogram's name on the wire.
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def exported() -> set[str]:
    """Every metric name perseus/metrics.py declares (module series and the board's gauges), and the
    counters the instance workflow counts through the SDK's meter (the worker's Temporal runtime
    exports those, on the same /metrics)."""
    source = (ROOT / "perseus" / "metrics.py").read_text()
    workflow = (ROOT / "workflows" / "instance.py").read_text()
    counted = re.findall(r'create_counter\(\s*"(perseus_[a-z_]+)"', workflow)
    return set(re.findall(r'"(perseus_[a-z_]+)"', source)) | set(counted)


def known(series: str, names: set[str]) -> bool:
    return series in names or any(series.endswith(s) and series.removesuffix(s) in names for s in SUFFIXES)


def alert_rules() -> dict[str, str]:
    """``{alert name: expr}`` from the YAML block under "What to alert on"."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text.split("## What to alert on", 1)[1]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    rules: dict[str, str] = {}
    name = ""
    for line in block.splitlines():
        if m := re.match(r"\s*- alert: (\w+)", line):
            name = m[1]
        elif m := re.match(r"\s*expr: (.+)", line):
            rules[name] = m[1]
    return rules


def test_the_alert_rules_cover_holders_standbys_and_pauses() -> None:
    rules = alert_rules()
    for wanted in ("PerseusNoHolder", "PerseusHolderFlapping", "PerseusNoStandby", "PerseusPausedLong"):
        assert wanted in rules, sorted(rules)
    assert "perseus_exchange_holder" in rules["PerseusNoHolder"]
    assert "perseus_exchange_standbys" in rules["PerseusNoStandby"]
    assert "perseus_exchange_paused" in rules["PerseusPausedLong"]


def test_every_series_an_alert_or_the_dashboard_reads_is_exported() -> None:
    names = exported()
    used: dict[str, str] = {}
    for alert, expr in alert_rules().items():
        used.update({series: f"alert {alert}" for series in SERIES.findall(expr)})
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    used.update({series: "the dashboard" for series in SERIES.findall(value)})
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    assert len(used) > 10
    unknown = {series: where for series, where in used.items() if not known(series, names)}
    assert unknown == {}, f"not exported by perseus/metrics.py: {unknown}"
