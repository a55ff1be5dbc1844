"""Names shared by every part of Perseus (pure; no I/O); the timing rules are perseus.timing.

Redis key names are the wire contract with Livermore v6 (DESIGN §2.1). Each Redis command Perseus
issues touches exactly one of these keys, so everything works on a Redis Cluster.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

SHARED_TASK_QUEUE = "perseus"
RETENTION = timedelta(days=90)

#: What a host and an exchange name may be (also the workflow input's field constraints).
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
EXCHANGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
_HOST_RE = re.compile(HOST_PATTERN)
_EXCHANGE_RE = re.compile(EXCHANGE_PATTERN)


def idempotency_key(caller: str, request_key: str) -> str:
    """Where the API keeps a write request's answer by its ``Idempotency-Key`` (per calling key, so
    two callers never share one); the header's value is hashed: it is the caller's text."""
    digest = hashlib.sha256(request_key.encode()).hexdigest()
    return f"perseus:idempotency:{caller}:{digest}"


def status_key(exchange_id: int) -> str:
    return f"exchange:{exchange_id}:status"


def epoch_key(exchange_id: int) -> str:
    return f"exchange:{exchange_id}:epoch"


def standby_key(exchange_id: int, instance_id: str) -> str:
    return f"exchange:{exchange_id}:standby:{instance_id}"


def standby_index_key(exchange_id: int) -> str:
    """A sorted set of the exchange's standby instanceIds by priority: standbys are found
    without SCAN; each member's own key (with its TTL) says whether it is still alive."""
    return f"exchange:{exchange_id}:standbys"


def pause_key(exchange_id: int) -> str:
    """Maintenance mode (perseus.core.pause): a record whose TTL is the pause's deadline."""
    return f"exchange:{exchange_id}:pause"


def handoff_key(exchange_id: int) -> str:
    """A planned handoff's reservation (perseus.core.decisions.held_back_by_handoff): the host the
    exchange was just handed to, set before the release and expiring by itself; only Perseus reads
    it (a Livermore v6 standby races for the vacancy as it always did)."""
    return f"exchange:{exchange_id}:handoff"


#: Live host workers: a sorted set of ``{host}|{worker id}`` scored by when each record expires (ms).
WORKERS_INDEX = "perseus:workers"


def worker_key(host: str, worker_id: str) -> str:
    """One worker process's announcement (perseus/host/workers.py), with a TTL."""
    return f"perseus:worker:{host}:{worker_id}"


def stream_key(exchange_name: str) -> str:
    return f"logs:network:{exchange_name.lower()}"


def host_task_queue(host: str) -> str:
    return f"perseus-host-{host}"


def workflow_id(exchange_name: str, host: str) -> str:
    return f"instance-{exchange_name.lower()}-{host}"


def valid_host(host: str) -> bool:
    """A host name usable in task queue names and workflow ids."""
    return bool(_HOST_RE.match(host))


def valid_exchange(name: str) -> bool:
    """An exchange name or id as a user may type it: letters, digits, '_' and '-' (catalog names are
    lower case; the match is case-insensitive). Anything else never reaches a query."""
    return bool(_EXCHANGE_RE.match(name))


def list_query_value(value: str) -> str:
    """``value`` as a quoted string literal of Temporal's list-filter language (escapes ``\\``
    and ``'``); values are validated names already, this is the second line of defence."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and ``Z``: what JavaScript's ``toISOString()`` writes."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def retention_min_id(now: datetime) -> str:
    """The ``MINID`` bound for stream trimming: entries older than 90 days go."""
    return f"{int((now - RETENTION).timestamp() * 1000)}-0"


#: The failsafe's roster of an exchange (``workflows/roster.py``): every instance that could take
#: it, enrolled by their workflows. Its type and message names, as the keeper, the enrolment and an
#: instance's end address them (the roster is checked against them by tests/unit/test_failsafe_wiring.py).
ROSTER_WORKFLOW = "RosterWorkflow"
ROSTER_ENROL = "enrol"
ROSTER_READ = "roster"
ROSTER_LEAVE = "leave"
#: A read for the status views (the holder's rounds read with ROSTER_READ, an update).
ROSTER_MEMBERS = "members"


def roster_workflow_id(exchange: str) -> str:
    return f"roster-{exchange}"
