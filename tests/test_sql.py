"""Lance filters built from catalog values: a quote in an id is data, not SQL."""

from __future__ import annotations

import lance
import pyarrow as pa

from genre_ray.sql import sql_in


def test_sql_in_matches_ids_with_quotes_and_nothing_else(tmp_path) -> None:
    ids = ["a", "o'b", "x' OR '1'='1", "c"]
    ds = lance.write_dataset(pa.table({"movie_id": ids}), str(tmp_path / "t.lance"))
    picked = ds.to_table(filter=sql_in("movie_id", ["o'b", "x' OR '1'='1"]))["movie_id"].to_pylist()
    assert sorted(picked) == ["o'b", "x' OR '1'='1"]
    assert ds.to_table(filter=sql_in("movie_id", ["x"])).num_rows == 0
