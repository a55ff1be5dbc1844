"""The ``perseus`` command line: ``app`` joins self-contained sub-apps (instances, views, fleet, ops,
connector output) that share ``common``; none of them imports ``app``.

A leaf: may import any package of ``perseus`` (it drives them all); nothing imports it.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """The ``perseus`` command: loads the app, then runs it (:func:`perseus.cli.app.main`).

    Loading takes a moment (the Temporal SDK, pydantic, rich); a Ctrl-C that lands in it ends the
    command as one in the app does — "aborted", exit status 130 — instead of an import traceback.
    """
    try:
        from perseus.cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("aborted\n")
        sys.stderr.flush()
        os._exit(130)
    run()
