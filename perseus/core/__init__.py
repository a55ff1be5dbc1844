"""The instance's decision core: pure procedures that yield actions, run by ``workflows/instance.py``.

Parts, each with its own frozen slice of the memory (``state.py``) and its procedures::

    state.py        the slices, and what of them continues as new (CarriedState, serialised)
    actions.py      what the core asks of the world, and the answers; activities.py: the activities
    context.py      what every part is given: input, workflow id, clock, identity
    host.py         Host — a connector step on the instance's own host (no memory)
    record.py       Writer — fenced status merges and events (no memory)
    status.py       Status — the state, walked one checked transition at a time
    leases.py       Leases — the claim and the lease activity that keeps it
    recovery.py     Recovery — a lease that ended: re-attach, reclaim, restart, step aside, lost
    standbys.py     Standbys — the standby record, the exchange's standbys, waking the best one
    warm.py         Warm — a warm standby's connector: warm-up, activation, demotion, stop
    watch.py        Watch — a standby's watch that ended: a vacancy raced for, or the standby lost
    promotion.py    Promotion — taking over (cold or warm), a failed start, a handoff's confirmation
    handoffs.py     Handoffs — a planned handoff, and taking the exchange back (targets.py: the
                    target asked first)
    commands.py     Commands — the queue; execute.py: a command carried out
    registration.py Registration — resolve, identify, claim or become a standby
    parts.py        what the parts are given of each other
    answers.py      queries, validators, the loop's next step, the carried state
    loop.py         InstanceCore — the parts composed; the main loop routes work to them
    pause.py        the pause (maintenance mode) as pure decisions
    lifecycle.py    the state machine: states, commands and the transitions they make; Role
    decisions/      every other verdict as a plain function over values (loop and refusals,
                    claims, heartbeat, standbys), each invariant stated once

Every decision Perseus makes lives here; the keeper, the read model and the activities ask these
functions rather than deciding themselves. It may import the standard library, pydantic,
``perseus.models``, ``perseus.errors``, ``perseus.keys`` and ``perseus.timing`` — never Temporal, a
driver, ``os`` or ``time`` (``tests/unit/test_import_fences.py``).
"""
