"""Scoring every method on one split: per-user HR@k / NDCG@k / recall@50 and each user's top-k list.

Users are scored `rows` at a time against the candidates, so memory is a few (rows, candidates) blocks. Every
method sees the same candidates with the same exclusions (the protocol's `seen`). Score methods get tie-aware
metrics (the expectation over a random order of equal scores, metrics.hit_and_ndcg_from_counts); list methods
(hybrids, MMR) are scored on the list they build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from genre_ray.evaluate.methods import Scorer, top_positions
from genre_ray.evaluate.protocols import Split
from genre_ray.metrics import hit_and_ndcg_from_counts

RECALL_AT = 50


class ListMethod(Protocol):
    def lists(self, blocks: dict[str, np.ndarray], candidates: np.ndarray, length: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Scored:
    """One method on one split: per user metrics and top-k list (item indices)."""

    hit: np.ndarray
    ndcg: np.ndarray
    recall: np.ndarray
    top: np.ndarray

    @staticmethod
    def concat(parts: list[Scored]) -> Scored:
        return Scored(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("hit", "ndcg", "recall", "top")))

    def subset(self, rows: np.ndarray) -> Scored:
        return Scored(self.hit[rows], self.ndcg[rows], self.recall[rows], self.top[rows])


def score_split(
    split: Split,
    candidates: np.ndarray,
    scorers: dict[str, Scorer],
    list_methods: dict[str, ListMethod] | None = None,
    k: int = 10,
    rows: int = 256,
) -> dict[str, Scored]:
    """Every method's metrics for the split's users among `candidates` (sorted item indices, targets included)."""
    candidates = np.asarray(candidates, dtype=np.int64)
    list_methods = list_methods or {}
    target_pos = np.searchsorted(candidates, split.target)
    if np.any(target_pos >= len(candidates)) or np.any(
        candidates[np.minimum(target_pos, len(candidates) - 1)] != split.target
    ):
        raise ValueError("a target is not among its own candidates")
    parts: dict[str, list[Scored]] = {name: [] for name in [*scorers, *list_methods]}
    for start in range(0, len(split), rows):
        users = np.arange(start, min(start + rows, len(split)))
        mask = _masked(split, users, candidates, target_pos[users])
        tpos = target_pos[users]
        blocks = {}
        for name, scorer in scorers.items():
            block = scorer(users)[:, candidates]
            block[mask] = -np.inf
            blocks[name] = block
            own = block[np.arange(len(users)), tpos][:, None]
            above, tied = (block > own).sum(axis=1), (block == own).sum(axis=1)
            at_k = hit_and_ndcg_from_counts(above, tied, k)
            recall = hit_and_ndcg_from_counts(above, tied, RECALL_AT).hit
            parts[name].append(Scored(at_k.hit, at_k.ndcg, recall, candidates[top_positions(block, k)]))
        for name, method in list_methods.items():
            lists = method.lists(blocks, candidates, RECALL_AT)
            parts[name].append(_from_list(lists, tpos, candidates, k))
    return {name: Scored.concat(p) for name, p in parts.items()}


def _masked(split: Split, users: np.ndarray, candidates: np.ndarray, tpos: np.ndarray) -> np.ndarray:
    mask = np.zeros((len(users), len(candidates)), dtype=bool)
    for row, u in enumerate(users):
        pos = np.searchsorted(candidates, split.seen[u])
        pos = pos[(pos < len(candidates)) & (candidates[np.minimum(pos, len(candidates) - 1)] == split.seen[u])]
        mask[row, pos] = True
    mask[np.arange(len(users)), tpos] = False
    return mask


def _from_list(lists: np.ndarray, tpos: np.ndarray, candidates: np.ndarray, k: int) -> Scored:
    found = lists == tpos[:, None]
    pos = np.where(found.any(axis=1), found.argmax(axis=1), lists.shape[1] + 1)
    hit = (pos < k).astype(np.float64)
    ndcg = np.where(pos < k, 1.0 / np.log2(pos + 2.0), 0.0)
    recall = (pos < RECALL_AT).astype(np.float64)
    return Scored(hit, ndcg, recall, candidates[lists[:, :k]])
