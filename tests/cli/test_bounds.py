"""Every input is bounded and every setting checked, each refused in one line (the probe's
commands: ``fleet diff /dev/zero`` grew to 18 GB, a deep TOML array and a non-UTF-8 file gave
tracebacks, ``PERSEUS_API_PORT=99999`` printed 150 lines, a taken port exited 3)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from perseus.fleet.file import MAX_FLEET_BYTES, MAX_FLEET_DEPTH
from tests.conftest import NO_IP_LOOKUP, PERSEUS, ROOT

pytestmark = pytest.mark.unit


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PERSEUS_", "TEMPORAL_"))}
    # Nothing listens there: each refusal must come before any server is needed.
    base.update(
        PERSEUS_IP_SERVICES=NO_IP_LOOKUP, PERSEUS_DATABASE_URL="postgresql://perseus@127.0.0.1:1/none"
    )
    return subprocess.run(
        [PERSEUS, *args], capture_output=True, text=True, timeout=60, env={**base, **env}, cwd=ROOT
    )


def refused(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, f"limit of {MAX_FLEET_BYTES:,} bytes"),  # /dev/zero: endless
        (b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", f"limit of {MAX_FLEET_DEPTH} levels"),
        (b"x = " + b"[" * 40 + b"]" * 40 + b"\n", f"limit of {MAX_FLEET_DEPTH} levels"),
        (b'admin_email = "\xff\xfe"\n', "not UTF-8"),
    ],
    ids=["endless", "deep", "deeper-than-the-limit", "not-utf8"],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_a_fleet_file_past_a_limit_is_refused_in_one_line(
    tmp_path: Path, content: bytes | None, needle: str, as_json: bool
) -> None:
    path = Path("/dev/zero")
    if content is not None:
        path = tmp_path / "fleet.toml"
        path.write_bytes(content)
    result = run("fleet", "diff", str(path), *(["--json"] if as_json else []))
    refused(result, 1, needle)
    if as_json:
        body = json.loads(result.stdout)
        assert body["exitCode"] == 1 and needle in body["error"], body


def test_settings_and_options_out_of_range_and_taken_ports_are_usage_errors() -> None:
    refused(run("api", PERSEUS_API_PORT="99999"), 2, "PERSEUS_API_PORT", "65535")
    refused(run("api", "--port", "0"), 2, "--port", "perseus api --help")
    refused(run("fleet", "diff"), 2, "Missing argument", "perseus fleet diff --help")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused(run("api", "--port", str(port)), 2, f"port {port}", "already in use")
