"""What this Perseus is: its release and the build it came from (docs/releases.md).

* The **version** has one source, ``[project] version`` in ``pyproject.toml``; an installed Perseus
  (a wheel, or the editable install of a checkout) reads it back from its package metadata.
* The **build** is the git commit the code came from: written into a wheel as ``perseus/BUILD`` by
  the build step in ``setup.py``, read from git when running from a checkout, ``"unknown"``
  otherwise (a wheel built from an exported tree, no git on the machine). Finding it never fails.

Versions are compared only to tell a host that lags the rest of a fleet (``perseus fleet status``,
the standby ranking): :func:`release_key` orders PEP 440 releases of the form the scheme allows
(``0.1.0``, ``0.2.0rc1``) and gives None for anything else (``unknown``, a local build).
"""

from __future__ import annotations

import functools
import re
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _metadata_version
from pathlib import Path

UNKNOWN = "unknown"
#: Written into a wheel by setup.py's build step: the commit it was built from.
BUILD_FILE = Path(__file__).with_name("BUILD")
#: A checkout's git answers within this; a slower one is as good as none (the CLI must not hang).
GIT_TIMEOUT_S = 2.0

_RELEASE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:(a|b|rc)(\d+))?$")
#: Pre-releases sort before their release: a < b < rc < final.
_PRE_ORDER = {"a": 0, "b": 1, "rc": 2, None: 3}


@functools.cache
def version() -> str:
    """The installed release (pyproject's version), or ``"unknown"`` in a tree never installed."""
    try:
        return _metadata_version("perseus")
    except PackageNotFoundError:
        return UNKNOWN


@functools.cache
def build() -> str:
    """The commit this code was built from (12 hex digits, ``-dirty`` for uncommitted changes in a
    checkout), or ``"unknown"``."""
    try:
        written = BUILD_FILE.read_text().strip()
    except OSError:
        written = ""
    if written:
        return written
    return _git_build(Path(__file__).resolve().parent.parent) or UNKNOWN


def describe() -> str:
    """``0.1.0 (build 97941f7abcde)``: what ``perseus --version`` and a worker's start line say."""
    return f"{version()} (build {build()})"


def _git_build(checkout: Path) -> str | None:
    """The checkout's commit — only when ``checkout`` is the top of a git work tree: a wheel
    installed into a venv that happens to live inside some other repository must not report that
    repository's commit."""
    # Imported here, not above: the comparisons below are pure and the decisions (which workflows
    # import) use them; only asking for the build runs a process.
    import subprocess

    try:
        top = _git(checkout, "rev-parse", "--show-toplevel")
        if top is None or Path(top).resolve() != checkout:
            return None
        return _git(checkout, "describe", "--always", "--dirty", "--abbrev=12", "--exclude=*")
    except (OSError, subprocess.SubprocessError):  # no git, or it did not answer in time
        return None


def _git(cwd: Path, *args: str) -> str | None:
    import subprocess

    done = subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def release_key(text: str | None) -> tuple[int, int, int, int, int] | None:
    """A sort key for a release of the scheme (``1.2.3``, ``1.2.3rc1``); None for anything else."""
    match = _RELEASE.match(text or "")
    if match is None:
        return None
    major, minor, patch, pre, number = match.groups()
    return (int(major), int(minor), int(patch), _PRE_ORDER[pre], int(number or 0))


def newest(versions: list[str | None]) -> str | None:
    """The newest release among ``versions`` (unknown ones ignored), or None."""
    known = [(key, v) for v in versions if v is not None and (key := release_key(v)) is not None]
    return max(known)[1] if known else None


def is_older(candidate: str | None, than: str | None) -> bool:
    """Whether ``candidate`` is a release older than ``than``. An unknown version is never called
    older (nothing proves it): it is shown as it is."""
    a, b = release_key(candidate), release_key(than)
    return a is not None and b is not None and a < b
