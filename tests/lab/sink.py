"""The sink: a small TCP service standing in for the exchange a connector talks to.

    python -m tests.lab.sink --port P --log FILE [--bind ADDR] [--fenced]

Each line ``ACT <exchange> <host> <epoch> <seq>`` is one action. The sink stamps its arrival on its
own CLOCK_MONOTONIC (never the sender's, whose clock the lab may skew), appends one JSON line to its
own log and answers ``OK``; with ``--fenced`` — the exchange-side fence — an action under an epoch
older than one it already accepted for that exchange is refused (``FENCED``, logged with
``accepted: false``). The judge (tests/lab/judge.py) reads only this log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path


class Sink:
    def __init__(self, log: Path, *, fenced: bool) -> None:
        self._log = open(log, "a", buffering=1)  # noqa: SIM115 - the server's lifetime
        self._fenced = fenced
        self._newest: dict[str, int] = {}

    def take(self, line: str) -> str:
        parts = line.split()
        if len(parts) != 5 or parts[0] != "ACT" or not parts[3].isdigit() or not parts[4].isdigit():
            return "ERR expected: ACT <exchange> <host> <epoch> <seq>"
        _, exchange, host, epoch_text, seq = parts
        epoch = int(epoch_text)
        at = time.monotonic()
        accepted = not (self._fenced and epoch < self._newest.get(exchange, 0))
        if accepted:
            self._newest[exchange] = max(epoch, self._newest.get(exchange, 0))
        doc = {
            "exchange": exchange,
            "host": host,
            "epoch": epoch,
            "seq": int(seq),
            "at": at,
            "accepted": accepted,
        }
        self._log.write(json.dumps(doc) + "\n")
        return "OK" if accepted else "FENCED"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write((self.take(line.decode(errors="replace")) + "\n").encode())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--fenced", action="store_true")
    args = parser.parse_args()
    sink = Sink(args.log, fenced=args.fenced)
    server = await asyncio.start_server(sink.serve, args.bind, args.port)
    print(f"sink listening on {args.bind}:{args.port} pid {os.getpid()}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
