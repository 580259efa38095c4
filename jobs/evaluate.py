"""Evaluate: `ray job submit --working-dir . -- python -m jobs.evaluate --config configs/cluster.yaml`.

Metrics and the report (reports/ in the workdir) against the published store.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jobs._common import run_job


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("evaluate", __doc__.splitlines()[0], ["evaluate"], argv)


if __name__ == "__main__":
    sys.exit(main())
