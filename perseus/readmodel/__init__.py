"""The read model: what the API, the CLI and the page show — status keys judged on the server's
clock (``network``) and the activity log's read side, uptime and the state timeline (``log``).

Reads only: may import the store, ``perseus.core`` (decisions, lifecycle, pause), the shared
models, keys and timing; never the client side, the host's keeper, the CLI or the API.
"""
