"""What runs on each host beside the workflows: the lease keeper (every claim and standby record of
the host renewed on the process's own timers), the renewal grid (renewals due together leave as
one pipeline), the watchdog (a process of its own that kills a connector past its deadline), the
worker's readiness and systemd notifications, the host workers' announcements and what Temporal
knows of their pollers.

Owns the data plane's timing on a host. May import the core's decisions, the shared models, keys,
timing, version, errors, metrics and tracing; never the fleet, the CLI, the API, the client side or
the read model.
"""
