"""What a connector child gets and what comes back from it: an allow-listed environment (no worker
credentials), output files only the worker's user can read, and a failure message (``lastError``)
without control characters or secrets, bounded in length."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from perseus.connectors.factory import ConnectorContext, build_connector
from perseus.connectors.process import FAILURE_TAIL_CHARS, ProcessConnector
from perseus.errors import ConnectorNotReady
from perseus.models import Claim, ConnectorSpec

pytestmark = pytest.mark.integration

# Prints its environment as one JSON line, then a line full of ANSI colour, a bell and secrets.
_CHILD = (
    "import json, os, sys; print(json.dumps(dict(os.environ)), flush=True); "
    "print('\\x1b[31mFATAL\\x1b[0m\\x07 auth failed password=hunter2 '"
    " + 'token: ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4 '"
    " + 'x' * 900, flush=True); sys.exit(4)"
)


def make(tmp_path: Path, **spec: object) -> ProcessConnector:
    full = ConnectorSpec.model_validate(
        {"kind": "process", "command": [sys.executable, "-c", _CHILD], **spec}
    )
    context = ConnectorContext(
        workflow_id="instance-tx_hygiene-h1",
        exchange_id=42,
        exchange_name="tx_hygiene",
        claim=Claim(instance_id="inst-1", epoch=7),
        log_dir=tmp_path / "connectors",
    )
    connector = build_connector("tx_hygiene", full, context)
    assert isinstance(connector, ProcessConnector)
    return connector


async def test_child_environment_is_allow_listed_and_output_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_API_KEY", "temporal-secret")
    monkeypatch.setenv("PERSEUS_DATABASE_URL", "postgresql://u:db-secret@db/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    connector = make(tmp_path, ready_line="FATAL", env={"VENUE_REGION": "eu"})
    await connector.prepare(["BTC-USD"])
    await connector.warm_up()
    await connector.disconnect("stop requested")
    assert connector.output_path is not None
    lines = connector.output_path.read_text().splitlines()
    env = json.loads(next(line for line in lines if line.startswith("{")))
    assert "TEMPORAL_API_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert "PERSEUS_DATABASE_URL" not in env
    assert env["LC_TIME"] == "C" and env["PYTHONDONTWRITEBYTECODE"] == "1" and env["VENUE_REGION"] == "eu"
    assert env["PERSEUS_EXCHANGE"] == "tx_hygiene" and env["PERSEUS_EPOCH"] == "7"
    assert "PATH" in env
    assert stat.S_IMODE(connector.output_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(connector.output_path.parent.stat().st_mode) == 0o700


async def test_last_error_is_clean_masked_and_bounded(tmp_path: Path) -> None:
    connector = make(tmp_path, ready_line="NEVER", ready_timeout_s=20)
    await connector.prepare([])
    with pytest.raises(ConnectorNotReady) as info:
        await connector.warm_up()
    message = str(info.value)
    assert "exited with code 4 before it was ready" in message
    tail = message.split("; last output: ", 1)[1]
    assert len(tail) <= FAILURE_TAIL_CHARS
    for bad in ("\x1b", "\x07", "hunter2", "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4"):
        assert bad not in message
