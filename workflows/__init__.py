"""Workflows: durable orchestration only. No I/O, no clock, no drivers (see docs/design.md)."""
