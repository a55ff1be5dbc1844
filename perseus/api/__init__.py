"""The HTTP API and the network page (``perseus api``): the read routes, the write routes with their
scopes and ``Idempotency-Key``, server-sent events, the codec endpoint; its lifespan is the API's
composition root.

May import the read model, the client side, the fleet, the host workers' records, the store, the
shared modules (models, keys, errors, config, temporal, codec, metrics, tracing, redact) and the
core's decisions; nothing imports it but the CLI and the dev stack.
"""
