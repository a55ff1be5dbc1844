"""The module map of ``docs/design.md``, generated from the tree: one entry per package and module,
described by the first sentence of its own docstring.

``python docs/module_map.py`` prints it; ``python docs/module_map.py --write`` puts it into
``docs/design.md`` between the map's fences. ``tests/unit/test_design_map.py`` fails when the map
in the document is not what the tree says, so the map stays true.
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
WIDTH = 110
COLUMN = 37
#: Entries that are not Python modules, or whose docstring says little in one sentence.
FIXED = {
    "schema.sql": "the only DDL (idempotent; seeds the exchange catalog); perseus/schema.sql links to it",
    "perseus/demo_data.sql": "the demo catalog rows `perseus dev` and the harness apply (package data)",
    "perseus/api/static/": "the network page's HTML, CSS and JavaScript",
    "workflows/": "the workflow definitions: the instance workflow and its activity stubs",
    "activities/": "the I/O edge, one class per concern, drivers injected in __init__",
    "perseus/": "the shared package; imports nothing from workflows/, activities/ or worker.py",
    "tests/unit/": "pure code and the golden histories replayed, no servers (`make check`)",
    "tests/cli/": "the CLI's output and conventions",
    "tests/integration/": "real Temporal, Redis, PostgreSQL started by tests/conftest.py; helpers.py",
    "tests/connectors/": "the process connector with real child processes (child.py stands in)",
    "tests/browser/": "the network page in headless Chromium against a live stack",
    "tests/chaos/": "fault injection against a private stack; invariants.py checks split brain and liveness",
    "tests/histories/": "golden workflow histories replayed in tests",
    "bench/": "benchmarks (not tests); figures in docs/benchmarks.md",
}
_SENTENCE = re.compile(r"(.+?\.)(\s|$)", re.S)


def summary(path: Path) -> str:
    """The first sentence of a module's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    match = _SENTENCE.match(first)
    return (match.group(1) if match else first).rstrip(".:")


def entries() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = [("schema.sql", FIXED["schema.sql"])]
    modules = [ROOT / "worker.py"]
    for top in ("workflows", "activities", "perseus"):
        modules += sorted((ROOT / top).rglob("*.py"))
    for path in modules:
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py":
            if not ast.get_docstring(ast.parse(path.read_text())):
                continue
            rel = rel.removesuffix("__init__.py")
        if rel not in FIXED:
            found.append((rel, summary(path)))
    found += [(k, v) for k, v in FIXED.items() if k != "schema.sql"]
    return sorted(found, key=lambda e: _order(e[0]))


def _order(path: str) -> tuple[int, str]:
    tops = ["schema.sql", "worker.py", "workflows/", "activities/", "perseus/", "tests/", "bench/"]
    rank = next(i for i, top in enumerate(tops) if path.startswith(top))
    return rank, path


def module_map() -> str:
    lines = []
    for path, text in entries():
        indent = " " * COLUMN
        wrapped = textwrap.wrap(text, WIDTH - COLUMN) or [""]
        lines.append(f"{path:<{COLUMN - 1}} {wrapped[0]}".rstrip())
        lines += [indent + rest for rest in wrapped[1:]]
    return "\n".join(lines) + "\n"


def _block(doc: str) -> tuple[int, int]:
    """Where the map's fenced block is in ``doc`` (start and end of its content)."""
    start = doc.index("```\n", doc.index("## Module map")) + 4
    return start, doc.index("```\n", start)


def in_design() -> str:
    doc = DESIGN.read_text()
    start, end = _block(doc)
    return doc[start:end]


def write() -> None:
    doc = DESIGN.read_text()
    start, end = _block(doc)
    DESIGN.write_text(doc[:start] + module_map() + doc[end:])


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write()
    else:
        sys.stdout.write(module_map())
