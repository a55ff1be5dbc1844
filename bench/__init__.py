"""Benchmarks (not tests): ``make bench`` runs them against servers they start themselves."""

from __future__ import annotations

import argparse


def temporal_setting(text: str) -> tuple[str, str]:
    """``--temporal-config KEY=VALUE``: one dynamic-config setting of the bench's dev server, in the
    server's JSON (``history.transferProcessorMaxPollRPS=20``, ``history.timerProcessorMaxTimeShift="1s"``),
    instead of the one Perseus starts it with: the baseline of a comparison in the same session."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_temporal_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--temporal-config",
        type=temporal_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dynamic-config setting of the dev server instead of Perseus' own (repeatable)",
    )
