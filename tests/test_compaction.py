"""Compaction leaves big fragments alone: a nightly's small fragment must not make Lance rewrite the whole table."""

from __future__ import annotations

import lance
import pyarrow as pa

from genre_ray.store.maintenance import compact_dataset


def _table(start: int, n: int) -> pa.Table:
    return pa.table({"movie_id": [str(i) for i in range(start, start + n)], "x": list(range(start, start + n))})


def _fragments(ds: lance.LanceDataset) -> list[tuple[int, int]]:
    return [(f.fragment_id, f.count_rows()) for f in ds.get_fragments()]


def test_a_big_fragment_survives_a_nightly_compaction(tmp_path) -> None:
    uri = str(tmp_path / "t.lance")
    lance.write_dataset(_table(0, 300), uri)  # night 1: one big fragment
    for night in range(3):  # three nightly deltas, and a few deletions in the big fragment
        lance.write_dataset(_table(1000 + 10 * night, 10), uri, mode="append")
    ds = lance.dataset(uri)
    ds.delete("x < 5")
    big = _fragments(ds)[0]

    compact_dataset(ds, target_rows=100)
    after = lance.dataset(uri)
    assert _fragments(after)[0] == big  # untouched: same fragment id, its deletions not rewritten
    assert len(after.get_fragments()) == 2  # the three small ones merged into one
    assert after.count_rows() == 300 - 5 + 30

    # Lance's default target (1M rows) counts the big fragment as small and rewrites everything into one
    lance.dataset(uri).optimize.compact_files()
    rewritten = _fragments(lance.dataset(uri))
    assert len(rewritten) == 1 and rewritten[0][0] != big[0]
