"""The activities as the instance workflow calls them.

One stub per activity the workflow runs: the registered name and the exact request and result types
of the implementation in ``activities/``, and nothing else. The workflow passes these functions to
``workflow.execute_activity`` / ``start_activity`` / ``execute_local_activity``, so the type checker
sees each call's argument and result, and the SDK decodes each result into the annotated model — no
activity named by a string, no ``result_type`` passed by hand.

The implementations cannot be imported here: they pull in Redis, PostgreSQL and HTTP drivers, which a
workflow must never load. ``tests/unit/test_activity_calls.py`` proves that every stub matches the
activity the worker registers under its name (parameter and return types), and that every activity
the worker registers has a stub. The names are part of recorded histories: never rename one.

Queues: *shared* is ``perseus-shared`` (any worker serving it); *host* is ``perseus-host-{host}``,
served only by the worker on the instance's own host (the workflow sets ``task_queue`` for those).
"""

from __future__ import annotations

from temporalio import activity

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

# --- shared queue: the catalog (activities/catalog.py) -------------------------------------------


@activity.defn(name="resolve_instance")
async def resolve_instance(req: ResolveRequest) -> Resolved:
    """Shared queue. The active exchange by name or id, and the admin by e-mail (PostgreSQL)."""
    raise NotImplementedError


# --- shared queue: presence (activities/presence.py) ---------------------------------------------


@activity.defn(name="host_polled")
async def host_polled(req: IdentityRequest) -> HostPresence:
    """Shared queue. Whether a worker polled ``req.host``'s queue recently (busy, not missing)."""
    raise NotImplementedError


# --- shared queue: the registry (activities/registry.py) -----------------------------------------


@activity.defn(name="record")
async def record(req: RecordRequest) -> Recorded:
    """Shared queue, as a local activity. A transition's status merge and its event in one step."""
    raise NotImplementedError


@activity.defn(name="release_claim")
async def release_claim(req: ReleaseRequest) -> PatchResult:
    """Shared queue. Delete the status key if it is still ours."""
    raise NotImplementedError


@activity.defn(name="put_standby")
async def put_standby(record: StandbyRecord) -> None:
    """Shared queue. Make a standby visible: its TTL'd record, listed in the exchange's index."""
    raise NotImplementedError


@activity.defn(name="list_standbys")
async def list_standbys(req: StandbyQuery) -> StandbyList:
    """Shared queue. Live standbys of an exchange, highest priority first."""
    raise NotImplementedError


@activity.defn(name="drop_standby")
async def drop_standby(req: DropStandbyRequest) -> None:
    """Shared queue. Remove a standby's record and its index entry."""
    raise NotImplementedError


@activity.defn(name="probe_claim")
async def probe_claim(req: ClaimProbeRequest) -> ClaimProbe:
    """Shared queue. Whether the status key still holds our claim, and how long ago it was renewed."""
    raise NotImplementedError


# --- shared queue: notifications (activities/notify.py) ------------------------------------------


@activity.defn(name="notify_event")
async def notify_event(req: NotifyRequest) -> str:
    """Shared queue. Deliver one event's notification (Discord); returns a short outcome."""
    raise NotImplementedError


# --- host queue: identity and the lease (activities/host.py) -------------------------------------


@activity.defn(name="detect_identity")
async def detect_identity(req: IdentityRequest) -> Identity:
    """Host queue. Hostname and public IP of the host; also asks whether a host's worker answers."""
    raise NotImplementedError


@activity.defn(name="claim_and_hold")
async def claim_and_hold(req: HostClaimRequest) -> ClaimResult:
    """Host queue. Claim the exchange and hand the claim to the host's keeper, which renews it."""
    raise NotImplementedError


@activity.defn(name="hold_lease")
async def hold_lease(req: LeaseRequest) -> LeaseOutcome:
    """Host queue. Attach to the keeper's renewals of our claim for one term, heartbeating."""
    raise NotImplementedError


@activity.defn(name="hold_standby")
async def hold_standby(req: StandbyLeaseRequest) -> StandbyOutcome:
    """Host queue. Attach to the renewals of our standby record; return when the exchange is vacant."""
    raise NotImplementedError


# --- host queue: the connector (activities/host.py) ----------------------------------------------


@activity.defn(name="connector_prepare")
async def connector_prepare(req: ConnectorRequest) -> ConnectorReport:
    """Host queue. Create the connector and load the exchange's active symbols."""
    raise NotImplementedError


@activity.defn(name="connector_warm_up")
async def connector_warm_up(req: ConnectorRequest) -> ConnectorReport:
    """Host queue. Warm the prepared connector up."""
    raise NotImplementedError


@activity.defn(name="connector_connect")
async def connector_connect(req: ConnectorRequest) -> ConnectorReport:
    """Host queue. Connect the warmed connector: it acts for the exchange from here on."""
    raise NotImplementedError


@activity.defn(name="connector_activate")
async def connector_activate(req: ConnectorRequest) -> ConnectorReport:
    """Host queue. Promote the host's warm standby connector under the claim just taken."""
    raise NotImplementedError


@activity.defn(name="connector_deactivate")
async def connector_deactivate(req: ConnectorRequest) -> ConnectorReport:
    """Host queue. Demote the active connector to a warm standby (it keeps running)."""
    raise NotImplementedError


@activity.defn(name="connector_disconnect")
async def connector_disconnect(req: ConnectorRequest) -> ConnectorReport:
    """Host queue. Stop the connector (idempotent)."""
    raise NotImplementedError


@activity.defn(name="connector_check")
async def connector_check(req: ConnectorRequest) -> ConnectorReport:
    """Host queue. Whether the host still runs the connector, and whether it is warm."""
    raise NotImplementedError


@activity.defn(name="connector_preflight")
async def connector_preflight(req: ConnectorRequest) -> ConnectorPreflight:
    """Host queue (a handoff's target). Whether the connector could start on that host now."""
    raise NotImplementedError


@activity.defn(name="failsafe_enrol")
async def failsafe_enrol(req: EnrolRequest) -> RosterAnswer:
    """Host queue. Enrol in the exchange's failsafe roster; the host binds itself if others are in it."""
    raise NotImplementedError


@activity.defn(name="failsafe_grant")
async def failsafe_grant(req: GrantRequest) -> PromiseAnswer:
    """Host queue. Probe Redis, decide whether to promise not to claim, record the bound first."""
    raise NotImplementedError
