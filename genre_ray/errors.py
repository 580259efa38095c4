"""Errors a user can cause (bad input, a run's state), as opposed to bugs, and the exit status each one ends a
command with: the one table the CLI (`genre-ray`) and the job entry points (`jobs/`) both use.

| status | meaning | errors |
| --- | --- | --- |
| 0 | success | |
| 1 | the input or the run's state | CatalogError, TemplateError, PreconditionError, MovieNotFound, RayConnectError, |
|   | cannot give a result | ModelError, StorageError, StoreError, OSError (the message names the path) |
| 2 | bad usage | ConfigError, BadQuery (a config key, a query argument; argparse's own errors exit 2 too) |
| 3 | another writer holds the lease | LeaseError (nothing failed: a scheduler retries later) |

Anything else is a bug and keeps its traceback. Modules raise these classes (or subclasses) and may re-export
them where callers expect them (catalog.CatalogError, store.StoreError, config.ConfigError, ...); they are
defined only here, so this module imports nothing and costs a query nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LEASE_HELD = 3


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the file and the key."""


class BadQuery(ValueError):
    """A query argument the store cannot answer (e.g. a language it has no movie in); the message lists options."""


class CatalogError(ValueError):
    """A catalog input that cannot be used as a whole (missing path, unknown format, unusable header).

    A configuration problem, as opposed to a bad row, which becomes a reject and never stops the run.
    """


class TemplateError(ValueError):
    """A text.parts template that cannot render a document (an unknown field, a label leaked into the text)."""


class PreconditionError(ValueError):
    """A stage's input is valid but cannot produce anything useful (e.g. no labelled movies to train on)."""


class MovieNotFound(LookupError):
    """No movie with that id or title; `close` holds the served titles closest to it."""

    def __init__(self, message: str, close: Sequence[str] = ()):
        super().__init__(message)
        self.close = list(close)


class RayConnectError(RuntimeError):
    """ray.init could not connect; the message says what to set."""


class ModelError(RuntimeError):
    """A model directory that cannot be served: missing, torn by a crash, or weights that do not match."""


class StorageError(RuntimeError):
    """A location that cannot be used (missing bucket, denied permission, unreachable endpoint): names the URI."""


class StoreError(RuntimeError):
    """The served store's state does not allow the operation (no publish yet, a torn manifest, ...)."""


class LeaseError(StoreError):
    """Another writer holds the store: not a failed run, so commands exit with their own status (3)."""


# First match wins (LeaseError is a StoreError). OSError last: ours never subclass it, and an unreadable or
# missing file that no check above named still ends in a message with its path, not a traceback.
EXIT_CODES: tuple[tuple[tuple[type[BaseException], ...], int], ...] = (
    ((LeaseError,), EXIT_LEASE_HELD),
    ((ConfigError, BadQuery), EXIT_USAGE),
    (
        (
            CatalogError,
            TemplateError,
            PreconditionError,
            MovieNotFound,
            RayConnectError,
            ModelError,
            StorageError,
            StoreError,
            OSError,
        ),
        EXIT_FAILED,
    ),
)


def exit_code(err: BaseException) -> int | None:
    """The exit status for an error a user can cause, or None for a bug."""
    for types, code in EXIT_CODES:
        if isinstance(err, types):
            return code
    return None


def describe(err: BaseException) -> str:
    """The line a user reads: the error's own message, or for a bare OSError the path and what is wrong with it."""
    if isinstance(err, OSError) and err.filename is not None:
        paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
        return f"{paths}: {err.strerror or type(err).__name__}"
    # err.args[0]: a Ray task's error carries the original message there, without the remote traceback str() adds
    return str(err.args[0]) if err.args else str(err) or type(err).__name__


def report(err: BaseException) -> int | None:
    """Print `error: <message>` to stderr and return the exit status, or None (printing nothing) for a bug."""
    code = exit_code(err)
    if code is not None:
        print(f"error: {describe(err)}", file=sys.stderr)
    return code
