"""The exec allow-list: which connector commands this host runs (``PERSEUS_EXEC_ALLOW``).

A process connector's command arrives in its workflow's input, so anyone who can start or signal
workflows in the namespace could otherwise make a host run anything. With an allow-list, a host
runs only the commands its own file permits; the file lives on the host, out of Temporal's reach.

The file holds one rule per line, written as in a shell (``shlex``: quotes group words), with
blank lines and ``#`` comments ignored:

* ``/opt/livermore/bin/collector --exchange coinbase`` — exactly this command (every argument);
* ``/opt/livermore/bin/collector *`` — this program with any arguments (a prefix: the words before
  ``*``, then anything). Words, not characters: ``/opt/bin/collector *`` does not admit
  ``/opt/bin/collector-evil``.

Whatever the rules say, a command is refused when its environment sets a variable that chooses
which code runs (``PATH``, ``LD_*``, ``DYLD_*``) or when its program is a relative path with a
directory (``./run``, resolved against a working directory the workflow chooses): either would run
something other than what the rule names.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from perseus.errors import ConfigError
from perseus.models import ConnectorSpec

#: Environment variables a command may not set under an allow-list: they decide which code runs.
_LOADER_PREFIXES = ("LD_", "DYLD_")
_LOADER_NAMES = frozenset({"PATH"})


@dataclass(frozen=True)
class Rule:
    words: tuple[str, ...]
    prefix: bool
    line: int

    def permits(self, argv: list[str]) -> bool:
        if self.prefix:
            return tuple(argv[: len(self.words)]) == self.words
        return tuple(argv) == self.words

    def __str__(self) -> str:
        return shlex.join(self.words) + (" *" if self.prefix else "")


@dataclass(frozen=True)
class ExecAllowList:
    source: str
    rules: tuple[Rule, ...]

    def refusal(self, spec: ConnectorSpec, host: str) -> str | None:
        """Why ``host`` refuses to run ``spec``'s command (one line naming the host and the rule),
        or None when the list permits it. Only process connectors run commands."""
        if spec.kind != "process":
            return None
        argv = list(spec.command)
        shown = shlex.join(argv) if argv else "(no command)"
        loader = sorted(k for k in spec.env if k in _LOADER_NAMES or k.startswith(_LOADER_PREFIXES))
        if loader:
            return (
                f"host {host} refuses to run {shown}: its environment sets {', '.join(loader)}, "
                f"which the exec allow-list ({self.source}) never permits"
            )
        if argv and "/" in argv[0] and not argv[0].startswith("/"):
            return (
                f"host {host} refuses to run {shown}: a relative program path depends on the working "
                f"directory; the exec allow-list ({self.source}) needs an absolute path or a name on the PATH"
            )
        for rule in self.rules:
            if rule.permits(argv):
                return None
        return (
            f"host {host} refuses to run {shown}: no rule of its exec allow-list ({self.source}) permits it"
        )


def parse_allow_list(text: str, source: str) -> ExecAllowList:
    """The rules of an allow-list file's ``text``; ConfigError (one line, with the line number) for
    a line that does not parse."""
    rules: list[Rule] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise ConfigError(f"{source}:{number}: {exc}") from None
        prefix = bool(words) and words[-1] == "*"
        if prefix:
            words = words[:-1]
        if not words:
            raise ConfigError(f"{source}:{number}: a rule needs a program before '*'")
        if "*" in words:
            raise ConfigError(f"{source}:{number}: '*' may only end a rule (the rest of the arguments)")
        rules.append(Rule(words=tuple(words), prefix=prefix, line=number))
    return ExecAllowList(source=source, rules=tuple(rules))


def load_allow_list(path: Path) -> ExecAllowList:
    """Read ``path`` once (at worker start); ConfigError in one line if it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"PERSEUS_EXEC_ALLOW: cannot read {path}: {exc}") from None
    return parse_allow_list(text, str(path))
