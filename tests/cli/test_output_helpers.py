"""The pure helpers behind the CLI's output: one-line errors, numbers in JSON, filter literals."""

from __future__ import annotations

import pytest

from perseus.cli.common import _numbers, error_line
from perseus.core.lifecycle import Role
from perseus.errors import NotRegistered, Server, ServiceUnavailable
from perseus.temporal import _connect_failure, filter_literal, instances_filter

pytestmark = pytest.mark.unit

TONIC = (
    "Failed client connect: Server connection error: tonic::transport::Error(Transport, ConnectError("
    'ConnectError("tcp connect error", 127.0.0.1:1, Os { code: 111, kind: ConnectionRefused, '
    'message: "Connection refused" })))'
)


def test_a_refused_temporal_connection_is_a_short_reason() -> None:
    assert _connect_failure(TONIC) == "connection refused"
    dump = "Failed client connect: Server connection error: tonic::transport::Error(Transport, x)"
    assert _connect_failure(dump) == "server connection error"
    assert _connect_failure("") == "no answer"


def test_error_lines_are_one_line_and_say_how_to_reach_a_server() -> None:
    assert error_line(NotRegistered("a\n  b")) == "a b"
    line = error_line(
        ServiceUnavailable("PostgreSQL unreachable: connection refused.", server=Server.POSTGRESQL)
    )
    assert line == (
        "PostgreSQL unreachable: connection refused; start the stack with `perseus dev`, "
        "or set PERSEUS_DATABASE_URL to reach your PostgreSQL"
    )
    assert error_line(ServiceUnavailable("no worker answered")) == "no worker answered"
    # The hint comes from the server the error names, never from how its text begins.
    assert error_line(ServiceUnavailable("Redis-like text", server=None)) == "Redis-like text"


def test_known_numeric_fields_become_numbers_at_any_depth() -> None:
    page = {"entries": [{"epoch": "3", "exchangeId": "12", "hostname": "7", "detail": "1"}], "n": "5"}
    assert _numbers(page) == {
        "entries": [{"epoch": 3, "exchangeId": 12, "hostname": "7", "detail": "1"}],
        "n": "5",
    }
    assert _numbers([{"standbys": [{"priority": "-2", "heartbeatAgeS": "0.5", "ttlMs": ""}]}]) == [
        {"standbys": [{"priority": -2, "heartbeatAgeS": 0.5, "ttlMs": ""}]}
    ]
    assert _numbers({"epoch": "inf", "ttlMs": "1_000"}) == {"epoch": "inf", "ttlMs": "1_000"}


def test_filter_literals_quote_data() -> None:
    assert filter_literal("coinbase") == "'coinbase'"
    assert filter_literal("o'neil") == "'o''neil'"
    assert filter_literal("a\\' OR 1=1") == "'a\\\\'' OR 1=1'"
    assert instances_filter("Kraken", role=Role.ACTIVE) == (
        "ExchangeName = 'kraken' AND InstanceRole = 'active' AND ExecutionStatus = 'Running'"
    )
