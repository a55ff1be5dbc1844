"""Availability through Redis outages, with and without the failsafe (issue 29):
``.venv/bin/python -m bench.failsafe_availability [--quick] [--no-write]``.

The README's topology on scratch servers: three hosts, each running ``perseus worker --host H``
(which also serves the shared workflow queue), each reaching Redis through a proxy of its own
(tests/integration/proxy.py) so that Redis can be cut from every host or from one while it keeps
running. Each scenario registers fresh exchanges — half with the failsafe, half without, side by
side on the same workers and through the same cut — each with an active instance and two standbys,
heartbeat interval 2 s (``--interval``):

* **all hosts, D s** (D in ``--outages``, 30 and 300 by default): every proxy goes down for D
  seconds, then up. The actives are spread over the three hosts.
* **holder only**: every exchange is active on the same host and only that host's proxy goes down
  (``--holder-outage`` seconds); its standbys still reach Redis.

Judged from outside Perseus: the connectors' journal (``PERSEUS_CONNECTOR_JOURNAL``, the chaos
suite's judge: a connector acts while connected and within the validity its last renewal gave it),
and the status keys read straight from Redis every 50 ms. Per exchange: seconds without an acting
connector from the cut to the end of the settling window after Redis' return, whether two ever acted
at once, holder and epoch before and after, the time from Redis' return until the status key is
there again (active), and the holder changes after that (flaps). The figures replace the section
"Availability through Redis outages, with and without the failsafe" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import Client

from bench.failover import (
    Board,
    Worker,
    loadavg,
    register_again,
    scratch_exchange,
    scratch_servers,
    write_section,
)
from perseus.client import control
from perseus.core.lifecycle import Command
from perseus.devstack import services
from perseus.store.redis_store import RedisStore
from tests.chaos.invariants import acting_intervals, check, load_journal
from tests.integration.proxy import StallableProxy

SECTION = "## Availability through Redis outages, with and without the failsafe"
#: How long after Redis' return the bench keeps watching for holder changes, in intervals: past
#: every promise (3 I) and the vacancy wait of a standby that saw the key lapse.
SETTLE_INTERVALS = 15
#: The status keys are read this often (seconds).
POLL_S = 0.05


@dataclass
class Watched:
    """One exchange of a scenario and what the bench saw of it."""

    name: str
    ex_id: int
    failsafe: bool
    hosts: list[str]
    before: tuple[str, int] | None = None
    after: tuple[str, int] | None = None
    #: (monotonic time, (hostname, epoch, state) or None when the key is absent), on each change.
    changes: list[tuple[float, tuple[str, int, str] | None]] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)
    #: The exchange's event stream, oldest first, and the cut and return on the wall clock: the
    #: timeline a surprising figure is read from (written to timelines.json beside the logs).
    events: list[dict[str, str]] = field(default_factory=list)
    wall: dict[str, float] = field(default_factory=dict)


class Fleet:
    """Three host workers, each with its Redis through a proxy, writing one connector journal."""

    def __init__(self, env: dict[str, str], redis_port: int, log_dir: Path) -> None:
        self.env, self.redis_port, self.log_dir = env, redis_port, log_dir
        self.journal = log_dir / "journal.jsonl"
        tag = uuid.uuid4().hex[:4]
        self.hosts = [f"sa-{tag}", f"sb-{tag}", f"sc-{tag}"]
        self.proxies: dict[str, StallableProxy] = {}
        self.workers: dict[str, Worker] = {}

    async def start(self) -> None:
        for host in self.hosts:
            proxy = await StallableProxy(self.redis_port).start()
            self.proxies[host] = proxy
            env = dict(self.env)
            env["PERSEUS_REDIS_URL"] = f"redis://127.0.0.1:{proxy.port}/0"
            env["PERSEUS_CONNECTOR_JOURNAL"] = str(self.journal)
            self.workers[host] = Worker(env, host, self.log_dir, shared=True)
        await asyncio.gather(*(w.ready() for w in self.workers.values()))

    async def close(self) -> None:
        for worker in self.workers.values():
            worker.kill()
        for proxy in self.proxies.values():
            await proxy.close()


async def status(store: RedisStore, ex_id: int) -> tuple[str, int, str] | None:
    raw, _ = await store.raw_status(ex_id)
    if not raw:
        return None
    doc = json.loads(raw)
    return str(doc["hostname"]), int(doc["epoch"]), str(doc["connectionState"])


async def watch(store: RedisStore, watched: list[Watched], stop: asyncio.Event) -> None:
    """Record every change of each exchange's status key until ``stop``."""
    last: dict[int, object] = {}
    while not stop.is_set():
        for w in watched:
            with contextlib.suppress(Exception):  # one failed read is not a change
                now = await status(store, w.ex_id)
                if last.get(w.ex_id, "unset") != now:
                    last[w.ex_id] = now
                    w.changes.append((time.monotonic(), now))
        await asyncio.sleep(POLL_S)


async def scenario(
    client: Client,
    store: RedisStore,
    fleet: Fleet,
    database_url: str,
    *,
    label: str,
    cut_hosts: list[str] | None,
    outage_s: float,
    interval: float,
    per_mode: int,
) -> list[Watched]:
    """Register ``per_mode`` exchanges with the failsafe and as many without, cut Redis from
    ``cut_hosts`` (None: every host; else the holder's only, and every exchange is active there)
    for ``outage_s``, restore it and watch the settling; then judge each exchange."""
    watched: list[Watched] = []
    holder_only = cut_hosts is not None
    for i in range(2 * per_mode):
        failsafe = i % 2 == 0
        name, ex_id = await scratch_exchange(database_url, "fs_" if failsafe else "nf_")
        k = 0 if holder_only else (i // 2) % 3
        hosts = fleet.hosts[k:] + fleet.hosts[:k]
        watched.append(Watched(name, ex_id, failsafe, hosts))

    async def enrol(w: Watched) -> None:
        await register_again(client, w.name, w.hosts[0], interval, standby=False, failsafe=w.failsafe)
        for h in w.hosts[1:]:
            await register_again(client, w.name, h, interval, standby=True, failsafe=w.failsafe)
        board = Board(store, w.ex_id, interval)
        await board.active_host()
        await board.standbys_visible(set(w.hosts[1:]))

    await asyncio.gather(*(enrol(w) for w in watched))
    await asyncio.sleep(2 * interval)  # a couple of renewals since the last start
    for w in watched:
        now = await status(store, w.ex_id)
        assert now is not None and now[2] == "active", (w.name, now)
        w.before = (now[0], now[1])
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(store, watched, stop))
    cut_from = cut_hosts if cut_hosts is not None else fleet.hosts
    print(f"  {label}: Redis cut from {', '.join(cut_from)} for {outage_s:g}s", flush=True)
    for h in cut_from:
        await fleet.proxies[h].down()
    cut, cut_wall = time.monotonic(), time.time()
    await asyncio.sleep(outage_s)
    for h in cut_from:
        await fleet.proxies[h].up()
    back, back_wall = time.monotonic(), time.time()
    print(f"  {label}: Redis back, settling for {SETTLE_INTERVALS * interval:g}s", flush=True)
    await asyncio.sleep(SETTLE_INTERVALS * interval)
    stop.set()
    await watcher
    end = time.monotonic()
    journal = load_journal(fleet.journal)
    acting = acting_intervals(journal, end)
    overlaps = check(journal, [], end).violations
    for w in watched:
        judge(w, acting.get(w.name, []), overlaps, cut=cut, back=back, end=end, interval=interval)
        now = await status(store, w.ex_id)
        w.after = (now[0], now[1]) if now and now[2] == "active" else None
        w.events = [entry for _, entry in reversed(await store.events(w.name, count=500))]
        w.wall = {"cut": cut_wall, "back": back_wall, "cutMonotonic": cut, "backMonotonic": back}
    for w in watched:
        for h in w.hosts:
            try:
                await control.command(
                    client, exchange=w.name, host=h, default_host=h, command=Command.SHUTDOWN
                )
            except Exception as exc:  # noqa: BLE001 - best-effort cleanup of a scratch exchange
                print(f"  cleanup {w.name} {h}: {exc}")
    return watched


def judge(
    w: Watched,
    acting: list[tuple[float, float, str]],
    overlaps: list[str],
    *,
    cut: float,
    back: float,
    end: float,
    interval: float,
) -> None:
    """The figures of one exchange, from the journal's acting stretches and the key's changes."""
    stretches = sorted((max(s, cut), min(e, end), who) for s, e, who in acting if e > cut and s < end)
    # Seconds in [cut, end] that no connector covers, and the longest such stretch.
    idle, longest, reach = 0.0, 0.0, cut
    for s, e, _ in stretches:
        if s > reach:
            idle += s - reach
            longest = max(longest, s - reach)
        reach = max(reach, e)
    if end > reach:
        idle += end - reach
        longest = max(longest, end - reach)
    assert w.before is not None
    holder_prefix = f"instance-{w.name}-{w.before[0]}@"
    held = [e for s, e, who in stretches if who.startswith(holder_prefix) and s <= cut]
    others = [s for s, _, who in stretches if not who.startswith(holder_prefix)]
    # The key after Redis' return: when it is first there and active, and how often the holder
    # (host, epoch) changes from then on.
    seen = [(t, doc) for t, doc in w.changes if t >= back]
    at_back = [doc for t, doc in w.changes if t < back]
    current = at_back[-1] if at_back else None
    timeline = ([(back, current)] if current is not None else []) + seen
    back_at: float | None = None
    holders: list[tuple[str, int]] = []
    for t, doc in timeline:
        if doc is None or doc[2] != "active":
            continue
        if back_at is None:
            back_at = t
        if not holders or holders[-1] != (doc[0], doc[1]):
            holders.append((doc[0], doc[1]))
    w.figures = {
        "idle": idle,
        "longest": longest,
        "two": any(w.name in v for v in overlaps),
        # "held" when the holder's connector still acted at the end of the watch.
        "holderStopped": "held" if held and max(held) >= end - POLL_S else (max(held) - cut) if held else 0.0,
        "otherActed": (min(others) - cut) if others else None,
        "keyBack": (back_at - back) if back_at is not None else None,
        "flaps": max(0, len(holders) - 1),
        "holderChanges": len(holders),
        "deadline": 2 * interval,
    }


def fmt(value: object, unit: str = " s") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}{unit}"
    return str(value)


def rows(results: list[tuple[str, float, list[Watched]]]) -> list[str]:
    out = []
    for label, outage, watched in results:
        for w in watched:
            f = w.figures
            before = f"{w.before[0]} / {w.before[1]}" if w.before else "—"
            after = f"{w.after[0]} / {w.after[1]}" if w.after else "none"
            same = "same" if w.after == w.before else "moved"
            out.append(
                f"| {label} | {outage:g} s | {'on' if w.failsafe else 'off'} | {w.name} "
                f"| {fmt(f['idle'])} | {fmt(f['longest'])} | {'**yes**' if f['two'] else 'no'} "
                f"| {fmt(f['holderStopped'])} | {fmt(f['otherActed'])} | {before} | {after} ({same}) "
                f"| {fmt(f['keyBack'])} | {f['flaps']} |"
            )
    return out


def markdown(
    results: list[tuple[str, float, list[Watched]]], args: argparse.Namespace, load: list[str]
) -> str:
    lines = [
        SECTION,
        "",
        f"`.venv/bin/python -m bench.failsafe_availability{' --quick' if args.quick else ''}` on "
        f"{platform.node()} ({os.cpu_count()} cores, shared with other work: load average before/after "
        f"{load[0]} → {load[1]}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. The README's "
        "topology: three hosts, each `perseus worker --host H` (also serving the shared workflow "
        "queue), each reaching Redis through a proxy of its own that the bench takes down (connections "
        "refused, open ones cut) while Redis itself runs on. Heartbeat interval "
        f"{args.interval:g} s; each scenario registers {args.per_mode} exchange(s) with the failsafe and "
        f"{args.per_mode} without, side by side on the same workers through the same cut, each with an "
        "active instance and two standbys (simulated connector). *All hosts*: every proxy down, the "
        "actives spread over the hosts; *holder only*: every exchange active on one host, and only that "
        "host's proxy down.",
        "",
        "Judged from outside Perseus: the connectors' journal (the chaos suite's judge: a connector acts "
        "while connected and within the validity of its last renewal) and the status keys read from "
        f"Redis directly every {POLL_S * 1000:.0f} ms. *Without a connector*: seconds from the cut "
        f"until {SETTLE_INTERVALS} intervals after Redis' return that no connector of the exchange "
        "acted (and the longest such stretch); *two*: whether two ever acted at once; *holder stopped*: "
        "when the holder's acting ended after the cut (its renew deadline is "
        f"{2 * args.interval:g} s; *held* when it still acted at the end); *other acted*: when a "
        "connector other than the holder's first acted; *key back*: from Redis' return until the "
        "status key is there and active; *flaps*: holder (host, epoch) changes after that.",
        "",
        "| scenario | outage | failsafe | exchange | without a connector | longest | two | holder "
        "stopped | other acted | holder / epoch before | after | key back | flaps |",
        "|---|---:|---|---|---:|---:|---|---:|---:|---|---|---:|---:|",
        *rows(results),
        "",
    ]
    lines += summary(results, args.interval)
    return "\n".join(lines)


def summary(results: list[tuple[str, float, list[Watched]]], interval: float) -> list[str]:
    """One line per scenario and mode: the acceptance's checks, met or not."""
    out = []
    for label, outage, watched in results:
        for failsafe in (True, False):
            mine = [w for w in watched if w.failsafe == failsafe]
            if not mine:
                continue
            idle = max(float(str(w.figures["idle"])) for w in mine)
            two = any(w.figures["two"] for w in mine)
            same = all(w.after == w.before for w in mine)
            keys = [w.figures["keyBack"] for w in mine]
            key_max = max((float(str(k)) for k in keys if k is not None), default=None)
            flaps = sum(int(str(w.figures["flaps"])) for w in mine)
            others = [w.figures["otherActed"] for w in mine if w.figures["otherActed"] is not None]
            text = (
                f"- {label}, {outage:g} s, failsafe {'on' if failsafe else 'off'}: at most "
                f"{idle:.2f} s without a connector; two at once: {'**yes**' if two else 'never'}; "
            )
            if label == "all hosts":
                acted = f"a standby acted ({len(others)} exchange(s))" if others else "no standby acted"
                kept = "every exchange on the same host and epoch after" if same else "holder or epoch moved"
                text += (
                    f"{acted}; {kept}; "
                    f"key back within {fmt(key_max)} of Redis' return "
                    f"({'within' if key_max is not None and key_max <= interval else '**not** within'} "
                    f"one interval); {flaps} flap(s)."
                )
            else:
                stops = [w.figures["holderStopped"] for w in mine]
                latest = max((float(str(s)) for s in stops if s != "held"), default=0.0)
                stopped = "held on" if "held" in stops else f"stopped by {latest:.2f} s"
                text += (
                    f"the holder {stopped} after the cut (deadline {2 * interval:g} s), "
                    f"a standby acted after {fmt(max(others, default=None))} at the latest; "  # type: ignore[type-var]
                    f"{flaps} flap(s) after Redis' return."
                )
            out.append(text)
    out.append("")
    return out


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="perseus-failsafe-bench-"))
    children: list[services.Service] = []
    fleet: Fleet | None = None
    try:
        env, database_url, client, store = await scratch_servers(base, children)
        fleet = Fleet(env, children[1].port, base)
        await fleet.start()
        print(f"workers ready; logs and journal under {base}", flush=True)
        load = [loadavg()]
        results: list[tuple[str, float, list[Watched]]] = []
        plan: list[tuple[str, list[str] | None, float]] = [
            ("all hosts", None, outage) for outage in args.outages
        ]
        plan.append(("holder only", [fleet.hosts[0]], args.holder_outage))
        for label, cut_hosts, outage in plan:
            watched = await scenario(
                client,
                store,
                fleet,
                database_url,
                label=label,
                cut_hosts=cut_hosts,
                outage_s=outage,
                interval=args.interval,
                per_mode=args.per_mode,
            )
            results.append((label, outage, watched))
            for line in rows([(label, outage, watched)]):
                print(line, flush=True)
        load.append(loadavg())
        await store.client.aclose()
        text = markdown(results, args, load)
        print(text)
        (base / "timelines.json").write_text(
            json.dumps(
                {
                    w.name: {"wall": w.wall, "changes": w.changes, "figures": w.figures, "events": w.events}
                    for _, _, ws in results
                    for w in ws
                },
                indent=1,
            )
        )
        if not args.no_write:
            write_section(text, SECTION)
    finally:
        if fleet is not None:
            await fleet.close()
        for child in reversed(children):
            child.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--outages", type=lambda s: [float(x) for x in s.split(",")], default=[30.0, 300.0])
    parser.add_argument("--holder-outage", type=float, default=30.0)
    parser.add_argument(
        "--per-mode", type=int, default=2, help="exchanges with the failsafe (as many without)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="short outages (12 s, holder only 12 s): a smoke run"
    )
    parser.add_argument("--no-write", action="store_true")
    parsed = parser.parse_args()
    if parsed.quick:
        parsed.outages, parsed.holder_outage = [12.0], 12.0
    asyncio.run(main(parsed))
