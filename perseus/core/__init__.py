"""The instance's decision core: pure procedures that yield actions (see ``procedures.py``)."""
