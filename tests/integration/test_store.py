"""The Redis scripts against a real server: claims, fencing, TTLs, epochs, exactly-once events."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from perseus.keys import epoch_key, retention_min_id, status_key, stream_key
from perseus.store.redis_store import RedisStore

pytestmark = pytest.mark.integration


def payload(instance_id: str, epoch: int) -> dict[str, object]:
    return {"instanceId": instance_id, "epoch": epoch, "hostname": "h", "connectionState": "idle"}


def fresh_id() -> int:
    return 100_000 + uuid.uuid4().int % 800_000


async def test_claim_conflict_self_and_ttl(store: RedisStore) -> None:
    ex = fresh_id()
    first = await store.claim(ex, payload("a", 1), 3000)
    assert first.outcome == "claimed"
    again = await store.claim(ex, payload("a", 1), 3000)  # a retried activity: still ours
    assert again.outcome == "self"
    other = await store.claim(ex, payload("b", 2), 3000)
    assert (
        other.outcome == "held"
        and json.loads(str(await store.client.get(status_key(ex))))["instanceId"] == "a"
        and 0 < other.pttl_ms <= 3000
    )
    assert 0 < await store.client.pttl(status_key(ex)) <= 3000


async def test_ghost_key_without_ttl_is_replaced(store: RedisStore) -> None:
    ex = fresh_id()
    await store.client.set(status_key(ex), json.dumps(payload("ghost", 0)))  # Livermore's KEEPTTL bug
    reply = await store.claim(ex, payload("a", 1), 3000)
    assert reply.outcome == "claimed"
    assert 0 < await store.client.pttl(status_key(ex)) <= 3000


async def test_stale_holder_writes_are_refused(store: RedisStore) -> None:
    ex = fresh_id()
    await store.claim(ex, payload("a", 1), 3000)
    stale = await store.fenced(ex, "a", 0, mode="merge", patch={"connectionState": "active"})
    assert stale.outcome == "fenced"
    wrong = await store.fenced(ex, "b", 1, mode="renew", patch={}, ttl_ms=9000)
    assert wrong.outcome == "fenced"
    assert (await store.fenced(ex, "a", 0, mode="delete")).outcome == "fenced"
    doc = json.loads(str(await store.client.get(status_key(ex))))
    assert doc["connectionState"] == "idle"
    assert 0 < await store.client.pttl(status_key(ex)) <= 3000


async def test_merge_keeps_ttl_renew_resets_it_delete_releases(store: RedisStore) -> None:
    ex = fresh_id()
    await store.claim(ex, payload("a", 1), 5000)
    await store.client.pexpire(status_key(ex), 1000)
    merged = await store.fenced(
        ex, "a", 1, mode="merge", patch={"connectionState": "active", "lastError": None}
    )
    assert merged.outcome == "ok"
    assert 0 < await store.client.pttl(status_key(ex)) <= 1000  # merge never extends the claim
    doc = json.loads(str(await store.client.get(status_key(ex))))
    assert doc["connectionState"] == "active" and doc["lastError"] is None and doc["epoch"] == 1
    assert (
        await store.fenced(ex, "a", 1, mode="renew", patch={"lastHeartbeat": "x"}, ttl_ms=5000)
    ).outcome == "ok"
    assert 1000 < await store.client.pttl(status_key(ex)) <= 5000
    assert (await store.fenced(ex, "a", 1, mode="delete")).outcome == "ok"
    assert await store.client.exists(status_key(ex)) == 0
    assert (await store.fenced(ex, "a", 1, mode="merge", patch={"x": 1})).outcome == "missing"
    assert await store.client.exists(status_key(ex)) == 0  # no ghost key created


async def test_epochs_increase_and_respect_the_floor(store: RedisStore) -> None:
    ex = fresh_id()
    assert [await store.next_epoch(ex, 0) for _ in range(3)] == [1, 2, 3]
    await store.client.delete(epoch_key(ex))  # Redis lost its data; the workflow remembers 3
    assert await store.next_epoch(ex, 3) == 4
    assert await store.next_epoch(ex, 0) == 5
    assert await store.client.ttl(epoch_key(ex)) == -1  # the counter never expires


async def test_event_written_once_per_event_id(store: RedisStore) -> None:
    name = f"st_{uuid.uuid4().hex[:8]}"
    min_id = retention_min_id(datetime.now(UTC))
    first = await store.append_event(name, "ev-1", min_id, {"event": "error", "eventId": "ev-1"})
    second = await store.append_event(name, "ev-1", min_id, {"event": "error", "eventId": "ev-1"})
    third = await store.append_event(name, "ev-2", min_id, {"event": "error", "eventId": "ev-2"})
    assert first == second != third
    assert await store.client.xlen(stream_key(name)) == 2


async def test_entries_older_than_90_days_are_trimmed_by_the_next_write(store: RedisStore) -> None:
    name = f"st_{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    old_ms = int((now - timedelta(days=91)).timestamp() * 1000)
    for seq in range(150):  # enough entries for a whole radix node, so the approximate trim applies
        await store.client.xadd(stream_key(name), {"event": "old"}, id=f"{old_ms}-{seq}")
    await store.append_event(
        name, "new", retention_min_id(now), {"event": "state_transition", "eventId": "new"}
    )
    left = await store.events(name)
    assert [f["event"] for _, f in left].count("old") < 150
    assert left[0][1]["eventId"] == "new"


async def test_a_claim_takes_over_a_key_left_unrenewed_past_its_holders_deadline_only_when_asked(
    store: RedisStore,
) -> None:
    """The holder's own ttlMs and heartbeatIntervalMs, and Redis's clock, tell a lapsed key (unrenewed
    for more than 2.1 of its intervals) from a live one; only a claim that asks takes one over."""

    stamp = "2026-01-01T00:00:00.000Z"
    dead = {
        **payload("dead", 3),
        **{"exchangeId": 1, "exchangeName": "x", "lastHeartbeat": stamp, "lastStateChange": stamp},
        **{"registeredAt": stamp, "ttlMs": 3000, "heartbeatIntervalMs": 1000},
    }

    async def holding(doc: dict[str, object] | str, pttl_ms: int) -> int:
        ex = fresh_id()
        raw = doc if isinstance(doc, str) else json.dumps(doc)
        await store.client.set(status_key(ex), raw, px=pttl_ms)
        return ex

    lapsed = await holding(dead, 850)  # renewed 2.15 s ago: past 2 s + the 0.1 s margin
    assert (await store.claim(lapsed, payload("b", 4), 3000)).outcome == "held"  # not asked: waits
    taken = await store.claim(lapsed, payload("b", 4), 3000, take_lapsed_after=2.1)
    assert taken.outcome == "taken"
    assert taken.previous is not None and taken.previous.record is not None
    assert taken.previous.record.instance_id == "dead" and taken.previous.record.epoch == 3
    assert json.loads(str(await store.client.get(status_key(lapsed))))["instanceId"] == "b"
    assert 2900 < await store.client.pttl(status_key(lapsed)) <= 3000  # a fresh TTL of its own

    # Still within the margin, a record that does not say its interval (Livermore's), one that
    # cannot be read: held, whatever the claimant asks.
    for doc, pttl_ms in ((dead, 950), (payload("livermore", 0), 100), ("{not json", 100)):
        ex = await holding(doc, pttl_ms)
        reply = await store.claim(ex, payload("c", 5), 3000, take_lapsed_after=2.1)
        assert reply.outcome == "held", doc
        assert '"c"' not in str(await store.client.get(status_key(ex)))


async def test_a_claim_over_draws_the_line_from_the_deadline_the_holders_record_declares(
    store: RedisStore,
) -> None:
    """A record that declares its holder's renew deadline (``renewDeadlineMs``, this release's 1.7
    intervals) is taken over past that plus the margin — 1.8 s at 1 s, not 2.1 — and not before;
    the same record without the field (an earlier release's holder, which acts for 2 intervals)
    keeps the 2.1-interval line."""
    stamp = "2026-01-01T00:00:00.000Z"
    base = {
        **payload("dead", 3),
        **{"exchangeId": 1, "exchangeName": "x", "lastHeartbeat": stamp, "lastStateChange": stamp},
        **{"registeredAt": stamp, "ttlMs": 3000, "heartbeatIntervalMs": 1000},
    }
    declared = {**base, "renewDeadlineMs": 1700}

    async def claim_over(doc: dict[str, object], renewed_ms_ago: int) -> str:
        ex = fresh_id()
        await store.client.set(status_key(ex), json.dumps(doc), px=3000 - renewed_ms_ago)
        reply = await store.claim(ex, payload("b", 4), 3000, take_lapsed_after=2.1, declared_margin=0.1)
        return reply.outcome

    assert await claim_over(declared, 1850) == "taken"  # past 1.7 s + 0.1 s
    assert await claim_over(declared, 1750) == "held"  # past the deadline, within the margin
    assert await claim_over(base, 1850) == "held"  # an earlier release's holder may still act
    assert await claim_over(base, 2150) == "taken"
    assert await claim_over({**base, "renewDeadlineMs": None}, 1850) == "held"  # says nothing


async def test_reestablish_writes_the_same_claim_back_only_into_an_absent_key(store: RedisStore) -> None:
    """The failsafe's invariant 7: an absent key is written back with the same instanceId and epoch
    and the counter raised to it; a key held by this claim is left as it is; anyone else's is a
    fencing answer and is not touched."""
    ex = fresh_id()
    record = {**payload("a", 7), "connectionState": "active"}
    back = await store.reestablish(ex, record, 3000)  # Redis came back empty: no key, no counter
    assert back.outcome == "ok" and back.raw is not None and json.loads(back.raw) == record
    assert json.loads(str(await store.client.get(status_key(ex)))) == record
    assert 0 < await store.client.pttl(status_key(ex)) <= 3000
    assert await store.epoch(ex) == 7
    assert await store.next_epoch(ex, 0) == 8  # the next claim's epoch is above the held one

    await store.reestablish(ex, record, 3000)  # ours already: unchanged, still ok
    assert (await store.reestablish(ex, record, 3000)).outcome == "ok"
    assert await store.epoch(ex) == 8  # never lowered

    other = fresh_id()
    await store.claim(other, payload("b", 9), 3000)
    fenced = await store.reestablish(other, {**payload("a", 7)}, 3000)
    assert fenced.outcome == "fenced" and fenced.raw is not None
    assert json.loads(str(await store.client.get(status_key(other))))["instanceId"] == "b"
