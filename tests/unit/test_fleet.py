"""The fleet file's validation and the pure reconcile(): every invariant of perseus/fleet/file.py, over many
snapshots (no servers)."""

from __future__ import annotations

import itertools

import pytest

from perseus.errors import InvalidFleet
from perseus.fleet.file import (
    Change,
    ChangeKind,
    Instance,
    Observed,
    Placement,
    RetryWait,
    Standby,
    drain_plan,
    enrol_plan,
    parse_fleet,
    reconcile,
    retry_after,
    retry_over,
)
from perseus.models import ConnectorSpec

pytestmark = pytest.mark.unit

KNOWN = ["binance", "coinbase", "kraken", "kucoin"]

GOOD = """
heartbeat_interval = 15
admin_email = "admin@perseus.local"

[exchanges.coinbase]
hosts = ["host-a", "host-b"]
exec = "/opt/collector --exchange coinbase"
ready_line = "READY"
ready_timeout = 20
stop_grace = 3
restart = "on-failure"
warm = true
failsafe = true

[exchanges.kraken]
hosts = ["host-b"]
connector = "simulated"
heartbeat_interval = 2.5
"""


def test_a_good_file_parses_into_placements() -> None:
    coinbase, kraken = parse_fleet(GOOD, KNOWN)
    assert coinbase.exchange == "coinbase" and coinbase.hosts == ("host-a", "host-b")
    assert coinbase.connector.kind == "process"
    assert coinbase.connector.command == ["/opt/collector", "--exchange", "coinbase"]
    assert (coinbase.connector.ready_line, coinbase.connector.ready_timeout_s) == ("READY", 20.0)
    assert (coinbase.connector.stop_grace_s, coinbase.connector.restart) == (3.0, "on-failure")
    assert coinbase.warm and coinbase.heartbeat_interval_s == 15.0
    assert coinbase.admin_email == "admin@perseus.local"
    assert kraken.connector == ConnectorSpec() and kraken.heartbeat_interval_s == 2.5
    assert not kraken.warm
    assert coinbase.failsafe and not kraken.failsafe  # off unless the file says so
    assert [coinbase.priority(h) for h in coinbase.hosts] == [1, 0]


def test_a_placement_round_trips_through_json() -> None:
    for placement in parse_fleet(GOOD, KNOWN):
        assert Placement.model_validate(placement.model_dump(mode="json")) == placement


BASE = '[exchanges.kraken]\nhosts = ["a"]\nconnector = "simulated"\n'
K = "[exchanges.kraken]\nhosts = ['a']\n"  # a table with hosts, to which each case adds a line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[exchanges.kraken\n", "not a valid TOML file"),
        ("colour = 1\n" + BASE, "colour: unknown key"),
        ("", "exchanges: no exchange declared"),
        (
            '[exchanges.nasdaq]\nhosts = ["a"]\nconnector = "simulated"\n',
            "exchanges.nasdaq: unknown exchange",
        ),
        ("[exchanges.kraken]\nhosts = 'a'\nconnector = 'simulated'\n", "exchanges.kraken.hosts: expected"),
        ("[exchanges.kraken]\nhosts = []\nconnector = 'simulated'\n", "exchanges.kraken.hosts: expected"),
        (
            "[exchanges.kraken]\nhosts = [1]\nconnector = 'simulated'\n",
            "exchanges.kraken.hosts: expected host",
        ),
        ("[exchanges.kraken]\nconnector = 'simulated'\n", "exchanges.kraken.hosts: missing"),
        (
            "[exchanges.kraken]\nhosts = ['a', 'b', 'a']\nconnector = 'simulated'\n",
            "exchanges.kraken.hosts: duplicate host 'a'",
        ),
        ("[exchanges.kraken]\nhosts = ['a b']\nconnector = 'simulated'\n", "invalid host name 'a b'"),
        (K, "exchanges.kraken: no connector"),
        (K + "connector = 'real'\n", "exchanges.kraken.connector: only"),
        (
            K + "connector = 'simulated'\nexec = 'x'\n",
            "exchanges.kraken: exec and connector exclude",
        ),
        (
            K + "connector = 'simulated'\nready_line = 'OK'\n",
            "exchanges.kraken.ready_line: only with exec",
        ),
        (
            K + "exec = ''\n",
            "exchanges.kraken.exec: a process connector needs",
        ),
        (
            K + "exec = 'x'\nready_line = '('\n",
            "kraken.ready_line: not a regular",
        ),
        (K + "exec = 'x'\nready_timeout = 500\n", "kraken.ready_timeout:"),
        (
            K + "exec = 'x'\nstop_grace = 'soon'\n",
            "kraken.stop_grace: expected",
        ),
        (K + "exec = 'x'\nrestart = 'always'\n", "kraken.restart: must be"),
        ("heartbeat_interval = 0.1\n" + BASE, "heartbeat_interval: the heartbeat interval must be between"),
        ("heartbeat_interval = 7200\n" + BASE, "heartbeat_interval: the heartbeat interval must be"),
        ("heartbeat_interval = nan\n" + BASE, "heartbeat_interval: the heartbeat interval must be"),
        ("heartbeat_interval = inf\n" + BASE, "heartbeat_interval: the heartbeat interval must be"),
        ("heartbeat_interval = '15'\n" + BASE, "heartbeat_interval: expected a number"),
        ("heartbeat_interval = true\n" + BASE, "heartbeat_interval: expected a number"),
        (BASE + "heartbeat_interval = 0\n", "exchanges.kraken.heartbeat_interval: the heartbeat"),
        (BASE + "warm = 'yes'\n", "exchanges.kraken.warm: expected true or false"),
        (BASE + "failsafe = 1\n", "exchanges.kraken.failsafe: expected true or false"),
        (BASE + "admin_email = 3\n", "exchanges.kraken.admin_email: expected a string"),
        (BASE + "hots = ['a']\n", "exchanges.kraken.hots: unknown key"),
        ("exchanges = 3\n", "exchanges: no exchange declared"),
        ("[exchanges]\nkraken = 3\n", "exchanges.kraken: expected a table"),
        (BASE + "[exchanges.Kraken]\nhosts = ['a']\nconnector = 'simulated'\n", "kraken is declared twice"),
    ],
)
def test_a_bad_file_is_refused_in_one_line_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(InvalidFleet) as caught:
        parse_fleet(text, KNOWN)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unknown_exchange_lists_the_known_ones() -> None:
    with pytest.raises(InvalidFleet, match="known exchanges: binance, coinbase, kraken, kucoin"):
        parse_fleet('[exchanges.nasdaq]\nhosts = ["a"]\nconnector = "simulated"\n', KNOWN)


# --- plan ------------------------------------------------------------------------------------------


def place(exchange: str, *hosts: str, interval: float = 1.0) -> Placement:
    return Placement(exchange=exchange, hosts=hosts, connector=ConnectorSpec(), heartbeat_interval_s=interval)


def kinds(actions: list[Change]) -> list[tuple[str, str, str | None]]:
    return [(a.kind.value, a.exchange, a.host) for a in actions]


def test_first_live_host_is_active_the_rest_standbys_by_preference() -> None:
    desired = [place("coinbase", "a", "b", "c")]
    actions = reconcile(desired, Observed(live_hosts=frozenset({"a", "b", "c"})))
    assert kinds(actions) == [
        ("store", "coinbase", None),
        ("register-active", "coinbase", "a"),
        ("register-standby", "coinbase", "b"),
        ("register-standby", "coinbase", "c"),
    ]
    assert [a.priority for a in actions[2:]] == [1, 0]


def test_a_dead_preferred_host_waits_and_the_next_live_one_is_active() -> None:
    actions = reconcile([place("kraken", "a", "b")], Observed(live_hosts=frozenset({"b"})))
    assert kinds(actions) == [
        ("store", "kraken", None),
        ("register-active", "kraken", "b"),
        ("wait", "kraken", "a"),
    ]
    assert not actions[-1].changes


def test_applying_what_runs_changes_nothing() -> None:
    desired = [place("coinbase", "a", "b")]
    observed = Observed(
        stored=desired,
        instances=[Instance(exchange="coinbase", host="a"), Instance(exchange="coinbase", host="b")],
        holders={"coinbase": "b"},  # no failback to the preferred host
        live_hosts=frozenset({"a", "b"}),
    )
    assert reconcile(desired, observed) == []
    assert reconcile(desired, observed, prune=True) == []


def test_a_held_exchange_gets_only_standbys() -> None:
    # Held by a hand-registered instance on a host the file does not name.
    actions = reconcile(
        [place("kraken", "a", "b")], Observed(holders={"kraken": "z"}, live_hosts=frozenset("ab"))
    )
    assert kinds(actions)[1:] == [("register-standby", "kraken", "a"), ("register-standby", "kraken", "b")]


def test_a_running_standby_means_no_new_active() -> None:
    observed = Observed(instances=[Instance(exchange="kraken", host="b")], live_hosts=frozenset("ab"))
    assert kinds(reconcile([place("kraken", "a", "b")], observed))[1:] == [
        ("register-standby", "kraken", "a")
    ]


def test_a_changed_placement_is_stored_again() -> None:
    old = place("kraken", "a")
    observed = Observed(
        stored=[old], instances=[Instance(exchange="kraken", host="a")], live_hosts=frozenset("a")
    )
    assert reconcile([old], observed) == []
    assert kinds(reconcile([place("kraken", "a", interval=2.0)], observed)) == [("store", "kraken", None)]


def test_a_changed_failsafe_is_reported_and_nothing_is_registered_beside_the_instances_that_differ() -> None:
    # The file turns the failsafe on; a and b run without it, c is live and has no instance.
    old = place("kraken", "a", "b", "c")
    new = old.model_copy(update={"failsafe": True})
    running = [Instance(exchange="kraken", host=h, failsafe=False) for h in "ab"]
    observed = Observed(stored=[old], instances=running, holders={"kraken": "a"}, live_hosts=frozenset("abc"))
    actions = reconcile([new], observed)
    assert kinds(actions) == [
        ("store", "kraken", None),
        ("failsafe-differs", "kraken", "a"),
        ("failsafe-differs", "kraken", "b"),
    ]  # c's registration, with the failsafe, would be refused at the door beside a and b
    assert [a.changes for a in actions] == [True, False, False]
    assert actions[1].describe() == (
        "kraken: failsafe on in the file, off in the instance on a: not restarted behind your back, "
        "and nothing registered beside it (an exchange's instances all have the failsafe or none has) "
        "— perseus shutdown kraken --host a, then apply again"
    )
    # Turned off again while they run with it: the same, the other way round.
    with_it = observed.model_copy(
        update={"stored": [new], "instances": [i.model_copy(update={"failsafe": True}) for i in running]}
    )
    back = reconcile([old], with_it)
    assert kinds(back)[1:] == [("failsafe-differs", "kraken", "a"), ("failsafe-differs", "kraken", "b")]
    assert back[1].describe().startswith("kraken: failsafe off in the file, on in the instance on a:")
    # The instances agree with the file: c is registered as a standby, as for any placement.
    assert kinds(reconcile([new], with_it)) == [("register-standby", "kraken", "c")]
    # Once a and b were shut down, the next apply registers everything with the failsafe.
    empty = observed.model_copy(update={"stored": [new], "instances": [], "holders": {}})
    assert kinds(reconcile([new], empty))[0] == ("register-active", "kraken", "a")
    # Not read (a worker's own enrolment never touches a running instance): nothing reported.
    unread = observed.model_copy(
        update={"instances": [i.model_copy(update={"failsafe": None}) for i in running]}
    )
    assert "failsafe-differs" not in [k for k, _, _ in kinds(reconcile([new], unread))]


def test_prune_removes_only_what_the_stored_file_named_and_the_new_one_drops() -> None:
    stored = [place("coinbase", "a", "b"), place("kraken", "a"), place("binance", "b")]
    observed = Observed(
        stored=stored,
        instances=[
            Instance(exchange="coinbase", host="a"),
            Instance(exchange="coinbase", host="b"),
            Instance(exchange="coinbase", host="z"),  # registered by hand: never pruned
            Instance(exchange="kraken", host="a"),
            Instance(exchange="kucoin", host="a"),  # registered by hand, no placement
        ],
        holders={"coinbase": "a", "kraken": "a"},
        live_hosts=frozenset("abz"),
    )
    desired = [place("coinbase", "a"), place("binance", "b")]
    # binance was stored but does not run (its host was down at the last apply): enrolled now.
    assert kinds(reconcile(desired, observed)) == [
        ("register-active", "binance", "b"),
        ("store", "coinbase", None),
    ]
    assert kinds(reconcile(desired, observed, prune=True)) == [
        ("register-active", "binance", "b"),
        ("store", "coinbase", None),
        ("shutdown", "coinbase", "b"),
        ("shutdown", "kraken", "a"),
        ("forget", "kraken", None),
    ]


def test_registrations_come_before_a_pruned_active_goes() -> None:
    stored = [place("kraken", "a")]
    observed = Observed(
        stored=stored,
        instances=[Instance(exchange="kraken", host="a")],
        holders={"kraken": "a"},
        live_hosts=frozenset("ab"),
    )
    assert kinds(reconcile([place("kraken", "b")], observed, prune=True)) == [
        ("store", "kraken", None),
        ("register-standby", "kraken", "b"),
        ("shutdown", "kraken", "a"),
    ]


HOSTS = ("a", "b", "c")


def snapshots() -> list[tuple[list[Placement], Observed]]:
    """Many worlds: each subset of live hosts × running instances × holder, for a 3-host placement
    (and a stored placement that named a fourth host)."""
    out: list[tuple[list[Placement], Observed]] = []
    desired = [place("coinbase", *HOSTS)]
    stored = [place("coinbase", *HOSTS, "d")]
    for live_n, run_n in itertools.product(range(2**4), range(2**4)):
        live = frozenset(h for i, h in enumerate((*HOSTS, "d")) if live_n >> i & 1)
        running = [h for i, h in enumerate((*HOSTS, "d")) if run_n >> i & 1]
        for holder in [None, *running]:
            out.append(
                (
                    desired,
                    Observed(
                        stored=stored,
                        instances=[Instance(exchange="coinbase", host=h) for h in running],
                        holders={"coinbase": holder} if holder else {},
                        live_hosts=live,
                    ),
                )
            )
    return out


@pytest.mark.parametrize("prune", [False, True])
def test_invariants_over_many_snapshots(prune: bool) -> None:
    worlds = snapshots()
    assert len(worlds) > 500
    for desired, observed in worlds:
        actions = reconcile(desired, observed, prune=prune)
        running = {i.host for i in observed.instances}
        touched = [a.host for a in actions if a.kind is not ChangeKind.STORE]
        # 1. a running desired instance is never touched
        assert not [h for h in touched if h in running and h in HOSTS]
        # 2. at most one active, none when held or anything runs; it is the first live free host
        actives = [a.host for a in actions if a.kind is ChangeKind.REGISTER_ACTIVE]
        assert len(actives) <= 1
        if observed.holders or running:
            assert not actives
        elif free_live := [h for h in HOSTS if h in observed.live_hosts]:
            assert actives == [free_live[0]]
        # 3. registrations only on live hosts; a dead host waits
        for a in actions:
            if a.kind in (ChangeKind.REGISTER_ACTIVE, ChangeKind.REGISTER_STANDBY):
                assert a.host in observed.live_hosts
            if a.kind is ChangeKind.WAIT:
                assert a.host not in observed.live_hosts
        # 4. shutdowns only with prune, only the dropped stored host, only if it runs
        shutdowns = [a.host for a in actions if a.kind is ChangeKind.SHUTDOWN]
        assert shutdowns == (["d"] if prune and "d" in running else [])
        # 5. order: store, registrations, waits, shutdowns
        order = [a.kind for a in actions]
        rank = [ChangeKind.STORE, ChangeKind.REGISTER_ACTIVE, ChangeKind.REGISTER_STANDBY, ChangeKind.WAIT]
        rank.extend([ChangeKind.FAILSAFE_DIFFERS, ChangeKind.SHUTDOWN])
        assert [rank.index(k) for k in order] == sorted(rank.index(k) for k in order)
        # 6. stored differs from desired: exactly one store
        assert order.count(ChangeKind.STORE) == 1
        # Carrying the plan out and planning again changes nothing (idempotent).
        after = Observed(
            stored=desired,
            instances=[
                *(i for i in observed.instances if i.host not in shutdowns),
                *(
                    Instance(exchange="coinbase", host=a.host or "")
                    for a in actions
                    if a.kind in (ChangeKind.REGISTER_ACTIVE, ChangeKind.REGISTER_STANDBY)
                ),
            ],
            holders=observed.holders or {"coinbase": actives[0]} if actives else observed.holders,
            live_hosts=observed.live_hosts,
        )
        assert [a for a in reconcile(desired, after, prune=prune) if a.changes] == []


@pytest.mark.parametrize("wanted", [False, True])
def test_a_failsafe_that_differs_blocks_registrations_and_touches_nothing_over_many_snapshots(
    wanted: bool,
) -> None:
    """Invariant 7 over every snapshot, with each running instance read with or without the failsafe."""
    checked = 0
    for desired, observed in snapshots():
        placed = [p.model_copy(update={"failsafe": wanted}) for p in desired]
        hosts = [i.host for i in observed.instances]
        for bits in range(2 ** len(hosts)):
            read = [
                Instance(exchange="coinbase", host=h, failsafe=bool(bits >> n & 1))
                for n, h in enumerate(hosts)
            ]
            world = observed.model_copy(update={"instances": read})
            for prune in (False, True):
                actions = reconcile(placed, world, prune=prune)
                differ = sorted(i.host for i in read if i.failsafe != wanted)
                reported = [a.host for a in actions if a.kind is ChangeKind.FAILSAFE_DIFFERS]
                assert reported == differ
                assert all(a.failsafe is wanted for a in actions if a.kind is ChangeKind.FAILSAFE_DIFFERS)
                registered = [
                    a for a in actions if a.kind in (ChangeKind.REGISTER_ACTIVE, ChangeKind.REGISTER_STANDBY)
                ]
                if differ:
                    assert registered == []
                # Without the failsafe read, the plan is the same but for the reports and, while
                # an instance differs, the registrations.
                plain = reconcile(placed, observed, prune=prune)
                blocked = (ChangeKind.REGISTER_ACTIVE, ChangeKind.REGISTER_STANDBY) if differ else ()
                assert [a for a in actions if a.kind is not ChangeKind.FAILSAFE_DIFFERS] == [
                    a for a in plain if a.kind not in blocked
                ]
                checked += 1
    assert checked > 1000


def test_enrolment_registers_only_the_starting_host() -> None:
    placements = [place("coinbase", "a", "b"), place("kraken", "b"), place("binance", "c")]
    # Nobody holds coinbase: b takes it, even though a is preferred (a has no worker now).
    actions = enrol_plan(placements, "b", Observed())
    assert kinds(actions) == [("register-active", "coinbase", "b"), ("register-active", "kraken", "b")]
    # a holds coinbase; kraken already runs on b: b comes back as coinbase's standby only.
    observed = Observed(holders={"coinbase": "a"}, instances=[Instance(exchange="kraken", host="b")])
    actions = enrol_plan(placements, "b", observed)
    assert kinds(actions) == [("register-standby", "coinbase", "b")]
    assert actions[0].priority == 0
    # the preferred host comes back as the highest-priority standby
    assert enrol_plan(placements, "a", Observed(holders={"coinbase": "b"}))[0].priority == 1
    assert enrol_plan(placements, "z", Observed()) == []


def test_drain_hands_each_held_exchange_to_its_best_other_standby() -> None:
    holders = {"coinbase": "a", "kraken": "a", "binance": "b"}
    standbys = {
        "coinbase": [Standby(host="c", priority=1), Standby(host="b", priority=2)],
        "kraken": [Standby(host="a", priority=9), Standby(host="c", priority=0)],
    }
    steps = drain_plan("a", holders, standbys, force=False)
    assert [(s.exchange, s.action, s.to_host) for s in steps] == [
        ("coinbase", "handoff", "b"),
        ("kraken", "handoff", "c"),
    ]
    assert drain_plan("z", holders, standbys, force=False) == []


def test_drain_refuses_an_exchange_without_standby_unless_forced() -> None:
    holders = {"coinbase": "a", "kraken": "a"}
    standbys = {"coinbase": [Standby(host="b", priority=0)], "kraken": [Standby(host="a", priority=1)]}
    with pytest.raises(InvalidFleet, match="no live standby for kraken"):
        drain_plan("a", holders, standbys, force=False)
    steps = drain_plan("a", holders, standbys, force=True)
    assert [(s.exchange, s.action) for s in steps] == [("coinbase", "handoff"), ("kraken", "shutdown")]


def test_the_readme_example_and_the_demo_fleet_are_valid() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    block = re.search(r"```toml\n# fleet.toml\n(.*?)```", readme, re.S)
    assert block is not None
    seeded = ["coinbase", "binance", "binance_us", "kraken", "kucoin", "mexc"]
    assert [p.exchange for p in parse_fleet(block.group(1), seeded)] == [
        "binance",
        "coinbase",
        "kraken",
        "kucoin",
    ]
    demo = parse_fleet((root / "perseus" / "demo_fleet.toml").read_text(), seeded, default_interval_s=7.0)
    assert [(p.exchange, p.heartbeat_interval_s) for p in demo] == [
        ("binance", 7.0),
        ("coinbase", 7.0),
        ("kraken", 7.0),
    ]


def test_a_wait_for_a_server_backs_off_to_its_cap_and_logs_each_change_once() -> None:
    wait = RetryWait()
    delays, lines = [], []
    for kind in ["PostgreSQL"] * 6 + ["Temporal"] * 2:
        wait, delay, line = retry_after(wait, kind, f"{kind} unreachable")
        delays.append(delay)
        lines.append(line)
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    # One line when the wait starts and one when its reason changes; none per retry.
    assert [line is not None for line in lines] == [True, False, False, False, False, False, True, False]
    assert lines[0] is not None and "PostgreSQL unreachable" in lines[0]
    done, line = retry_over(wait)
    assert done == RetryWait() and line is not None and "8 failed attempt(s)" in line
    assert retry_over(done) == (done, None)  # nothing to say when nothing waited
