"""``perseus output``: the last lines a process connector's child wrote; and the ``--exec`` options
of ``perseus register`` turned into a :class:`ConnectorSpec`."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from pydantic import ValidationError

from perseus.cli.common import HostOption, JsonFlag, out, print_json, run
from perseus.config import Settings
from perseus.errors import ConfigError, NotRegistered
from perseus.models import ConnectorSpec

#: ConnectorSpec fields → the register flag that sets them (for one-line error messages).
_FLAGS = {
    "command": "--exec",
    "ready_line": "--ready-line",
    "ready_url": "--ready-url",
    "ready_timeout_s": "--ready-timeout",
    "stop_grace_s": "--stop-grace",
    "restart": "--restart",
    "health_url": "--health-url",
    "health_failures": "--health-failures",
    "on_unhealthy": "--on-unhealthy",
    "warm": "--warm",
    "active_timeout_s": "--active-timeout",
    "env": "--env",
}
RESTART_CHOICES = ("no", "on-failure")
ON_UNHEALTHY_CHOICES = ("restart", "failover")


#: This module's commands, joined to ``perseus`` by ``perseus.cli.app``.
app = typer.Typer(rich_markup_mode=None)


def connector_spec(
    *,
    exec_command: str | None,
    ready_line: str | None,
    ready_url: str | None,
    ready_timeout: float | None,
    stop_grace: float | None,
    restart: str | None,
    health_url: str | None = None,
    health_failures: int | None = None,
    on_unhealthy: str | None = None,
    warm: bool = False,
    active_timeout: float | None = None,
    env: list[str] | tuple[str, ...] = (),
) -> ConnectorSpec | None:
    """The spec ``perseus register`` asks for; None keeps the default (simulated) connector.

    ``--restart``, ``--on-unhealthy`` and ``--warm`` apply to the simulated connector too; the other
    options configure the ``--exec`` command and need it.
    """
    if restart is not None and restart not in RESTART_CHOICES:
        raise ConfigError(f"--restart must be one of {', '.join(RESTART_CHOICES)}, got {restart!r}")
    if on_unhealthy is not None and on_unhealthy not in ON_UNHEALTHY_CHOICES:
        raise ConfigError(
            f"--on-unhealthy must be one of {', '.join(ON_UNHEALTHY_CHOICES)}, got {on_unhealthy!r}"
        )
    given = {
        "--ready-line": ready_line,
        "--ready-url": ready_url,
        "--ready-timeout": ready_timeout,
        "--stop-grace": stop_grace,
        "--health-url": health_url,
        "--health-failures": health_failures,
        "--active-timeout": active_timeout,
        "--env": child_env(env) or None,
    }
    anywhere: dict[str, object] = {"restart": restart, "on_unhealthy": on_unhealthy, "warm": warm or None}
    if exec_command is None:
        if needs := [flag for flag, value in given.items() if value is not None]:
            raise ConfigError(f"{', '.join(needs)}: only with --exec COMMAND (they configure that command)")
        chosen = {name: value for name, value in anywhere.items() if value is not None}
        return _validated(chosen) if chosen else None
    if ready_line is not None and ready_url is not None:
        raise ConfigError("--ready-line and --ready-url exclude each other: choose one readiness check")
    fields: dict[str, object] = {"kind": "process", "command": exec_command}
    for name, value in (
        ("ready_line", ready_line),
        ("ready_url", ready_url),
        ("ready_timeout_s", ready_timeout),
        ("stop_grace_s", stop_grace),
        ("health_url", health_url),
        ("health_failures", health_failures),
        ("active_timeout_s", active_timeout),
        ("env", child_env(env) or None),
        *anywhere.items(),
    ):
        if value is not None:
            fields[name] = value
    return _validated(fields)


#: A variable name the child's environment can take (what a POSIX shell accepts).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def child_env(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``--env NAME=VALUE`` options as a mapping; a malformed one is a one-line usage error."""
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"--env: expected NAME=VALUE with a variable name, got {pair!r}")
        env[name] = value
    return env


def _validated(fields: dict[str, object]) -> ConnectorSpec:
    try:
        return ConnectorSpec.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = _FLAGS.get(str(first["loc"][0]), "--exec") if first["loc"] else "--exec"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{flag}: {message}") from None


@app.command()
def output(
    exchange: Annotated[str, typer.Argument(metavar="EXCHANGE", help="Exchange name.")],
    host: HostOption = None,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=1, metavar="N", help="How many lines (at least 1).")
    ] = 20,
    as_json: JsonFlag = False,
) -> None:
    """The last lines written by a process connector (--exec) of EXCHANGE running on this machine.

    The output is kept where the child runs: {data dir}/connectors/{workflow id}.log, rotated.
    """
    from perseus.connectors.process import output_dir, output_path, read_output
    from perseus.keys import workflow_id

    async def main(settings: Settings) -> tuple[str, str, list[str]]:
        name = host or settings.host_name()
        path = output_path(output_dir(settings.data_dir), workflow_id(exchange, name))
        if not path.exists():
            raise NotRegistered(
                f"no connector output for {exchange.lower()} on host {name} (looked for {path}); "
                "only a connector started with --exec on this machine writes one"
            )
        return name, str(path), read_output(path, lines)

    name, path, tail = run(main)
    if as_json:
        print_json({"exchange": exchange.lower(), "host": name, "path": path, "lines": tail})
        return
    for line in tail:
        out.print(line)  # the console never reads markup: a child's "[/bold]" is printed as it is
