"""deploy/: the systemd units and the container build file say what they should, and every command
they run exists — checked by running it with ``--help`` (an unknown subcommand or option fails
there), and by ``systemd-analyze verify`` where this machine has it (with the install path pointed at
this checkout's venv, since /opt/perseus is where the units expect an installation)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PERSEUS, ROOT

pytestmark = pytest.mark.integration

DEPLOY = ROOT / "deploy"
INSTALLED = "/opt/perseus/.venv/bin/perseus"
#: Each unit file, and an instance name for the templates.
UNITS = {
    "perseus-worker@.service": "perseus-worker@host-a.service",
    "perseus-shared-worker@.service": "perseus-shared-worker@1.service",
    "perseus-api.service": "perseus-api.service",
}


def sections(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section → key → values (systemd allows a key more than once)."""
    parsed: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = parsed.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}: not a unit line: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return parsed


def runs_with_help(argv: list[str]) -> None:
    """``argv`` (the installed perseus) is a valid command line of this checkout's perseus."""
    assert argv[0] in (INSTALLED, "perseus"), argv
    done = subprocess.run(
        [PERSEUS, *argv[1:], "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr[-1500:]}"


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_is_hardened_stops_with_sigterm_restarts_and_is_watched(unit: str) -> None:
    service = sections(DEPLOY / "systemd" / unit)["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["WatchdogSec"].endswith("s") and int(one["WatchdogSec"][:-1]) >= 10
    assert one["KillSignal"] == "SIGTERM" and one["Restart"] == "always"
    if "worker" in unit:
        # Only the worker gets SIGTERM: it stops its connectors after releasing their claims.
        assert one["KillMode"] == "mixed"
        assert int(one["TimeoutStopSec"].rstrip("s")) > 30  # the graceful release's 30 s, and more
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "User": "perseus",
    }.items():
        assert one[key] == value, (unit, key)
    (start,) = service["ExecStart"]
    runs_with_help(shlex.split(start.replace("%i", "x")))


def test_systemd_accepts_every_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # no systemd here: a parse is what can be checked
        for name in UNITS:
            parsed = sections(DEPLOY / "systemd" / name)
            assert {"Unit", "Service", "Install"} <= set(parsed) and parsed["Service"]["ExecStart"], name
        return
    for name, instance in UNITS.items():
        text = (DEPLOY / "systemd" / name).read_text().replace(INSTALLED, PERSEUS)
        (tmp_path / name).write_text(text)
        done = subprocess.run(
            [analyze, "verify", str(tmp_path / instance)], capture_output=True, text=True, timeout=60
        )
        # Warnings (an unknown key, a key in the wrong section) exit 0: they fail here too.
        assert done.returncode == 0 and not done.stderr.strip(), f"{name}: {done.stderr}"


def test_the_container_file_copies_what_exists_and_runs_a_real_command() -> None:
    lines = [
        line.strip()
        for line in (DEPLOY / "Containerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    copied = [src for op, args in instructions if op == "COPY" for src in shlex.split(args)[:-1]]
    assert copied, "nothing copied into the image"
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    # Everything the package build needs is in the image: each package and module pyproject lists.
    # setup.py stamps the build (the PERSEUS_BUILD build argument) into the installed package.
    assert {"perseus", "workflows", "activities", "worker.py", "requirements.lock", "setup.py"} <= set(copied)
    values = {op: args for op, args in instructions}
    assert values["USER"] not in ("root", "0")
    assert values["STOPSIGNAL"] == "SIGTERM"
    entrypoint, command = json.loads(values["ENTRYPOINT"]), json.loads(values["CMD"])
    runs_with_help([*entrypoint, *command])
    runs_with_help([*entrypoint, "api"])
