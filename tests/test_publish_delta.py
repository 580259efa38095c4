"""A nightly publish costs what changed, and the publish plan (store/plan.py) runs in a Ray task: only the changed
movies' embeddings are read, and a catalog the catalog stage should have deduplicated is refused by name."""

from __future__ import annotations

import pyarrow as pa
import pytest
import ray
from factories import catalog_table
from test_store import edit_overview, make_run, rewrite_catalog, write_embeddings

from genre_ray.spectrum import spread
from genre_ray.store import Store, StoreError, publish
from genre_ray.store.plan import TABLE, _with_meta_hash, diff


def _keys(ids: list[str], hashes: list[str], votes: list[int], genres: list[list[str]]) -> pa.Table:
    """Diff inputs: ids, content hashes and the served metadata columns (only votes and genres vary here)."""
    n = len(ids)
    return pa.table(
        {
            "movie_id": ids,
            "title": ["t"] * n,
            "year": pa.array([2000] * n, pa.int32()),
            "language": ["en"] * n,
            "genres": genres,
            "popularity": [1.0] * n,
            "votes": pa.array(votes, pa.int64()),
            "content_hash": hashes,
        }
    )


def test_diff_classifies_new_edited_moved_removed_old_model_and_metadata_only_rows():
    ids = ["same", "new", "edited", "moved", "old-model", "votes-only", "genres-only"]
    catalog = _keys(ids, ["h", "h", "h2", "h", "h", "h", "h"], [10] * 5 + [11, 10], [["Drama"]] * 6 + [["War"]])
    catalog = catalog.append_column(TABLE, pa.array(["en", "en", "en", "fr", "en", "en", "en"]))
    published = _with_meta_hash(_keys(["same", "gone", *ids[2:]], ["h"] * 7, [10] * 7, [["Drama"]] * 7))
    published = published.select(["movie_id", "content_hash", "_meta"])
    published = published.append_column("model_version", pa.array(["m1", "m1", "m1", "m1", "m0", "m1", "m1"]))
    published = published.append_column("_pub_table", pa.array(["en", "fr", "en", "en", "en", "en", "en"]))

    upsert, refresh, delete, unchanged = diff(catalog, published, "m1")
    assert sorted(upsert["movie_id"].to_pylist()) == ["edited", "moved", "new", "old-model"]
    # same document, model and table, but new votes or labels: only the served metadata is updated
    assert sorted(refresh["movie_id"].to_pylist()) == ["genres-only", "votes-only"]
    assert dict(zip(*refresh.select(["movie_id", "votes"]).to_pydict().values(), strict=True)) == {
        "genres-only": 10,
        "votes-only": 11,
    }
    # a moved movie is written to its new table and deleted from the old one; an edit is replaced in place
    assert delete == {"en": ["moved"], "fr": ["gone"]}
    assert unchanged == 1


def test_a_small_nightly_reads_and_infers_only_the_changed_movies(ray_session, tmp_path):
    catalog = catalog_table(60)
    cfg, layout = make_run(tmp_path, catalog)
    write_embeddings(layout, catalog)  # the embed stage's Lance dataset: publish reads it itself
    first = publish(cfg, layout, run_id="r1")
    assert first.full_rebuild and first.upserted == first.embeddings_read == 60

    changed = {"1003", "1017", "1042"}
    night = edit_overview(catalog, changed)
    rewrite_catalog(layout, night)
    write_embeddings(layout, night)  # 60 embeddings on disk, 3 of them new
    second = publish(cfg, layout, run_id="r2")

    assert not second.full_rebuild
    assert (second.upserted, second.deleted, second.unchanged) == (3, 0, 57)
    # only the 3 changed movies' embeddings were read and pushed through the spectrum map
    assert second.embeddings_read == 3
    s = Store(layout.store_dir)
    served = dict(zip(*s.scan(["movie_id", "content_hash"]).to_pydict().values(), strict=True))
    assert served == dict(zip(night["movie_id"].to_pylist(), night["content_hash"].to_pylist(), strict=True))


def test_an_in_memory_delta_is_split_so_every_spectrum_actor_gets_a_share(ray_session):
    fetched = ray.data.from_arrow(pa.table({"movie_id": [str(i) for i in range(10)]})).materialize()
    assert fetched.num_blocks() == 1  # what a fetched nightly delta is

    split = spread(fetched, 3)
    assert split.num_blocks() == 3
    assert all(block.num_rows > 0 for block in ray.get(list(split.to_arrow_refs())))
    assert sorted(r["movie_id"] for r in split.take_all()) == sorted(str(i) for i in range(10))
    assert spread(split, 2) is split  # enough blocks already: nothing to do


def test_a_catalog_with_a_repeated_id_is_refused_before_any_write(ray_session, tmp_path):
    catalog = catalog_table(20)
    twice = pa.concat_tables([catalog, catalog.slice(7, 1)])
    cfg, layout = make_run(tmp_path, twice)
    write_embeddings(layout, catalog)
    with pytest.raises(StoreError, match=r"movie_id is not unique \(e\.g\. \['1007'\]\)"):
        publish(cfg, layout, run_id="r1")
    assert Store(layout.store_dir).manifest() is None
