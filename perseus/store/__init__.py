"""Drivers: the only modules that import redis and psycopg. Both take plain URLs, not Settings."""
