"""The nightly job: `ray job submit --working-dir . -- python -m jobs.nightly --config configs/cluster.yaml`.

ingest -> embed (only changed movies) -> train (only when there is no model yet, or with --retrain) -> publish.
Retraining moves every vector, so the nightly does not do it unless asked.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from genre_ray.pipeline import nightly_plan
from jobs._common import build_parser, execute


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("nightly", __doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="train a new model even if one is published")
    args = parser.parse_args(argv)
    return execute(args, nightly_plan(args.retrain))


if __name__ == "__main__":
    sys.exit(main())
