"""Embed the catalog: `ray job submit --working-dir . -- python -m jobs.embed --config configs/cluster.yaml`.

Runs ingest first: embedding reads the normalised catalog, and re-reading the source is cheap next to encoding it.
With embed.incremental (the default) only movies whose content hash changed are encoded again.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jobs._common import run_job


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("embed", __doc__.splitlines()[0], ["ingest", "embed"], argv)


if __name__ == "__main__":
    sys.exit(main())
