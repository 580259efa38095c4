"""Seeded train / val / test assignment by movie id.

A movie's split depends only on (its id, the seed), not on row order or catalog size, so training, evaluation and a
nightly run on a grown catalog all agree on which movies are held out. `test` is never seen in training
(not even for early stopping, which uses `val`).
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "val", "test"]

TEST_FRACTION = 0.2


def unit(movie_id: str, seed: int) -> float:
    """The id's seeded hash as a uniform number in [0, 1)."""
    digest = hashlib.blake2b(f"{seed}:{movie_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of(movie_id: str, seed: int, val_fraction: float, test_fraction: float = TEST_FRACTION) -> Split:
    return split_at(unit(movie_id, seed), val_fraction, test_fraction)


def split_at(u: float, val_fraction: float, test_fraction: float = TEST_FRACTION) -> Split:
    """test is [0, test_fraction), val the next val_fraction of the rest, train the remainder."""
    if u < test_fraction:
        return "test"
    if u < test_fraction + (1.0 - test_fraction) * val_fraction:
        return "val"
    return "train"
