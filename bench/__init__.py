"""Benchmarks (not tests): ``make bench`` runs them against servers they start themselves."""
