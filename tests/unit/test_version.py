"""The version and build a Perseus reports (perseus.version), and how releases compare."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from perseus import version as release
from perseus.host.workers import WorkerRecord

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_build() -> Iterator[None]:
    release.build.cache_clear()
    yield
    release.build.cache_clear()


def test_releases_order_as_pip_orders_them() -> None:
    ordered = ["0.1.0rc1", "0.1.0", "0.1.1", "0.2.0a1", "0.2.0b2", "0.2.0rc1", "0.2.0", "0.10.0", "1.0.0"]
    keys = [release.release_key(v) for v in ordered]
    assert None not in keys and keys == sorted(keys)  # type: ignore[type-var]
    for other in ("unknown", "", None, "0.1", "0.1.0.dev3", "0.1.0+local", "v0.1.0"):
        assert release.release_key(other) is None, other


def test_only_a_known_release_is_called_older() -> None:
    assert release.is_older("0.1.0", "0.2.0")
    assert not release.is_older("0.2.0", "0.2.0") and not release.is_older("0.2.0", "0.1.9")
    # Nothing proves an unknown version old, nor makes a known one old.
    assert not release.is_older("unknown", "0.2.0") and not release.is_older("0.1.0", "unknown")
    assert not release.is_older(None, "0.2.0")
    assert release.newest(["0.1.0", "unknown", None, "0.10.0", "0.9.0"]) == "0.10.0"
    assert release.newest(["unknown", None]) is None


def test_the_stamp_in_a_wheel_wins_over_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_build: None
) -> None:
    stamp = tmp_path / "BUILD"
    stamp.write_text("0123456789ab\n")
    monkeypatch.setattr(release, "BUILD_FILE", stamp)
    assert release.build() == "0123456789ab"
    assert release.describe() == f"{release.version()} (build 0123456789ab)"


def test_a_checkout_names_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_build: None
) -> None:
    monkeypatch.setattr(release, "BUILD_FILE", tmp_path / "absent")
    assert re.fullmatch(r"[0-9a-f]{12}(-dirty)?", release.build()), release.build()


def test_no_build_is_unknown_never_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Not the top of a work tree (a venv inside some repository): that repository's commit is not ours.
    assert release._git_build(ROOT / "perseus") is None
    assert release._git_build(tmp_path) is None  # no repository at all
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no git on the machine
    assert release._git_build(ROOT) is None


def test_records_of_workers_older_than_the_fields_still_read() -> None:
    old = WorkerRecord.model_validate_json(
        '{"host": "a", "workerId": "1@m", "machine": "m", "pid": 1, "startedAt": "2026-01-01T00:00:00.000Z",'
        ' "seenAt": "2026-01-01T00:00:00.000Z", "capacity": 10, "sharedQueue": false}'
    )
    assert (old.version, old.build) == ("unknown", "unknown")


def test_standby_records_and_statuses_of_an_earlier_release_still_read() -> None:
    from perseus.models import InstanceStatus, StandbyRecord

    standby = StandbyRecord.model_validate_json(
        '{"exchangeId": 1, "exchangeName": "kraken", "host": "a", "hostname": "a", "instanceId": "i",'
        ' "workflowId": "w", "registeredAt": "t", "lastHeartbeat": "t", "ttlMs": 3000,'
        ' "heartbeatIntervalMs": 1000}'
    )
    assert standby.version is None
    status = InstanceStatus.model_validate_json(
        '{"exchangeId": 1, "exchangeName": "kraken", "hostname": "a", "connectionState": "active",'
        ' "lastHeartbeat": "t", "lastStateChange": "t", "registeredAt": "t"}'
    )
    assert status.perseus_version is None
