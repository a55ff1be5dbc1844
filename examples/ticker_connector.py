"""An example connector to run under Perseus: the line protocol, warm standby and fenced writes.

    perseus register coinbase --exec ".venv/bin/python -u examples/ticker_connector.py --warmup 5" \\
        --ready-line READY --warm --standby --env TICKER_REDIS_URL=redis://127.0.0.1:7379/0 ...

Environment: what Perseus sets (``PERSEUS_EXCHANGE``, ``PERSEUS_EXCHANGE_ID``, ``PERSEUS_EPOCH``,
``PERSEUS_INSTANCE_ID``, ``PERSEUS_ROLE``, ``PERSEUS_SYMBOLS``) and ``TICKER_REDIS_URL``, the Redis it
writes to — the one Perseus uses, or the fence cannot see the status key. Perseus does not pass its
own ``PERSEUS_REDIS_URL`` on: give it with ``perseus register --env``. Without it, Perseus' default
(the Redis ``perseus dev`` starts) is assumed.

What it does, step by step:

1. *Warm-up*: pretends to backfill (``--warmup`` seconds), then says ``PERSEUS symbols=<n>`` and
   ``READY``. With ``--port`` it answers ``GET /health`` with 200 from then on.
2. ``PERSEUS_ROLE=standby``: it waits, warm, for ``ACTIVATE <epoch>`` on stdin, takes that epoch as
   its fence and answers ``ACTIVE``. ``PERSEUS_ROLE=active``: it starts at once with ``PERSEUS_EPOCH``.
3. *Active*: every ``--every`` seconds it appends a tick to the stream
   ``{exchange:<id>:status}:ticks`` through :func:`perseus.fencing.fenced_write` — the write lands
   only while the status key still names its epoch. Refused (another instance took over): it says
   ``PERSEUS error=…`` and ``PERSEUS health=failed``, and exits 1 — it must not act any more.
   Redis unreachable: ``PERSEUS health=degraded``; back: ``PERSEUS health=ok``.
4. ``DEACTIVATE`` on stdin: it stops writing and waits, warm, for the next ``ACTIVATE``.
5. SIGTERM: it exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import stat
import sys

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from perseus.errors import StaleEpoch
from perseus.fencing import Fence, fenced_write


def say(line: str) -> None:
    print(line, flush=True)


async def serve_health(port: int) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", port)


async def command_reader() -> asyncio.StreamReader | None:
    """stdin as a stream of commands, when Perseus gave us a pipe (a warm spec), else None."""
    if not stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
        return None
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def next_command(commands: asyncio.StreamReader | None) -> list[str]:
    """The next command's words; ``["EOF"]`` once stdin is closed (never, without a pipe)."""
    if commands is None:
        await asyncio.Event().wait()
    assert commands is not None
    line = await commands.readline()
    return line.decode().split() or ["EOF"]


async def run(args: argparse.Namespace) -> int:
    fence = Fence.from_env()
    symbols = [s for s in os.environ.get("PERSEUS_SYMBOLS", "").split(",") if s] or ["BTC-USD"]
    role = os.environ.get("PERSEUS_ROLE", "active")
    stream = fence.key("ticks")
    client = aioredis.from_url(os.environ.get("TICKER_REDIS_URL", "redis://127.0.0.1:7379/0"))
    server = None
    try:
        await asyncio.sleep(args.warmup)  # the backfill a real connector would do
        if args.port:
            server = await serve_health(args.port)
        say(f"PERSEUS symbols={len(symbols)}")
        say(f"ticker for {os.environ.get('PERSEUS_EXCHANGE')} READY ({role})")
        commands = await command_reader()
        while True:
            if role == "standby":
                words = await next_command(commands)
                if words[0] == "EOF":
                    return 0
                if words[0] != "ACTIVATE" or len(words) < 2 or not words[1].isdigit():
                    continue  # DEACTIVATE while standby, or noise: stay warm
                fence = fence.activated(int(words[1]))
                role = "active"
                say("ACTIVE")
            role = await act(client, fence, stream, symbols, args.every, commands)
            if role == "exit":
                return 1
    finally:
        if server is not None:
            server.close()
        await client.aclose()


async def act(
    client: aioredis.Redis,
    fence: Fence,
    stream: str,
    symbols: list[str],
    every: float,
    commands: asyncio.StreamReader | None,
) -> str:
    """Write fenced ticks until DEACTIVATE ("standby") or until fenced out ("exit")."""
    command = asyncio.ensure_future(next_command(commands))
    degraded = False
    try:
        while True:
            done, _ = await asyncio.wait({command}, timeout=every)
            if done:
                if command.result()[0] in ("DEACTIVATE", "EOF"):
                    say("standby again")
                    return "standby"
                command = asyncio.ensure_future(next_command(commands))
                continue
            symbol = random.choice(symbols)
            price = f"{random.uniform(10, 100_000):.2f}"
            try:
                await fenced_write(
                    client, fence, "XADD", [stream], "MAXLEN", "~", 10_000, "*",
                    "symbol", symbol, "price", price, "epoch", fence.epoch,
                )  # fmt: skip
            except StaleEpoch as exc:
                say(f"PERSEUS error={exc}")
                say("PERSEUS health=failed fenced out: another instance holds the exchange")
                return "exit"
            except RedisError as exc:
                if not degraded:
                    say(f"PERSEUS error=cannot write ticks: {exc}")
                    say("PERSEUS health=degraded redis unreachable")
                    degraded = True
            else:
                if degraded:
                    say("PERSEUS health=ok")
                    degraded = False
    finally:
        command.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of pretend backfill")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between ticks")
    parser.add_argument("--port", type=int, default=0, help="serve GET /health on this port")
    args = parser.parse_args()

    async def guarded() -> int:
        task = asyncio.ensure_future(run(args))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            say("SIGTERM: bye")
            return 0

    sys.exit(asyncio.run(guarded()))


if __name__ == "__main__":
    main()
