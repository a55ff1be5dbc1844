"""The ``perseus`` command line."""
