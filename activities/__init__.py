"""Activities: the I/O edge of the lifecycle. Each class receives its drivers in ``__init__``.

* :mod:`activities.catalog`  — PostgreSQL lookups (shared queue)
* :mod:`activities.registry` — Redis claims, fenced status writes, stream events (shared queue)
* :mod:`activities.host`     — identity, the lease loop and connector control (the host's own queue)
"""
