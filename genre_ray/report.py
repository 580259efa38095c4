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
    from genre_ray.evaluate import Catalog
    from genre_ray.storage import StoragePath

TRAINING_PNG = "training_curves.png"
MAP_PNG = "spectrum_map.png"
HR_PNG = "hr_at_k.png"
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


def plot_spectrum_map(catalog: Catalog, path: Path, seed: int) -> None:
    """PCA of the spectrum vectors, each movie coloured by the genre the model rates most likely."""
    xy = PCA(n_components=2, random_state=seed).fit_transform(catalog.spectrum)
    dominant = np.array(catalog.vocab)[catalog.probs.argmax(axis=1)]
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


def plot_hr_bars(recs: dict[str, Any], k: int, path: Path) -> None:
    methods = list(recs)
    width = 0.4
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(9, 4))
    for offset, part in ((-width / 2, "all"), (width / 2, "long_tail")):
        stats = [recs[m][part][f"hr@{k}"] for m in methods]
        users = recs[methods[0]][part]["users"]
        ax.bar(
            x + offset,
            [s["mean"] for s in stats],
            width,
            yerr=[[s["mean"] - s["ci_low"] for s in stats], [s["ci_high"] - s["mean"] for s in stats]],
            capsize=3,
            label=f"{part.replace('_', ' ')} ({users} users)",
        )
    ax.set_xticks(x, methods, rotation=15)
    ax.set_ylabel(f"HR@{k}")
    ax.set_title(f"Leave-last-liked-out HR@{k} (95% CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.4f} [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]"


def render_markdown(metrics: dict[str, Any], has_curves: bool) -> str:
    k = metrics["k"]
    genres = metrics["genres"]
    cls = genres["classification"]
    coh = genres[f"coherence@{k}"]
    rec = metrics["recommendation"]
    proto = rec["protocol"]
    lines = [
        "# genre_ray evaluation report",
        "",
        f"Model `{metrics.get('model_version', '?')}`; {metrics['catalog']['movies']} embedded movies, "
        f"{metrics['catalog']['held_out']} held out (test split, never trained on). Seed {metrics['seed']}.",
        "",
        "## Goals",
        "",
        "| goal | measured | status |",
        "| --- | --- | --- |",
    ]
    for g in metrics["goals"]:
        status = f"**{'MET' if g['met'] else 'NOT MET'}**" + (f" ({g['note']})" if "note" in g else "")
        lines.append(f"| {g['goal']} | {g['measured']} | {status} |")
    lines += [
        "",
        f"## Genre classification (held-out split, {cls['movies']} movies, threshold {cls['threshold']})",
        "",
        "| micro-F1 | macro-F1 | mAP | genres scored |",
        "| --- | --- | --- | --- |",
        f"| {cls['micro_f1']:.4f} | {cls['macro_f1']:.4f} | {cls['mAP']:.4f} | {cls['genres_scored']} |",
        "",
        "| genre | F1 | support |",
        "| --- | --- | --- |",
        *(
            f"| {g} | {v['f1']:.3f} | {v['support']} |"
            for g, v in sorted(cls["per_genre"].items(), key=lambda kv: -kv[1]["support"])
        ),
        "",
        f"## Genre coherence@{k}",
        "",
        f"For each of {coh['queries']} held-out movies, the share of its {k} cosine-nearest neighbours among "
        f"{coh['pool']} labelled catalog movies (itself excluded) that share at least one genre with it. "
        "One-hot genre vectors score 1 by construction and are not listed.",
        "",
        "| vectors | coherence |",
        "| --- | --- |",
        f"| genre spectrum | {coh['spectrum']:.4f} |",
        f"| raw text embedding | {coh['text_embedding']:.4f} |",
        "",
        "## Recommendation: leave-last-liked-out",
        "",
        f"{proto['users']} users with at least two likes (rating >= {proto['like_threshold']}); the target is each "
        "user's last like by time; the history is the earlier likes. Every method ranks the same "
        f"{proto['candidates']} candidates (catalog movies with at least one rating) minus the same exclusions "
        "(everything the user rated at or before the target's time). Popularity counts all ratings except the "
        "target events. Content methods score cosine(mean of unit history vectors, candidate). Ties are scored "
        f"as the expectation over random order. The blend is (1 - w) cosine + w log-popularity, w = "
        f"{proto['blend_weight']} (from the {proto['blend_weight_from']}, never from these targets). Long tail: "
        f"targets with <= {proto['long_tail_max_ratings']} training ratings (popularity can barely reach them: "
        "that goal is a floor; compare the content methods with each other there). [brackets]: 95% bootstrap "
        "interval over users.",
        "",
        f"| method | HR@{k} all | NDCG@{k} all | HR@{k} long tail | NDCG@{k} long tail |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, m in rec["methods"].items():
        cells = [_fmt(m[part][f"{metric}@{k}"]) for part in ("all", "long_tail") for metric in ("hr", "ndcg")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    users_tail = next(iter(rec["methods"].values()))["long_tail"]["users"]
    val = rec["blend_validation"]
    lines += [
        "",
        f"Long-tail slice: {users_tail} users.",
        "",
        f"Blend weight on the validation slice ({val['users']} users, target = second-to-last like, test targets "
        f"removed): best w = {val['best_weight']} "
        f"(HR@{k} by w: {', '.join(f'{w}: {v:.3f}' for w, v in val[f'hr@{k}_by_weight'].items())}). "
        "w = 0 is the spectrum alone, w = 1 popularity alone.",
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
    lines += [f"![spectrum map]({MAP_PNG})", "", f"![HR@{k} per method]({HR_PNG})", ""]
    return "\n".join(lines)


def write_report(
    metrics: dict[str, Any], catalog: Catalog, history: list[dict[str, Any]], out_dir: StoragePath
) -> StoragePath:
    """report.md and its plots in out_dir (a local directory or an object-store prefix: each file in one step)."""
    from genre_ray.layout import atomic_write, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="genre-ray-report-") as d:
        has_curves = plot_training_curves(history, Path(d) / TRAINING_PNG)
        plot_spectrum_map(catalog, Path(d) / MAP_PNG, metrics["seed"])
        plot_hr_bars(metrics["recommendation"]["methods"], metrics["k"], Path(d) / HR_PNG)
        for png in sorted(Path(d).glob("*.png")):
            atomic_write(out_dir / png.name, lambda tmp, png=png: shutil.copyfile(png, tmp))
    path = out_dir / "report.md"
    atomic_write_text(path, render_markdown(metrics, has_curves))
    return path
