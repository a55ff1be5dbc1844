"""The activities the core runs, each by its registered name and with the request and result types
of its implementation: a :class:`~perseus.core.actions.Call` of one is answered with its result type.

``workflows/calls.py`` has a stub of each, of the same name and types, and
``tests/unit/test_activity_calls.py`` holds the three together. The names are in recorded histories:
never rename one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from perseus.models import (
    ClaimProbe,
    ClaimProbeRequest,
    ClaimResult,
    ConnectorPreflight,
    ConnectorReport,
    ConnectorRequest,
    DropStandbyRequest,
    EnrolRequest,
    GrantRequest,
    HostClaimRequest,
    HostPresence,
    Identity,
    IdentityRequest,
    LeaseOutcome,
    LeaseRequest,
    NotifyRequest,
    PatchResult,
    PromiseAnswer,
    Recorded,
    RecordRequest,
    ReleaseRequest,
    Resolved,
    ResolveRequest,
    RosterAnswer,
    StandbyLeaseRequest,
    StandbyList,
    StandbyOutcome,
    StandbyQuery,
    StandbyRecord,
)

Q = TypeVar("Q", bound=BaseModel)
R = TypeVar("R")


@dataclass(frozen=True)
class ActivityRef(Generic[Q, R]):
    """An activity the core runs: its registered name, and the request and result types of its
    implementation (``workflows/calls.py`` has a stub of the same name and types;
    ``tests/unit/test_activity_calls.py`` holds the three together). The types make a
    :class:`Call`'s answer typed: a procedure gets its activity's result type, not ``Any``."""

    value: str
    request: type[Q]
    result: type[R]

    def __str__(self) -> str:
        return self.value


class Activity:
    """The activities the core runs, by their registered names (never rename one: they are in
    recorded histories)."""

    RESOLVE_INSTANCE = ActivityRef("resolve_instance", ResolveRequest, Resolved)
    HOST_POLLED = ActivityRef("host_polled", IdentityRequest, HostPresence)
    CLAIM_AND_HOLD = ActivityRef("claim_and_hold", HostClaimRequest, ClaimResult)
    PROBE_CLAIM = ActivityRef("probe_claim", ClaimProbeRequest, ClaimProbe)
    RELEASE_CLAIM = ActivityRef("release_claim", ReleaseRequest, PatchResult)
    RECORD = ActivityRef("record", RecordRequest, Recorded)
    PUT_STANDBY = ActivityRef("put_standby", StandbyRecord, type(None))
    DROP_STANDBY = ActivityRef("drop_standby", DropStandbyRequest, type(None))
    LIST_STANDBYS = ActivityRef("list_standbys", StandbyQuery, StandbyList)
    NOTIFY_EVENT = ActivityRef("notify_event", NotifyRequest, str)
    DETECT_IDENTITY = ActivityRef("detect_identity", IdentityRequest, Identity)
    HOLD_LEASE = ActivityRef("hold_lease", LeaseRequest, LeaseOutcome)
    HOLD_STANDBY = ActivityRef("hold_standby", StandbyLeaseRequest, StandbyOutcome)
    CONNECTOR_PREPARE = ActivityRef("connector_prepare", ConnectorRequest, ConnectorReport)
    CONNECTOR_WARM_UP = ActivityRef("connector_warm_up", ConnectorRequest, ConnectorReport)
    CONNECTOR_CONNECT = ActivityRef("connector_connect", ConnectorRequest, ConnectorReport)
    CONNECTOR_DISCONNECT = ActivityRef("connector_disconnect", ConnectorRequest, ConnectorReport)
    CONNECTOR_CHECK = ActivityRef("connector_check", ConnectorRequest, ConnectorReport)
    CONNECTOR_ACTIVATE = ActivityRef("connector_activate", ConnectorRequest, ConnectorReport)
    CONNECTOR_DEACTIVATE = ActivityRef("connector_deactivate", ConnectorRequest, ConnectorReport)
    CONNECTOR_PREFLIGHT = ActivityRef("connector_preflight", ConnectorRequest, ConnectorPreflight)
    # The failsafe (docs/design.md, "Failsafe"): enrol in the exchange's roster, grant a promise.
    FAILSAFE_ENROL = ActivityRef("failsafe_enrol", EnrolRequest, RosterAnswer)
    FAILSAFE_GRANT = ActivityRef("failsafe_grant", GrantRequest, PromiseAnswer)


#: Every activity the core names.
ACTIVITIES: tuple[ActivityRef[Any, Any], ...] = tuple(
    v for v in vars(Activity).values() if isinstance(v, ActivityRef)
)
