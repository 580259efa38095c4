"""Train the genre classifier: `ray job submit --working-dir . -- python -m jobs.train --config configs/cluster.yaml`.

Reads the embeddings of an earlier embed run in the same workdir; writes checkpoints and the published model.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jobs._common import run_job


def main(argv: Sequence[str] | None = None) -> int:
    return run_job("train", __doc__.splitlines()[0], ["train"], argv)


if __name__ == "__main__":
    sys.exit(main())
