"""The notice an embed run gives before it re-embeds a whole catalog that was embedded before: how many movies,
why (the encoder, its output, or every document changed: text.parts), and how long it should take at the rate an
earlier full embed of this workdir measured (its run records, run.json and runs/*.json)."""

from __future__ import annotations

import json
from typing import Any

import lance
import pyarrow as pa

from genre_ray.layout import RunLayout


def _stored_encoder(stored: lance.LanceDataset) -> str | None:
    sample = stored.to_table(columns=["encoder_id"], limit=1)
    return sample["encoder_id"][0].as_py() if sample.num_rows else None


def why_full(stored: lance.LanceDataset, enc_id: str, out_schema: pa.Schema, incremental: bool) -> str:
    if not incremental:
        return "embed.incremental is off"
    if not stored.schema.equals(out_schema):
        before, after = stored.schema.field("embedding").type, out_schema.field("embedding").type
        return f"the encoder's output changed ({before} -> {after})"
    before = _stored_encoder(stored)
    if before != enc_id:
        return f"the encoder changed ({before} -> {enc_id})"
    return "every document changed (text.parts, or every movie's text in the catalog)"


def measured_rate(layout: RunLayout) -> tuple[float, str] | None:
    """(docs/s, run id) of the newest full embed recorded in this workdir's run records, or None."""
    records = [layout.run_json, *sorted((layout.root / "runs").glob("*.json"), reverse=True)]
    for path in records:
        try:
            run: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        embed = ((run.get("results") or {}).get("embed") or {}).get("result") or {}
        if embed.get("mode") == "full" and embed.get("docs_embedded") and embed.get("seconds"):
            return embed["docs_embedded"] / embed["seconds"], str(run.get("run_id"))
    return None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def rebuild_notice(
    stored: lance.LanceDataset, enc_id: str, out_schema: pa.Schema, incremental: bool, n: int, layout: RunLayout
) -> str:
    rate = measured_rate(layout)
    estimate = (
        f"~{_duration(n / rate[0])} at the {rate[0]:.1f} docs/s of full embed run {rate[1]}"
        if rate
        else "no earlier full embed in this workdir to estimate the time from"
    )
    return (
        f"embed: re-embedding the whole catalog, {n} movies ({stored.count_rows()} stored vectors are not reused): "
        f"{why_full(stored, enc_id, out_schema, incremental)}; {estimate}"
    )
