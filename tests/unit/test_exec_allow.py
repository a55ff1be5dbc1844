"""The exec allow-list (PERSEUS_EXEC_ALLOW): parsing, matching and refusals; pure, no servers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from perseus.config import Settings
from perseus.connectors.allow import load_allow_list, parse_allow_list
from perseus.errors import ConfigError
from perseus.models import ConnectorSpec

RULES = """
# market-data collectors
/opt/livermore/bin/collector *
/usr/bin/python3 -u /opt/feeds/kraken.py --exchange kraken   # exactly this one
'/opt/with space/feed' --quiet *
"""


def spec(*command: str, **fields: object) -> ConnectorSpec:
    return ConnectorSpec.model_validate({"kind": "process", "command": list(command), **fields})


@pytest.fixture
def allowed():
    return parse_allow_list(RULES, "/etc/perseus/exec.allow")


@pytest.mark.parametrize(
    "command",
    [
        ("/opt/livermore/bin/collector",),
        ("/opt/livermore/bin/collector", "--exchange", "coinbase"),
        ("/usr/bin/python3", "-u", "/opt/feeds/kraken.py", "--exchange", "kraken"),
        ("/opt/with space/feed", "--quiet", "--more"),
    ],
)
def test_a_permitted_command_runs(allowed, command: tuple[str, ...]) -> None:
    assert allowed.refusal(spec(*command), "host-a") is None


@pytest.mark.parametrize(
    "command",
    [
        ("/opt/livermore/bin/collector-evil",),  # a prefix is whole words, not characters
        ("/usr/bin/python3", "-u", "/opt/feeds/kraken.py", "--exchange", "kraken", "--evil"),  # exact
        ("/usr/bin/python3", "-c", "import os"),
        ("/opt/with space/feed",),  # the prefix's words must all be there
        ("/bin/sh", "-c", "/opt/livermore/bin/collector; rm -rf /"),
    ],
)
def test_anything_else_is_refused_naming_the_host_and_the_list(allowed, command: tuple[str, ...]) -> None:
    why = allowed.refusal(spec(*command), "host-a")
    assert why is not None and "\n" not in why
    assert why.startswith("host host-a refuses to run ") and "(/etc/perseus/exec.allow)" in why


@pytest.mark.parametrize("name", ["PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "DYLD_INSERT_LIBRARIES"])
def test_an_environment_that_chooses_the_code_is_refused_whatever_the_rules(allowed, name: str) -> None:
    why = allowed.refusal(spec("/opt/livermore/bin/collector", env={name: "/tmp/x"}), "host-a")
    assert why is not None and f"sets {name}" in why
    assert allowed.refusal(spec("/opt/livermore/bin/collector", env={"FEED": "x"}), "host-a") is None


def test_a_relative_program_path_is_refused() -> None:
    allowed = parse_allow_list("./run *\n", "exec.allow")
    why = allowed.refusal(spec("./run"), "h")
    assert why is not None and "relative program path" in why


def test_the_simulated_connector_runs_no_command() -> None:
    nothing = parse_allow_list("", "exec.allow")
    assert nothing.refusal(ConnectorSpec(), "h") is None
    assert nothing.refusal(spec("/bin/true"), "h") is not None  # an empty list permits no command


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("/bin/x 'unclosed\n", "exec.allow:1: No closing quotation"),
        ("\n*\n", "exec.allow:2: a rule needs"),
        ("/bin/x * --y\n", "exec.allow:1: '\\*' may only end"),
    ],
)
def test_a_bad_line_is_one_line_naming_it(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_allow_list(text, "exec.allow")


def test_the_worker_reads_the_file_once_at_start_and_warns_when_unset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from worker import announce_exec_allow, exec_allow_list

    with caplog.at_level(logging.WARNING):
        unset = exec_allow_list(Settings(exec_allow=None))
        assert unset is None
        assert not caplog.text  # said only once the stores answer (a failed start stays one line)
        announce_exec_allow(unset, "host-a")
    assert "PERSEUS_EXEC_ALLOW is unset: host host-a runs any connector command" in caplog.text
    path = tmp_path / "exec.allow"
    path.write_text("/opt/livermore/bin/collector *\n")
    allowed = exec_allow_list(Settings(exec_allow=path))
    assert allowed is not None and len(allowed.rules) == 1
    with pytest.raises(ConfigError, match="PERSEUS_EXEC_ALLOW: cannot read"):
        load_allow_list(tmp_path / "missing")
