"""The read model: what the API, the CLI and the page show — status keys judged on the server's
clock (``network``), the activity log's read side, uptime and the state timeline (``log``), and the
fold that keeps the ledger up with what other writers put in the streams (``ledger_fold``).

Reads, and folds what it read: may import the store, metrics, ``perseus.core`` (decisions,
lifecycle, pause), the shared models, keys and timing; never the client side, the host's keeper,
the CLI or the API.
"""
