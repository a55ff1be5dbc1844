"""The HTTP API and the network page (``perseus api``)."""
