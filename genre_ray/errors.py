"""Errors that mean "the input cannot give a useful result", as opposed to bugs.

The CLI and the job entry points print their message (which says what to fix) instead of a traceback.
"""

from __future__ import annotations


class PreconditionError(ValueError):
    """A stage's input is valid but cannot produce anything useful (e.g. no labelled movies to train on)."""


class RayConnectError(RuntimeError):
    """ray.init could not connect; the message says what to set."""


class ModelError(RuntimeError):
    """A model directory that cannot be served: missing, torn by a crash, or weights that do not match."""
