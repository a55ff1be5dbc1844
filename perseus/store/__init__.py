"""Drivers: the only modules that import redis and psycopg. Both take plain URLs, not Settings.

Owns every Redis key and SQL statement. May import the shared models, keys, errors and metrics, and
the record types it reads and writes (the fleet's placements, the grid's renewals, the host
workers' records); never the client side, the read model, the CLI or the API.
"""
