"""The build step that stamps a wheel with the commit it was built from (``perseus/BUILD``, read by
``perseus.version.build``). Everything else about the package is in pyproject.toml.

The commit comes from ``PERSEUS_BUILD`` when set (a build from an exported tree, which has no git),
else from git when the source is a checkout; without either the wheel carries no stamp and reports
its build as "unknown".
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def commit() -> str | None:
    given = os.environ.get("PERSEUS_BUILD", "").strip()
    if given:
        return given
    try:
        top = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        if Path(top).resolve() != HERE:
            return None  # an exported tree inside some other repository
        return (
            subprocess.run(
                ["git", "-C", str(HERE), "describe", "--always", "--dirty", "--abbrev=12", "--exclude=*"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


class StampedBuild(build_py):
    def run(self) -> None:
        super().run()
        stamp = commit()
        if stamp and not self.editable_mode:
            # In the built package only: the checkout keeps no BUILD file (it asks git instead).
            target = Path(self.build_lib, "perseus", "BUILD")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(stamp + "\n")


setup(cmdclass={"build_py": StampedBuild})
