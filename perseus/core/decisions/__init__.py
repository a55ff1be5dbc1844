"""What an instance workflow decides, as plain functions over values: no I/O, no clock, no Temporal.

:mod:`perseus.core.lifecycle` says which transitions a command makes; this package decides everything
else an instance decides (``loop``, ``claims``, ``heartbeat``, ``records``, ``standbys``; each name
is re-exported here). The workflow gathers the facts (its own memory, what an activity reported, what
Redis proves), asks here, and carries out the answer. The invariants these functions keep:

1. **A claim is freed early only when Redis proves its holder stopped.** A heartbeat timeout proves
   nothing about Redis: the host may have lost only Temporal. A claim unrenewed for longer than the
   renew deadline (as its record declares it, or 2 intervals, plus a margin) is one whose
   connector its keeper or watchdog has already stopped, so releasing it — or a standby claiming
   over it — cannot put two connectors on one exchange.
2. **A lost claim outranks everything.** The loop handles a finished lease before the host going
   down, promotions, commands or continue-as-new, so nothing is done on the strength of a claim
   that is gone.
3. **Refusals happen before history.** A command is judged against the state it will meet (after
   the queued ones); a standby accepts only shutdown; nothing is accepted after shutdown or once
   the instance ended; a handoff needs an idle queue and a target other than itself.
4. **After a Redis outage the holder goes first.** A standby that finds the exchange vacant right
   after Redis was away gives the holder a head start (higher priorities go before lower ones
   in any case), so a healthy holder is not replaced by a race.
5. **A warm standby acts only under a claim just taken.** Its connector runs before it may act;
   ``ACTIVATE <epoch>`` comes after the claim and nothing else has to. Whatever makes it doubtful
   (no warm connector known here, a warm-up still running) means a cold start, never a guess. A
   connector that does not act (a warm standby's, or one demoted by a handback) needs no claim.
"""

from __future__ import annotations

from perseus.core.decisions.claims import (
    LOSS_TYPES,
    HandoffLook,
    HostVerdict,
    LeaseVerdict,
    act_after_vacancy_s,
    handoff_reservation_s,
    handoff_target_look,
    held_back_by_handoff,
    holder_late,
    judge_claim,
    lapses_in_s,
    lease_verdict,
    past_renew_deadline,
    quick_retry_at,
    renewal_overdue,
    renewed_ago_s,
    stale_in,
    standby_step_s,
    takes_over_lapsed,
)
from perseus.core.decisions.heartbeat import (
    heartbeat_beats,
    heartbeat_beats_within,
    heartbeat_due,
    heartbeat_period_s,
    lease_heartbeat_timeout_s,
)
from perseus.core.decisions.loop import (
    InstanceFacts,
    LoopFacts,
    Step,
    next_step,
    refuse_command,
    refuse_handoff,
)
from perseus.core.decisions.records import RecordRoute, record_moves_to, record_starts
from perseus.core.decisions.standbys import (
    StartPath,
    backing_off,
    doubling_delay,
    handoff_demotes,
    head_start_s,
    holders_release,
    newest_first,
    release_goes_on_to,
    released_by_holder,
    restart_delay,
    runs_without_claim,
    seconds_until,
    standbys_ahead,
    start_path,
    target_not_ready,
    vacancy_delay,
    wake_order,
    warm_retry_delay,
    warm_up_standby,
)

__all__ = [
    "HandoffLook",
    "HostVerdict",
    "InstanceFacts",
    "LOSS_TYPES",
    "LeaseVerdict",
    "LoopFacts",
    "RecordRoute",
    "StartPath",
    "Step",
    "act_after_vacancy_s",
    "backing_off",
    "doubling_delay",
    "handoff_demotes",
    "handoff_reservation_s",
    "handoff_target_look",
    "held_back_by_handoff",
    "holder_late",
    "head_start_s",
    "heartbeat_beats",
    "heartbeat_beats_within",
    "heartbeat_due",
    "heartbeat_period_s",
    "holders_release",
    "record_moves_to",
    "record_starts",
    "judge_claim",
    "lapses_in_s",
    "lease_heartbeat_timeout_s",
    "lease_verdict",
    "next_step",
    "past_renew_deadline",
    "quick_retry_at",
    "refuse_command",
    "refuse_handoff",
    "release_goes_on_to",
    "released_by_holder",
    "renewal_overdue",
    "renewed_ago_s",
    "restart_delay",
    "runs_without_claim",
    "seconds_until",
    "stale_in",
    "standby_step_s",
    "standbys_ahead",
    "start_path",
    "takes_over_lapsed",
    "target_not_ready",
    "vacancy_delay",
    "newest_first",
    "wake_order",
    "warm_retry_delay",
    "warm_up_standby",
]
