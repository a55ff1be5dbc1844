"""Logging for the long-running commands (``perseus worker``, ``api``, ``dev``): one handler on the
root logger, plain text or JSON lines, at ``PERSEUS_LOG_LEVEL``.

Contracts:

* A record carries its message and, for an unexpected failure, its traceback — nothing else. The
  formatters never add a record's extra attributes, so an object passed as ``extra=`` (settings,
  a URL with a password) cannot end up in a line by accident.
* Two warnings of the Temporal SDK are benign for Perseus and are shown at DEBUG, not as alarms:
  "Activity not found on completion" (core: the lease activity finished while the server had already
  timed it out or cancelled it) and "Cannot find activity to cancel" (Python: a TRY_CANCEL
  cancellation raced the activity's own completion).
* The PostgreSQL pool's "error connecting in 'pool-N'" warning (one per reconnection attempt, two
  lines each) is shown at DEBUG too: Perseus says once what waits for the database (the worker's
  start, its enrolment) and each step that fails fails with the reason, so the outage is not lost.
* The Temporal core's own log lines are forwarded into Python logging (:func:`install_temporal_runtime`)
  so they get the same level, format and filter instead of core's own stderr format.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from temporalio import workflow

#: Substrings of library warnings that describe an expected race, or repeat per retry an outage
#: Perseus reports once itself — not a fault of their own.
BENIGN_WARNINGS = (
    "Activity not found on completion",
    "Cannot find activity to cancel",
    "error connecting in 'pool-",
    "reconnection attempt in pool '",
)

#: Libraries that log every request at INFO: useful only when debugging.
CHATTY = ("httpx", "httpcore", "uvicorn.access")

PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

#: The logger the Temporal core's lines are forwarded to.
CORE_LOGGER = "temporalio.core"


class DemoteBenign(logging.Filter):
    """Re-level the SDK's benign warnings to DEBUG, and drop them unless DEBUG is shown.

    It sits on the handler, after the logger's own level check, so it must apply the threshold itself.
    """

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and any(m in record.getMessage() for m in BENIGN_WARNINGS):
            record.levelno = logging.DEBUG
            record.levelname = "DEBUG"
            return self.threshold <= logging.DEBUG
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, and exc for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """``time level logger: message``, the time in UTC (ISO 8601)."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


_HANDLER_NAME = "perseus"


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as ``fmt`` (plain|json).

    Idempotent: a second call replaces the handler the first one installed.
    """
    threshold = logging.getLevelName(level.upper())
    if not isinstance(threshold, int):
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("plain", "json"):
        raise ValueError(f"unknown log format {fmt!r}: plain or json")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    handler.addFilter(DemoteBenign(threshold))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(threshold)
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(threshold, logging.WARNING))
    # Python warnings (the SDK's "Cannot find activity to cancel") become records, so the filter
    # and format apply to them as well.
    logging.captureWarnings(True)
    # A workflow's decision lines name their workflow already; the dict of run details the SDK
    # appends to each (attempt, namespace, run id, task queue, type) tripled their width.
    workflow.logger.workflow_info_on_message = False


def install_temporal_runtime(metrics_address: str | None = None) -> None:
    """Make the default Temporal runtime forward core log lines (WARN and up) to Python logging, and
    serve the SDK's own metrics on ``metrics_address`` (host:port) when given.

    Call once, before the first client connects: the default runtime is created on first use.
    """
    from temporalio.runtime import (
        LogForwardingConfig,
        LoggingConfig,
        PrometheusConfig,
        Runtime,
        TelemetryConfig,
        TelemetryFilter,
    )

    runtime = Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                forwarding=LogForwardingConfig(logger=logging.getLogger(CORE_LOGGER)),
            ),
            metrics=None
            if metrics_address is None
            else PrometheusConfig(
                bind_address=metrics_address, counters_total_suffix=True, durations_as_seconds=True
            ),
        )
    )
    Runtime.set_default(runtime, error_if_already_set=False)
