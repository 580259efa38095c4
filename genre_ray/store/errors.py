"""The store's exceptions: problems with the store's state, reported as messages (the CLI never shows a traceback)."""

from __future__ import annotations


class StoreError(RuntimeError):
    pass


class LeaseError(StoreError):
    """Another writer holds the store: not a failed run, so the CLI exits with its own status (3)."""
