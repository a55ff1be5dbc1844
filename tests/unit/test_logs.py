"""perseus.logs: the level and format apply, benign SDK warnings are not alarms, nothing extra leaks."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
from temporalio import workflow

from perseus.config import load_settings
from perseus.errors import ConfigError
from perseus.logs import CORE_LOGGER, configure_logging

pytestmark = pytest.mark.unit


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Where configure_logging writes; the root logger is put back as it was afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    out = io.StringIO()
    yield out
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging.captureWarnings(False)
    workflow.logger.workflow_info_on_message = True


def test_workflow_decision_lines_carry_no_run_details_dict(stream: io.StringIO) -> None:
    configure_logging("INFO", "plain", stream)
    assert workflow.logger.workflow_info_on_message is False


def test_plain_lines_at_the_level(stream: io.StringIO) -> None:
    configure_logging("INFO", "plain", stream)
    log = logging.getLogger("perseus.test")
    log.debug("not shown")
    log.info("claim released for %s", "kraken")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(" INFO    perseus.test: claim released for kraken")


def test_json_lines_carry_only_their_fields(stream: io.StringIO) -> None:
    configure_logging("debug", "json", stream)
    log = logging.getLogger("perseus.test")
    settings = load_settings(database_url="postgresql://perseus:hunter2@127.0.0.1/perseus")
    log.debug("connected", extra={"settings": settings})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("unexpected")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert set(first) == {"ts", "level", "logger", "msg"} and first["msg"] == "connected"
    assert first["level"] == "DEBUG" and first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["exc"]
    assert "hunter2" not in stream.getvalue()


def test_benign_sdk_warnings_are_debug_not_alarms(stream: io.StringIO) -> None:
    configure_logging("INFO", "plain", stream)
    core = logging.getLogger(CORE_LOGGER + "-sdk_core::temporal_sdk_core::worker::activities")
    core.warning("[sdk_core::worker] Activity not found on completion {'task_token': '0a1b'}")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)
        warnings.warn("Cannot find activity to cancel for token b'0a1b'", UserWarning, stacklevel=1)
    core.warning("a real problem")
    assert stream.getvalue().count("\n") == 1 and "a real problem" in stream.getvalue()

    configure_logging("DEBUG", "plain", stream)
    core.warning("[sdk_core::worker] Activity not found on completion {'task_token': '0a1b'}")
    assert " DEBUG   " in stream.getvalue().splitlines()[-1]


def test_log_settings_are_validated_once() -> None:
    assert load_settings(log_level="warning", log_format="json").log_level == "WARNING"
    with pytest.raises(ConfigError, match="PERSEUS_LOG_LEVEL"):
        load_settings(log_level="verbose")
    with pytest.raises(ConfigError, match="PERSEUS_LOG_FORMAT"):
        load_settings(log_format="xml")
