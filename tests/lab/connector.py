"""The lab's connector: what the process connector runs on each lab host.

    python -m tests.lab.connector --sink HOST:PORT --host NAME [--every S]

It prints ``READY`` at once, then — while its role is ``active`` — sends the sink one action every
``--every`` seconds, tagged with the exchange, its host and the epoch Perseus gave it
(``PERSEUS_EXCHANGE``, ``PERSEUS_EPOCH``, ``PERSEUS_ROLE``: DESIGN §2.9). It reconnects to the sink
when the link drops and never waits for an answer before its next action: a connector that acts
without its claim must show up at the sink, not be held back by it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys


async def act(sink: str, host: str, every: float) -> None:
    exchange = os.environ.get("PERSEUS_EXCHANGE", "?")
    epoch = int(os.environ.get("PERSEUS_EPOCH", "0") or 0)
    address, _, port = sink.rpartition(":")
    seq = 0
    writer: asyncio.StreamWriter | None = None
    readers: set[asyncio.Task[None]] = set()
    while True:
        if os.environ.get("PERSEUS_ROLE", "active") == "active" and epoch > 0:
            try:
                if writer is None or writer.is_closing():
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(address, int(port)), every * 4
                    )
                    readers.add(asyncio.create_task(_discard(reader)))
                seq += 1
                assert writer is not None
                writer.write(f"ACT {exchange} {host} {epoch} {seq}\n".encode())
            except (OSError, TimeoutError):
                writer = None
        await asyncio.sleep(every)


async def _discard(reader: asyncio.StreamReader) -> None:
    """Read the sink's answers so they never back up; nothing waits on them."""
    while await reader.readline():
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sink", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--every", type=float, default=0.1)
    args = parser.parse_args()
    print("READY", flush=True)
    sys.stdout.flush()
    asyncio.run(act(args.sink, args.host, args.every))


if __name__ == "__main__":
    main()
