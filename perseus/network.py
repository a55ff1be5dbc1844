"""The read side: what every exchange's status key says, judged on this server's clock.

One pipelined round trip reads all status keys (one GET + PTTL per key: cluster-safe); the list of
exchanges comes from PostgreSQL, never from SCAN/KEYS. A malformed value reads as offline with a
reason instead of failing the whole view.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydantic import BaseModel, ValidationError

from perseus.keys import parse_iso
from perseus.lifecycle import legacy_state
from perseus.models import Exchange, InstanceStatus, Wire
from perseus.store.db import Catalog
from perseus.store.redis_store import RedisStore

#: Heartbeat age colours (DESIGN §4): green below 10 s, yellow below 30 s, red from 30 s.
FRESH_S = 10.0
STALE_S = 30.0


class InstanceView(Wire):
    exchange_id: int
    exchange_name: str
    display_name: str
    online: bool
    status: InstanceStatus | None
    legacy_state: str | None = None
    ttl_ms: int | None = None
    heartbeat_age_s: float | None = None
    heartbeat: str | None = None  # fresh / late / stale
    late: bool = False
    offline_reason: str | None = None


def heartbeat_colour(age_s: float) -> str:
    return "fresh" if age_s < FRESH_S else "late" if age_s < STALE_S else "stale"


def judge(exchange: Exchange, raw: str | None, pttl_ms: int, now: datetime) -> InstanceView:
    """Pure: turn one status key's raw value into a view."""
    base = dict(exchange_id=exchange.id, exchange_name=exchange.name, display_name=exchange.display_name)
    if raw is None:
        return InstanceView(**base, online=False, status=None, offline_reason="no status key (not running)")
    try:
        status = InstanceStatus.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0][:160]
        return InstanceView(
            **base, online=False, status=None, offline_reason=f"malformed status record: {first}"
        )
    age = max(0.0, (now - parse_iso(status.last_heartbeat)).total_seconds())
    interval_s = status.heartbeat_interval_ms / 1000 if status.heartbeat_interval_ms else 15.0
    return InstanceView(
        **base,
        online=True,
        status=status,
        legacy_state=legacy_state(status.connection_state),
        ttl_ms=pttl_ms,
        heartbeat_age_s=round(age, 3),
        heartbeat=heartbeat_colour(age),
        late=age > 1.5 * interval_s,
    )


class StatusBoard(BaseModel):
    instances: list[InstanceView]
    server_time: datetime


async def read_board(store: RedisStore, catalog: Catalog, exchange: str | None = None) -> StatusBoard:
    """Every active exchange (or just one, resolved strictly) with its judged status."""
    exchanges = [await catalog.exchange(exchange)] if exchange else await catalog.exchanges(active_only=True)
    raws = await store.statuses([e.id for e in exchanges])
    now = datetime.now(UTC)
    return StatusBoard(
        instances=[judge(e, raw, pttl, now) for e, (raw, pttl) in zip(exchanges, raws, strict=True)],
        server_time=now,
    )
