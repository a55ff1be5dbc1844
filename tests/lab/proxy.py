"""A userspace TCP relay: how the lab carries a service across namespaces, and where delay and
jitter go (this kernel has no netem).

    python -m tests.lab.proxy LISTEN_ADDR:PORT=TARGET_ADDR:PORT [...] [--control FILE] [--seed N]

Each argument is one relay. With ``--control FILE`` the relay re-reads FILE (JSON
``{"delay_ms": D, "jitter_ms": J, "drop_replies": [PORT, ...], "delay_replies": [PORT, ...],
"reply_delay_ms": R}``) every 100 ms: every chunk then waits D ± J ms (drawn from a
``random.Random(seed)``, so a run replays) before it is forwarded, in order; the relays to the
``drop_replies`` target ports forward requests but swallow every reply — a one-way partition above
TCP (the connection stays up, its ACKs flow), which dropping packets by route cannot make: there
TCP's own ACKs are lost too and the connection soon stalls; and those to the ``delay_replies`` ports
hold every reply R ms more (on top of D ± J) while their requests pass at once — an asymmetric link,
whose answers come late but come. A missing file means none of it. Runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
from pathlib import Path


class Shaping:
    def __init__(self, control: Path | None, seed: int) -> None:
        self.control = control
        self.delay_s = 0.0
        self.jitter_s = 0.0
        #: Target ports whose replies are swallowed.
        self.drop_replies: set[int] = set()
        #: Target ports whose replies wait ``reply_delay_s`` more (their requests do not).
        self.delay_replies: set[int] = set()
        self.reply_delay_s = 0.0
        self.random = random.Random(seed)

    def pause(self, replies_of: int = 0) -> float:
        """How long a chunk waits: the link's delay and jitter, plus the reply delay when it is a
        reply of a ``delay_replies`` port (``replies_of``: the target port; 0 for a request)."""
        extra = self.reply_delay_s if replies_of and replies_of in self.delay_replies else 0.0
        if self.delay_s <= 0 and self.jitter_s <= 0:
            return extra
        return extra + max(0.0, self.delay_s + self.random.uniform(-self.jitter_s, self.jitter_s))

    async def follow(self) -> None:
        while self.control is not None:
            try:
                doc = json.loads(self.control.read_text())
                self.delay_s = float(doc.get("delay_ms", 0)) / 1000
                self.jitter_s = float(doc.get("jitter_ms", 0)) / 1000
                self.drop_replies = {int(p) for p in doc.get("drop_replies", [])}
                self.delay_replies = {int(p) for p in doc.get("delay_replies", [])}
                self.reply_delay_s = float(doc.get("reply_delay_ms", 0)) / 1000
            except (OSError, ValueError):
                self.delay_s = self.jitter_s = self.reply_delay_s = 0.0
                self.drop_replies = set()
                self.delay_replies = set()
            await asyncio.sleep(0.1)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shaping: Shaping, replies_of: int = 0
) -> None:
    """Forward in order, each chunk no sooner than its arrival plus its delay: latency, not a
    throughput cap (a chunk does not wait out the delays of those before it on top of its own).
    ``replies_of``: this pipe carries the replies of that target port (0: it carries requests)."""
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def send() -> None:
        while (item := await queue.get()) is not None:
            due, data = item
            if (wait := due - asyncio.get_running_loop().time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    last_due = 0.0
    try:
        while data := await reader.read(65536):
            if replies_of and replies_of in shaping.drop_replies:
                continue
            # Never before the previous chunk: jitter reorders nothing on a TCP stream.
            last_due = max(last_due, asyncio.get_running_loop().time() + shaping.pause(replies_of))
            queue.put_nowait((last_due, data))
        queue.put_nowait(None)
        await sender
    except (ConnectionError, OSError):
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


async def relay(listen: str, target: str, shaping: Shaping) -> asyncio.Server:
    host, _, port = listen.rpartition(":")
    to_host, _, to_port = target.rpartition(":")

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(to_host, int(to_port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _pipe(reader, up_writer, shaping), _pipe(up_reader, writer, shaping, replies_of=int(to_port))
        )

    return await asyncio.start_server(one, host, int(port))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("relays", nargs="+")
    parser.add_argument("--control", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shaping = Shaping(args.control, args.seed)
    servers = []
    for item in args.relays:
        listen, _, target = item.partition("=")
        servers.append(await relay(listen, target, shaping))
    print("proxy ready", flush=True)
    await asyncio.gather(shaping.follow(), *(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
