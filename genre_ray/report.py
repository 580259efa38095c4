"""The evaluation report: report.md plus PNG plots, rendered from metrics.json's dict (no metric computed here)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on cluster nodes without a display

import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA

if TYPE_CHECKING:
    from genre_ray.storage import StoragePath

TRAINING_PNG = "training_curves.png"
MAP_PNG = "spectrum_map.png"
HR_PNG = "hr_at_k.png"
TRADEOFF_PNG = "cold_hybrid_tradeoff.png"
# methods drawn in the HR@10-by-popularity plot
PLOTTED = (
    "popularity",
    "tmdb_votes",
    "genres_onehot",
    "text_embedding",
    "spectrum",
    "spectrum_votes",
    "cf_als",
    "cf_ease",
)
# Genres beyond this many (by count) share one grey "other" colour: 20 hues are not distinguishable.
MAP_GENRES = 10


def plot_training_curves(history: list[dict[str, Any]], path: Path) -> bool:
    """Loss-like series on the left, every other per-epoch metric on the right. False if there is no history."""
    if not history:
        return False
    epochs = [h.get("epoch", i) for i, h in enumerate(history)]
    # Timings (train_seconds, rows_per_s) are throughput, not learning: they belong in the bench, not here.
    keys = sorted(
        {
            k
            for h in history
            for k, v in h.items()
            if k != "epoch" and isinstance(v, int | float) and not k.endswith(("_seconds", "_per_s"))
        }
    )
    fig, (ax_loss, ax_other) = plt.subplots(1, 2, figsize=(11, 4))
    for key in keys:
        ax = ax_loss if "loss" in key else ax_other
        ax.plot(epochs, [h.get(key, np.nan) for h in history], marker=".", label=key)
    for ax, title in ((ax_loss, "loss"), (ax_other, "validation metrics")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_spectrum_map(spectrum: np.ndarray, probs: np.ndarray, vocab: list[str], path: Path, seed: int) -> None:
    """PCA of the spectrum vectors, each movie coloured by the genre the model rates most likely."""
    xy = PCA(n_components=2, random_state=seed).fit_transform(spectrum)
    dominant = np.array(vocab)[probs.argmax(axis=1)]
    names, counts = np.unique(dominant, return_counts=True)
    shown = [n for _, n in sorted(zip(-counts, names, strict=True))][:MAP_GENRES]
    fig, ax = plt.subplots(figsize=(8, 7))
    rest = ~np.isin(dominant, shown)
    ax.scatter(xy[rest, 0], xy[rest, 1], s=4, c="lightgrey", label="other")
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(shown):
        sel = dominant == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=4, color=cmap(i), label=f"{name} ({sel.sum()})")
    ax.set_title(f"Genre spectrum of {len(xy)} movies (PCA), coloured by dominant predicted genre")
    ax.legend(markerscale=3, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_hr_by_popularity(buckets: dict[str, Any], path: Path) -> None:
    """HR@10 per method by the target's training-popularity bucket (warm protocol)."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(buckets["buckets"]))
    for name in PLOTTED:
        if name in buckets["hr_at_10"]:
            ys = [np.nan if v is None else v for v in buckets["hr_at_10"][name]]
            ax.plot(x, ys, marker="o", label=name)
    ax.set_xticks(x, [f"{b}\n({n} users)" for b, n in zip(buckets["buckets"], buckets["users"], strict=True)])
    ax.set_xlabel("target's training ratings")
    ax.set_ylabel("HR@10")
    ax.set_title("Warm protocol: HR@10 by the target's popularity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(hybrid: dict[str, Any], path: Path) -> None:
    """The reserve hybrid's trade-off: warm-target vs cold-target HR@10 as the reserved slots grow."""
    pts = hybrid["tradeoff"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot([p["warm_target"] for p in pts], [p["cold_target"] for p in pts], marker="o")
    for p in pts:
        label = f"s={p['reserve']}" + (" (chosen on validation)" if p["chosen"] else "")
        ax.annotate(label, (p["warm_target"], p["cold_target"]), textcoords="offset points", xytext=(5, 5))
        if p["chosen"]:
            ax.scatter([p["warm_target"]], [p["cold_target"]], s=120, facecolors="none", edgecolors="red")
    ax.set_xlabel("HR@10, users with a warm target")
    ax.set_ylabel("HR@10, users with a cold target")
    ax.set_title(f"Cold protocol: reserve s of 10 slots for cold movies ({hybrid['content_input']} content->CF)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.4f} [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]"


def _diff(row: dict[str, Any]) -> str:
    d = row.get("vs_baseline", {}).get("hr_at_10_difference")
    return "(baseline)" if d is None else f"{d['mean']:+.4f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def method_rows(methods: dict[str, Any], extra: tuple[str, ...] = ()) -> list[str]:
    head = "| method | HR@10 | NDCG@10 | recall@50 | HR@10 - baseline |" + "".join(f" {e} |" for e in extra)
    lines = [head, "|" + " --- |" * (5 + len(extra))]
    for name, m in methods.items():
        cells = [_fmt(m["hr_at_10"]), _fmt(m["ndcg_at_10"]) if "ndcg_at_10" in m else "", ""]
        if "recall_at_50" in m:
            cells[2] = _fmt(m["recall_at_50"])
        cells.append(_diff(m))
        cells += [f"{m[e]:.3f}" if isinstance(m.get(e), float) else "" for e in extra]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def _separated(row: dict[str, Any]) -> int:
    """+1 / -1 where the paired CI of the HR@10 difference lies above / below 0, else 0."""
    d = row.get("vs_baseline", {}).get("hr_at_10_difference")
    if d is None:
        return 0
    return 1 if d["ci_low"] > 0 else -1 if d["ci_high"] < 0 else 0


def verdict(rec: dict[str, Any]) -> list[str]:
    """Where the spectrum helps and where it does not, read off the CIs (nothing computed here but comparisons)."""
    warm, cold, tail = rec["warm"]["methods"], rec["cold"], rec["long_tail"]["methods"]
    words = {1: "better than", -1: "worse than", 0: "not distinguishable from"}
    out = []
    base = rec["warm"]["baseline"]
    for name in ("cf_als", "cf_ease", "spectrum", "spectrum_votes", "text_embedding", "served_exact"):
        if name in warm:
            out.append(
                f"- Warm: `{name}` HR@10 {warm[name]['hr_at_10']['mean']:.4f} is {words[_separated(warm[name])]} "
                f"`{base}` ({warm[base]['hr_at_10']['mean']:.4f}; paired 95% CI of the difference {_diff(warm[name])})."
            )
    cc = cold["cold_candidates"]["methods"]
    for name in ("spectrum", "text_embedding", "genres_onehot", *(n for n in cc if n.startswith("content_to_cf_"))):
        if name in cc:
            out.append(
                f"- Cold candidates: `{name}` HR@10 {cc[name]['hr_at_10']['mean']:.4f} is "
                f"{words[_separated(cc[name])]} TMDB votes ({cc['tmdb_votes']['hr_at_10']['mean']:.4f}; "
                f"difference {_diff(cc[name])})."
            )
    h = cold["hybrid"]
    chosen = next(p for p in h["tradeoff"] if p["chosen"])
    out.append(
        f"- Cold hybrid: validation chose s = {h['reserve']} reserved slot(s) ({h['content_input']} content->CF); "
        f"on test it gives all-user HR@10 {chosen['all']:.4f} (warm-target {chosen['warm_target']:.4f}, cold-target "
        f"{chosen['cold_target']:.4f}) against CF alone {cold['methods']['cf_als']['hr_at_10']['mean']:.4f}."
    )
    if "spectrum" in tail and "cf_als" in tail:
        out.append(
            f"- Long tail: APLT spectrum {tail['spectrum']['aplt']:.3f} vs ALS {tail['cf_als']['aplt']:.3f} vs "
            f"popularity {tail['popularity']['aplt']:.3f}; tail-target HR@10 spectrum "
            f"{tail['spectrum']['hr_at_10']['mean']:.4f}, ALS {tail['cf_als']['hr_at_10']['mean']:.4f}."
        )
    return out


def render_markdown(metrics: dict[str, Any], has_curves: bool) -> str:
    k = metrics["k"]
    genres = metrics["genres"]
    cls = genres["classification"]
    coh = genres[f"coherence@{k}"]
    rec = metrics["recommendation"]
    ratings = rec["ratings"]
    warm, cold, tail, serving = rec["warm"], rec["cold"], rec["long_tail"], rec["serving"]
    params = serving["params"]
    lines = [
        "# genre_ray evaluation report",
        "",
        f"Model `{metrics.get('model_version', '?')}`; {metrics['catalog']['movies']} catalog movies, "
        f"{metrics['catalog']['evaluated']} evaluated ({metrics['catalog']['held_out']} of them held out: test "
        f"split, never trained on). Seed {metrics['seed']}. Ratings: {ratings['file']}, {ratings['joined']} of "
        f"{ratings['ratings']} joined a catalog movie (join rate {ratings['join_rate']:.3f}), "
        f"{ratings['movies_rated']} rated movies. [brackets]: 95% bootstrap intervals over users; "
        "differences are paired (the same users on both sides).",
        "",
        "## Verdict",
        "",
        *verdict(rec),
        "",
        f"## Warm: leave-last-liked-out ({warm['users']} users, {warm['candidates']} candidates)",
        "",
        "The target is each user's last like (rating >= "
        f"{ratings['like_threshold']}); every method learns from every other rating (other users' later ones "
        "included) and ranks every rated movie minus what the user rated. `popularity` counts that training data; "
        "`popularity_lookahead_free` only the ratings strictly before each user's target. Hyper-parameters "
        f"(ALS {warm['tuned']['cf_als']}, EASE lambda {warm['tuned']['cf_ease']['lambda']}, spectrum_votes w "
        f"{warm['tuned']['spectrum_votes']['popularity_weight']}) come from the validation slice. Baseline for the "
        f"differences: `{warm['baseline']}` (the best baseline).",
        "",
        *method_rows(warm["methods"]),
        "",
        f"## Cold items ({cold['folds']} folds, {cold['user_folds']} user-folds, {cold['cold_target_users']} "
        "cold-target users)",
        "",
        f"Each fold, a seeded {cold['cold_share']:.0%} of the rated movies lose every training interaction; every "
        "rated movie is cold in one fold and the per-user results pool over the folds. All users over all "
        f"candidates (baseline `{cold['baseline']}`):",
        "",
        *method_rows(cold["methods"]),
        "",
        f"Cold-target users over the cold candidates only ({cold['cold_candidates']['users']} users, baseline "
        "`tmdb_votes`; note that the catalog's votes are a later snapshot, which flatters them on 'new' movies):",
        "",
        *method_rows(cold["cold_candidates"]["methods"]),
        "",
        f"Hybrid: {cold['hybrid']['rule']}; content input `{cold['hybrid']['content_input']}` and s chosen on the "
        "validation slice.",
        "",
        "| s | all users | warm-target | cold-target | validation (all) |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {p['reserve']}{' (chosen)' if p['chosen'] else ''} | {p['all']:.4f} | {p['warm_target']:.4f} | "
            f"{p['cold_target']:.4f} | {p['validation_all']:.4f} |"
            for p in cold["hybrid"]["tradeoff"]
        ),
        "",
        f"![hybrid trade-off]({TRADEOFF_PNG})",
        "",
        f"## Long tail (head: {tail['head_movies']} movies holding {tail['head_share']:.0%} of training ratings; "
        f"{tail['tail_movies']} tail movies; {tail['users']} users with a tail target)",
        "",
        "HR@10 of the tail-target users over all candidates; APLT, coverage@10, diversity@10 (mean pairwise "
        "1 - genre cosine) and novelty@10 (mean -log2 popularity) over every warm user's top 10.",
        "",
        *method_rows(tail["methods"], ("aplt", "coverage_at_10", "diversity_at_10", "novelty_at_10")),
        "",
    ]
    if "tail_candidates" in tail:
        lines += [
            "Tail-target users over the tail candidates only:",
            "",
            *method_rows(tail["tail_candidates"]["methods"]),
            "",
        ]
    lines += [
        "## Served ranking",
        "",
        f"Chosen on validation: popularity weight over TMDB votes {params['popularity_weight']}, pool factor "
        f"{params['pool_factor']}, MMR lambda {params['mmr_lambda']} (MMR only where it keeps "
        "95% of the validation HR@10 and adds diversity). Written to model/serving_params.json; the next publish "
        "carries it into the manifest.",
        "",
    ]
    if "as_served" in serving:
        a = serving["as_served"]
        lines += [
            f"As served (`Recommender.for_user` on the published store, {a['users']} users): HR@10 "
            f"{_fmt(warm['methods']['served']['hr_at_10'])}, exact-scoring variant on the same users "
            f"{a['exact_hr_at_10_same_users']:.4f}; {a['top_10_equal_to_exact_share']:.0%} of the served top 10s "
            f"equal the exact one ({a['note']}).",
            "",
        ]
    lines += [
        f"## Genre classification (held-out split, {cls['movies']} movies, threshold {cls['threshold']})",
        "",
        "| micro-F1 | macro-F1 | mAP | genres scored |",
        "| --- | --- | --- | --- |",
        f"| {cls['micro_f1']:.4f} | {cls['macro_f1']:.4f} | {cls['mAP']:.4f} | {cls['genres_scored']} |",
        "",
        f"## Genre coherence@{k}",
        "",
        f"For each of {coh['queries']} held-out movies, the share of its {k} cosine-nearest neighbours among "
        f"{coh['pool']} labelled catalog movies (itself excluded) that share at least one genre with it.",
        "",
        "| vectors | coherence |",
        "| --- | --- |",
        f"| genre spectrum | {coh['spectrum']:.4f} |",
        f"| raw text embedding | {coh['text_embedding']:.4f} |",
        "",
        f"## IVF-PQ recall@{k} (served tables vs exact search over the same vectors)",
        "",
        "| table | rows | indexed | recall | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    if not metrics["ann"]:
        lines.append("| (no published store in this run) | | | | |")
    for name, a in metrics["ann"].items():
        if a.get("indexed"):
            lines.append(
                f"| {name} | {a['rows']} | {a['index_type']} | {a[f'recall@{k}']:.4f} | "
                f"{a['queries']} queries (the table's own movies, self excluded), nprobes {a['nprobes']}, "
                f"refine_factor {a['refine_factor']}; without refine: {a[f'recall@{k}_no_refine']:.4f} |"
            )
        else:
            lines.append(f"| {name} | {a.get('rows', '?')} | no | n/a | {a.get('note', '')} |")
    lines += ["", "## Plots", ""]
    if has_curves:
        lines += [f"![training curves]({TRAINING_PNG})", ""]
    else:
        lines += ["No training history found (model_dir/history.json): no training curves.", ""]
    lines += [f"![spectrum map]({MAP_PNG})", "", f"![HR@{k} by target popularity]({HR_PNG})", ""]
    return "\n".join(lines)


def write_report(
    metrics: dict[str, Any],
    spectrum: np.ndarray,
    probs: np.ndarray,
    vocab: list[str],
    history: list[dict[str, Any]],
    out_dir: StoragePath,
) -> StoragePath:
    """report.md and its plots in out_dir (a local directory or an object-store prefix: each file in one step)."""
    from genre_ray.layout import atomic_write, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="genre-ray-report-") as d:
        has_curves = plot_training_curves(history, Path(d) / TRAINING_PNG)
        plot_spectrum_map(spectrum, probs, vocab, Path(d) / MAP_PNG, metrics["seed"])
        plot_hr_by_popularity(metrics["recommendation"]["by_popularity"], Path(d) / HR_PNG)
        plot_tradeoff(metrics["recommendation"]["cold"]["hybrid"], Path(d) / TRADEOFF_PNG)
        for png in sorted(Path(d).glob("*.png")):
            atomic_write(out_dir / png.name, lambda tmp, png=png: shutil.copyfile(png, tmp))
    path = out_dir / "report.md"
    atomic_write_text(path, render_markdown(metrics, has_curves))
    return path
