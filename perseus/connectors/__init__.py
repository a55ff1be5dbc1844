"""Market-data connectors: what an instance runs while it holds its exchange's claim (the interface
and registry, the simulated and the process connector, the exec allow-list).

May import the core's state machine and decisions and the shared models, keys, errors, timing and
redact; never the store, the host's keeper, the client side, the CLI or the API.
"""
