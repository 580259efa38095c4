"""The three recommendation protocols (warm, cold items, long tail), their tuning on the validation slice, and the
metrics.json blocks they write.

Items here are rows of the rated sub-catalog (`World.catalog`): the movies that have at least one joined rating.
Every hyper-parameter (ALS, EASE, the blend weight, the hybrid's reserve, the content->CF input, the served
parameters) is picked on the validation slice (each user's second-to-last like, test targets removed), never on a
test target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np

from genre_ray.evaluate import methods as m
from genre_ray.evaluate.data import Catalog
from genre_ray.evaluate.protocols import (
    Split,
    cold_folds,
    head_items,
    train_counts,
    validation_split,
    without_items,
)
from genre_ray.evaluate.rank import ListMethod, Scored, score_split
from genre_ray.metrics import (
    aplt,
    catalog_coverage,
    intra_list_diversity,
    mean_with_ci,
    novelty,
    paired_difference,
)
from genre_ray.ranking import unit_rows

log = logging.getLogger(__name__)

ALS_GRID = tuple(m.ALSParams(f, r, a) for f, r, a in product((16, 32, 64), (0.05,), (2.0, 5.0, 10.0)))
EASE_GRID = (10.0, 25.0, 50.0, 100.0, 250.0)
BLEND_GRID = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11))
MMR_LAMBDAS = (0.5, 0.6, 0.7, 0.8, 0.9)
# ANN candidates per result the served re-ranker sees (ServingParams.pool_factor)
POOL_FACTORS = (2, 4, 8)
RESERVES = (0, 1, 2, 3)
CONTENT_INPUTS = ("spectrum", "text", "both")
# MMR becomes the served default only if it keeps this share of the validation HR@k without it
MMR_MIN_ACCURACY = 0.95
BASELINES = ("popularity", "popularity_lookahead_free", "tmdb_votes")


@dataclass(frozen=True)
class World:
    """The rated movies (item i = catalog row i) and what content methods know of them."""

    catalog: Catalog
    genres: np.ndarray
    votes_prior: np.ndarray
    like_threshold: float
    k: int
    seed: int
    rows: int

    @property
    def n_items(self) -> int:
        return len(self.catalog.movie_ids)

    def features(self, kind: str) -> np.ndarray:
        """Content features for content->CF: the spectrum, the raw text embedding or both, plus log votes."""
        logv = np.log1p(self.catalog.votes)[:, None]
        parts = {
            "spectrum": [self.catalog.spectrum],
            "text": [self.catalog.text],
            "both": [self.catalog.spectrum, self.catalog.text],
        }[kind]
        return np.concatenate([*(p.astype(np.float64) for p in parts), logv], axis=1)


@dataclass(frozen=True)
class Tuned:
    als: m.ALSParams
    ease: float
    blend: float
    validation: dict[str, Any]


@dataclass(frozen=True)
class ServedRerank:
    """The served ranking, scored exactly over the candidates: the top pool_factor * k by cosine, re-scored as
    (1 - w) cosine + w log-votes, then MMR (lambda) or a plain sort; what `Recommender._recommend` does."""

    cosine: str
    prior: np.ndarray
    unit: np.ndarray
    weight: float
    pool_factor: int
    mmr_lambda: float | None
    k: int

    def lists(self, blocks: dict[str, np.ndarray], candidates: np.ndarray, length: int) -> np.ndarray:
        cos = blocks[self.cosine]
        rerank = self.weight > 0 or self.mmr_lambda is not None
        ranked = m.top_positions(cos, max(length, self.pool_factor * self.k))
        if not rerank:
            return ranked[:, :length]
        out = np.empty((len(cos), length), dtype=np.int64)
        pool_n = self.pool_factor * self.k
        for row in range(len(cos)):
            pool = ranked[row, :pool_n]
            pool = pool[np.isfinite(cos[row, pool])]
            score = (1.0 - self.weight) * cos[row, pool] + self.weight * self.prior[candidates[pool]]
            if self.mmr_lambda is not None:
                order = pool[m.mmr(score, self.unit[candidates[pool]], self.k, self.mmr_lambda)]
            else:
                order = pool[np.argsort(-score, kind="stable")[: self.k]]
            rest = ranked[row][~np.isin(ranked[row], order)]
            out[row] = np.concatenate([order, rest])[:length]
        return out


# ---------------------------------------------------------------- method sets


def baselines(world: World, split: Split) -> dict[str, m.Scorer]:
    return {
        "popularity": m.constant(train_counts(split, world.n_items)),
        "popularity_lookahead_free": m.lookahead_free_popularity(split, world.n_items),
        "tmdb_votes": m.constant(world.votes_prior),
    }


def content(world: World, split: Split, blend: float) -> dict[str, m.Scorer]:
    c = world.catalog
    return {
        "genres_onehot": m.Content(world.genres, split.history),
        "text_embedding": m.Content(c.text, split.history),
        "spectrum": m.Content(c.spectrum, split.history),
        "spectrum_votes": m.Content(c.spectrum, split.history, world.votes_prior, blend),
    }


def served_rerank(world: World, params: dict[str, Any]) -> ServedRerank:
    return ServedRerank(
        "spectrum",
        world.votes_prior,
        unit_rows(world.catalog.spectrum),
        params["popularity_weight"],
        params["pool_factor"],
        params["mmr_lambda"],
        world.k,
    )


# ---------------------------------------------------------------- tuning on the validation slice


def tune(world: World, test: Split) -> tuple[Tuned, Split]:
    """ALS, EASE and the spectrum blend weight by validation HR@k."""
    val = validation_split(test, world.like_threshold)
    cands = np.arange(world.n_items)
    scorers: dict[str, m.Scorer] = {}
    for p in ALS_GRID:
        scorers[f"als:{p.factors}:{p.regularization}:{p.alpha}"] = m.ALS(val, world.n_items, p, world.seed)
    for lam in EASE_GRID:
        scorers[f"ease:{lam}"] = m.EASE(val, world.n_items, lam)
    for w in BLEND_GRID:
        scorers[f"blend:{w}"] = m.Content(world.catalog.spectrum, val.history, world.votes_prior, w)
    hr = {name: float(s.hit.mean()) for name, s in score_split(val, cands, scorers, k=world.k, rows=world.rows).items()}

    def best(prefix: str) -> str:
        names = [n for n in hr if n.startswith(prefix)]
        return max(names, key=lambda n: (hr[n], -names.index(n)))

    _, f, r, a = best("als:").split(":")
    return (
        Tuned(
            als=m.ALSParams(int(f), float(r), float(a)),
            ease=float(best("ease:").split(":")[1]),
            blend=float(best("blend:").split(":")[1]),
            validation={"users": len(val), f"hr_at_{world.k}": hr},
        ),
        val,
    )


def choose_serving(world: World, val: Split, blend_hr: dict[float, float]) -> dict[str, Any]:
    """The served parameters: (weight, pool) by validation HR@k; then MMR lambda, only where it keeps
    MMR_MIN_ACCURACY of that HR@k (the most diverse such lambda), else no MMR."""
    cands = np.arange(world.n_items)
    scorers = {"spectrum": m.Content(world.catalog.spectrum, val.history)}
    grid = [{"popularity_weight": w, "pool_factor": p, "mmr_lambda": None} for w in BLEND_GRID for p in POOL_FACTORS]
    lists: dict[str, ListMethod] = {f"{i}": served_rerank(world, g) for i, g in enumerate(grid)}
    got = score_split(val, cands, scorers, lists, world.k, world.rows)
    hr = {i: float(got[f"{i}"].hit.mean()) for i in range(len(grid))}
    best = max(hr, key=lambda i: (hr[i], -i))
    chosen = dict(grid[best])
    mmr_grid = [{**chosen, "mmr_lambda": lam} for lam in MMR_LAMBDAS]
    got_mmr = score_split(
        val,
        cands,
        scorers,
        {f"{lam}": served_rerank(world, g) for lam, g in zip(MMR_LAMBDAS, mmr_grid, strict=True)},
        world.k,
    )
    mmr_rows = {}
    for lam in MMR_LAMBDAS:
        s = got_mmr[f"{lam}"]
        mmr_rows[str(lam)] = {"hr": float(s.hit.mean()), "diversity": intra_list_diversity(s.top, world.genres)}
    base_div = intra_list_diversity(got[f"{best}"].top, world.genres)
    keeps = [lam for lam in MMR_LAMBDAS if mmr_rows[str(lam)]["hr"] >= MMR_MIN_ACCURACY * hr[best]]
    if keeps:
        lam = max(keeps, key=lambda x: (mmr_rows[str(x)]["diversity"], x))
        if mmr_rows[str(lam)]["diversity"] > base_div:
            chosen["mmr_lambda"] = lam
    return {
        "params": chosen,
        "validation": {
            "users": len(val),
            f"hr_at_{world.k}": hr[best],
            "diversity": base_div,
            "mmr": mmr_rows,
            "grid_hr": {f"w={g['popularity_weight']},pool={g['pool_factor']}": hr[i] for i, g in enumerate(grid)},
            "blend_hr": blend_hr,
        },
    }


# ---------------------------------------------------------------- protocols


def method_table(results: dict[str, Scored], baseline: str, seed: int) -> dict[str, Any]:
    """Per method: the three metrics with CIs, and the paired difference in HR@k against `baseline`."""
    out = {}
    for name, s in results.items():
        row = {
            "hr_at_10": mean_with_ci(s.hit, seed),
            "ndcg_at_10": mean_with_ci(s.ndcg, seed),
            "recall_at_50": mean_with_ci(s.recall, seed),
        }
        if name != baseline:
            row["vs_baseline"] = {
                "baseline": baseline,
                "hr_at_10_difference": paired_difference(s.hit, results[baseline].hit, seed),
                "ndcg_at_10_difference": paired_difference(s.ndcg, results[baseline].ndcg, seed),
            }
        out[name] = row
    return out


def best_of(results: dict[str, Scored], names: tuple[str, ...]) -> str:
    present = [n for n in names if n in results]
    return max(present, key=lambda n: (float(results[n].hit.mean()), -present.index(n)))


def warm(world: World, test: Split, tuned: Tuned, serving: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Scored]]:
    """Leave-last-liked-out over every rated movie: baselines, content, CF, the served ranking and MMR variants."""
    cands = np.arange(world.n_items)
    scorers = {
        **baselines(world, test),
        **content(world, test, tuned.blend),
        "cf_als": m.ALS(test, world.n_items, tuned.als, world.seed),
        "cf_ease": m.EASE(test, world.n_items, tuned.ease),
    }
    lists: dict[str, ListMethod] = {"served_exact": served_rerank(world, serving["params"])}
    unit = unit_rows(world.catalog.spectrum)
    for lam in MMR_LAMBDAS:
        lists[f"spectrum_votes_mmr_{lam}"] = m.MMRRerank("spectrum_votes", unit, lam, 4 * world.k, world.k)
    results = score_split(test, cands, scorers, lists, world.k, world.rows)
    base = best_of(results, BASELINES)
    block = {
        "users": len(test),
        "events": len(test),
        "train_interactions": len(test.train),
        "candidates": world.n_items,
        "baseline": base,
        "methods": method_table(results, base, world.seed),
        "tuned": {
            "cf_als": vars(tuned.als),
            "cf_ease": {"lambda": tuned.ease},
            "spectrum_votes": {"popularity_weight": tuned.blend},
            "chosen_on": "validation slice (second-to-last likes, test targets removed)",
        },
    }
    return block, results


def cold(world: World, test: Split, tuned: Tuned, folds: int) -> dict[str, Any]:
    """Cold items: a seeded 1/folds of the rated movies lose every training interaction, `folds` times, pooled.

    The reserve hybrid's content ranker (content->CF from the spectrum, the text or both) and its number of
    reserved slots are chosen on the validation slice pooled over the folds."""
    like = world.like_threshold
    val_all = validation_split(test, like)
    parts = cold_folds(world.n_items, folds, world.seed)
    cands = np.arange(world.n_items)

    def fold_methods(split: Split, cold_items: np.ndarray) -> tuple[dict[str, m.Scorer], dict[str, ListMethod]]:
        als = m.ALS(split, world.n_items, tuned.als, world.seed)
        is_cold = np.zeros(world.n_items, dtype=bool)
        is_cold[cold_items] = True
        scorers = {
            **{k: v for k, v in baselines(world, split).items() if k != "popularity_lookahead_free"},
            **content(world, split, tuned.blend),
            "cf_als": als,
            **{f"content_to_cf_{kind}": m.ContentToCF(als, world.features(kind)) for kind in CONTENT_INPUTS},
        }
        lists = {
            f"hybrid_reserve_{s}_{kind}": m.ReserveHybrid("cf_als", f"content_to_cf_{kind}", is_cold, s, world.k)
            for s in RESERVES
            for kind in CONTENT_INPUTS
        }
        return scorers, lists

    def run(base: Split) -> tuple[dict[str, list[Scored]], dict[str, list[Scored]], list[np.ndarray]]:
        all_users: dict[str, list[Scored]] = {}
        cold_only: dict[str, list[Scored]] = {}
        is_cold_target: list[np.ndarray] = []
        for cold_items in parts:
            split = without_items(base, cold_items, like)
            scorers, lists = fold_methods(split, cold_items)
            for name, s in score_split(split, cands, scorers, lists, world.k, world.rows).items():
                all_users.setdefault(name, []).append(s)
            target_cold = np.isin(split.target, cold_items)
            is_cold_target.append(target_cold)
            rows = np.flatnonzero(target_cold)
            sub = split.subset(rows)
            if len(sub):
                cold_scorers = {n: _rows_of(s, rows) for n, s in scorers.items() if n != "cf_als"}
                for name, s in score_split(sub, cold_items, cold_scorers, None, world.k, world.rows).items():
                    cold_only.setdefault(name, []).append(s)
        return all_users, cold_only, is_cold_target

    v_all, v_cold, v_mask = run(val_all)
    v_target_cold = np.concatenate(v_mask)
    hr_val = {n: float(Scored.concat(p).hit.mean()) for n, p in v_cold.items() if n.startswith("content_to_cf_")}
    kind = max(CONTENT_INPUTS, key=lambda k: (hr_val[f"content_to_cf_{k}"], -CONTENT_INPUTS.index(k)))
    val_curve = {s: float(Scored.concat(v_all[f"hybrid_reserve_{s}_{kind}"]).hit.mean()) for s in RESERVES}
    reserve = max(RESERVES, key=lambda s: (val_curve[s], -s))

    t_all, t_cold, t_mask = run(test)
    target_cold = np.concatenate(t_mask)
    pooled = {n: Scored.concat(p) for n, p in t_all.items()}
    pooled_cold = {n: Scored.concat(p) for n, p in t_cold.items()}
    hybrid = pooled.pop(f"hybrid_reserve_{reserve}_{kind}")
    curve = []
    for s in RESERVES:
        h = pooled[f"hybrid_reserve_{s}_{kind}"] if s != reserve else hybrid
        curve.append(
            {
                "reserve": s,
                "all": float(h.hit.mean()),
                "warm_target": float(h.hit[~target_cold].mean()),
                "cold_target": float(h.hit[target_cold].mean()),
                "validation_all": val_curve[s],
                "chosen": s == reserve,
            }
        )
    shown = {n: s for n, s in pooled.items() if not n.startswith("hybrid_reserve_")}
    shown["hybrid_reserve"] = hybrid
    base = best_of(shown, BASELINES)
    cold_base = "tmdb_votes"
    return {
        "folds": folds,
        "cold_share": 1.0 / folds,
        "users": len(test),
        "events": len(target_cold),
        "user_folds": len(target_cold),
        "cold_target_users": int(target_cold.sum()),
        "baseline": base,
        "methods": method_table(shown, base, world.seed),
        "split_by_target": {
            name: {
                "warm_target_hr_at_10": float(s.hit[~target_cold].mean()),
                "cold_target_hr_at_10": float(s.hit[target_cold].mean()),
            }
            for name, s in shown.items()
        },
        "cold_candidates": {
            "users": int(target_cold.sum()),
            "baseline": cold_base,
            "methods": method_table(pooled_cold, cold_base, world.seed),
        },
        "hybrid": {
            "rule": "reserve s of the top 10 for the best cold movies by content->CF, CF (ALS) for the rest",
            "content_input": kind,
            "content_input_validation_hr_at_10": hr_val,
            "reserve": reserve,
            "tradeoff": curve,
            "validation_users": len(v_target_cold),
        },
    }


def long_tail(world: World, test: Split, results: dict[str, Scored], head_share: float, blend: float) -> dict[str, Any]:
    """Head = the most popular movies holding head_share of the training interactions; the rest is the tail."""
    counts = train_counts(test, world.n_items)
    head = head_items(counts, head_share)
    tail = ~head
    tail_users = np.flatnonzero(tail[test.target])
    users_total = int(test.train["user"].nunique())
    table: dict[str, Any] = {}
    subset = {n: s.subset(tail_users) for n, s in results.items()}
    base = best_of(subset, BASELINES)
    table = method_table(subset, base, world.seed)
    for name, s in results.items():
        table[name] |= {
            "aplt": aplt(s.top, tail),
            "coverage_at_10": catalog_coverage(s.top, world.n_items),
            "diversity_at_10": intra_list_diversity(s.top, world.genres),
            "novelty_at_10": novelty(s.top, counts, users_total),
        }
    out = {
        "head_share": head_share,
        "head_movies": int(head.sum()),
        "tail_movies": int(tail.sum()),
        "users": len(tail_users),
        "events": len(tail_users),
        "baseline": base,
        "methods": table,
        "beyond_accuracy_over": "every warm-protocol user's top 10 over all candidates",
    }
    if len(tail_users):
        sub = test.subset(tail_users)
        scorers = {**baselines(world, sub), **content(world, sub, blend)}
        got = score_split(sub, np.flatnonzero(tail), scorers, None, world.k, world.rows)
        tbase = best_of(got, BASELINES)
        out["tail_candidates"] = {
            "users": len(tail_users),
            "baseline": tbase,
            "methods": method_table(got, tbase, world.seed),
        }
    return out


def _rows_of(scorer: m.Scorer, rows: np.ndarray) -> m.Scorer:
    """A scorer fitted for a whole split, called with positions in the subset of its users at `rows`."""
    return lambda users: scorer(rows[users])
