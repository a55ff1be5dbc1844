"""The instance's decision core: pure procedures that yield actions, run by ``workflows/instance.py``.

::

    state.py     InstanceState — the instance's whole memory
    actions.py   what the core asks of the world, and the answers
    steps.py     InstanceSteps — the elementary steps: claim, release, transition, event, host step
    leases.py    LeaseProcedures — a lease that ended: re-attach, reclaim, restart, step aside, lost
    standbys.py  StandbyProcedures — a standby's watch, promotion (cold or warm), confirmation
    handoffs.py  HandoffProcedures — a planned handoff, and taking the exchange back
    loop.py      InstanceCore — registration, the main loop, commands; what signals and updates do
"""
