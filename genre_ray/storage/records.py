"""Numbered records in one directory, each created only if absent: the log under both the publish switch
(`store/serving/`) and the writer lease (`store/lease/`).

A writer claims number n by creating `<n>.json` with `put_if_absent` and then checking that n is still the highest
number there. Of writers racing for one number exactly one create succeeds; and since old records are pruned, a
writer that waited long enough could recreate a pruned number, which the second check catches.
"""

from __future__ import annotations

from typing import Literal

from genre_ray.storage import StoragePath, put_if_absent

Claim = Literal["claimed", "taken", "overtaken"]


def record_path(directory: StoragePath, n: int, suffix: str = ".json") -> StoragePath:
    return directory / f"{n:012d}{suffix}"


def numbered(directory: StoragePath) -> list[tuple[int, StoragePath]]:
    """Every `<n>.json` record, (number, path), lowest first."""
    out = []
    for f in directory.glob("*.json"):
        stem = f.name.removesuffix(".json")
        if stem.isdigit():
            out.append((int(stem), f))
    return sorted(out, key=lambda t: t[0])


def claim(directory: StoragePath, n: int, data: bytes) -> Claim:
    """Create record n holding `data`: "claimed" when this call created it and it is the highest; "taken" when n
    existed already; "overtaken" when created but a higher number exists (this record is then not the current)."""
    if not put_if_absent(record_path(directory, n), data):
        return "taken"
    return "claimed" if numbered(directory)[-1][0] == n else "overtaken"
