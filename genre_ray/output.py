"""What a command prints: our own lines and errors on the terminal, everyone's messages in the run's log file.

No Ray here: the queries (`similar`, `for-user`) configure their output too, and should not pay a second of imports
for a Ray they never start. `runtime` applies these settings to Ray when it starts it.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

# Loggers Ray configures with their own console handlers (propagate=False), so the root logger never sees them.
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")


@dataclass
class OutputSettings:
    """How much of Ray reaches the terminal. Quiet (the default): worker logs stay in Ray's session logs, Ray's
    own driver-side loggers write to the log file, Ray Data draws one total progress bar. Verbose: all of it."""

    verbose: bool = False
    log_file: Path | None = None
    file_handler: logging.Handler | None = None


OUTPUT = OutputSettings()
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _OwnRecords(logging.Filter):
    """The terminal shows this project's own log records from `level` up, anyone's errors and Ray Data's
    total-progress line; the rest goes to the file."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        self.last_progress = -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == _DATA_PROGRESS_LOGGER:
            return self._progress_line(record)
        own = record.name.split(".")[0] in ("genre_ray", "jobs")
        return record.levelno >= logging.ERROR or (own and record.levelno >= self.level)

    def _progress_line(self, record: logging.LogRecord) -> bool:
        """Outside a terminal Ray Data logs its progress as 4-line blocks every 10 s. Keep the one line that says
        how far it is ("Total Progress: 1200/4803 ..."), at most once a minute, and never "0/?" (a dataset whose
        sink reports rows only at the end): an hours-long nightly's job log stays short but still shows it is alive."""
        msg = str(record.getMessage())
        if not msg.startswith("Total Progress") or msg.startswith(_NO_PROGRESS):
            return False
        if record.created - self.last_progress < PROGRESS_LOG_INTERVAL_S:
            return False
        self.last_progress = record.created
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (pytest's capture, a redirected stream), not to
    the one that was current when the handler was made."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


_DATA_PROGRESS_LOGGER = "ray.data._internal.progress.logging_progress"
_NO_PROGRESS = "Total Progress: 0/?"
PROGRESS_LOG_INTERVAL_S = 60.0


def configure_output(verbose: bool, log_file: Path | None = None, console_level: int = logging.WARNING) -> None:
    """Logging for a command: everything at INFO (DEBUG if verbose) into `log_file`; on stderr, our own records
    from `console_level` up plus any error, or every record when verbose. Call before init_ray."""
    OUTPUT.verbose = verbose
    OUTPUT.log_file = log_file
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = _StderrHandler()
    console.setFormatter(logging.Formatter(LOG_FORMAT))
    if verbose:
        console.setLevel(logging.DEBUG)
    else:
        console.setLevel(logging.INFO)
        console.addFilter(_OwnRecords(console_level))
    root.addHandler(console)
    OUTPUT.file_handler = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.file_handler = logging.FileHandler(log_file, encoding="utf-8")
        OUTPUT.file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(OUTPUT.file_handler)
    # Library warnings (deprecations, tracer notes) belong in the log file, not between progress bars.
    logging.captureWarnings(not verbose)


def route_ray_loggers() -> None:
    """Ray's own INFO/WARNING chatter -> the log file (or only Ray's session logs), not the terminal. Ray gives
    its loggers their own console handlers and propagate=False, so this runs after ray.init configured them."""
    if OUTPUT.verbose:
        return
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        # Through the root logger: the file gets everything, the terminal only errors (the _OwnRecords filter).
        logger.propagate = True
