"""Publish: `ray job submit --working-dir . -- python -m jobs.publish --config configs/cluster.yaml`.

Spectrum (the trained model over every embedding) + store (LanceDB tables, index, a new version). Readers keep
the previous version until the new one is complete.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jobs._common import run_job


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("publish", __doc__.splitlines()[0], ["publish"], argv)


if __name__ == "__main__":
    sys.exit(main())
