"""The spectrum stage: Ray Data actors map embeddings to the model's penultimate layer + genre probabilities."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from factories import catalog_table
from test_store import EMB_DIM, SPECTRUM_DIM, embeddings_for, save_model

from genre_ray import schema
from genre_ray.layout import RunLayout
from genre_ray.model import load_classifier
from genre_ray.schema import vector_matrix
from genre_ray.spectrum import compute_spectrum


def test_spectrum_rows_match_the_model_and_join_metadata(ray_session, tmp_path):
    layout = RunLayout.of(tmp_path)
    save_model(layout)
    catalog = catalog_table(30)
    emb = embeddings_for(catalog)
    # Infer 20 of the 30 movies; one of them has a stale embedding (its hash differs from the catalog's).
    wanted = catalog.slice(0, 20)
    stale_id = "1005"
    hashes = [
        h if m != stale_id else "stale"
        for m, h in zip(emb["movie_id"].to_pylist(), emb["content_hash"].to_pylist(), strict=True)
    ]
    emb = emb.set_column(1, "content_hash", pa.array(hashes))

    rows = compute_spectrum(ray.data.from_arrow(emb).repartition(3), wanted, layout.model_dir, batch_size=7)
    out = pa.concat_tables(ray.get(list(rows.to_arrow_refs()))).sort_by("movie_id")

    assert out.schema == schema.served_schema(SPECTRUM_DIM)
    expected_ids = sorted(set(wanted["movie_id"].to_pylist()) - {stale_id})
    assert out["movie_id"].to_pylist() == expected_ids

    loaded = load_classifier(layout.model_dir)
    by_id = {m: i for i, m in enumerate(emb["movie_id"].to_pylist())}
    x = torch.from_numpy(vector_matrix(emb["embedding"])[[by_id[m] for m in expected_ids]])
    with torch.inference_mode():
        want_vec = loaded.model.spectrum(x).numpy()
        want_probs = torch.sigmoid(loaded.model(x)).numpy()
    np.testing.assert_allclose(vector_matrix(out["vector"]), want_vec, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["genre_probs"].to_pylist()), want_probs, rtol=1e-5, atol=1e-6)
    assert set(out["model_version"].to_pylist()) == {loaded.model_version}

    meta = wanted.filter(pc.is_in(wanted["movie_id"], value_set=pa.array(expected_ids))).sort_by("movie_id")
    for col in ("title", "year", "language", "genres", "votes", "content_hash"):
        assert out[col].to_pylist() == meta[col].to_pylist(), col


def test_embedding_matrix_reads_fixed_size_lists():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    col = pa.chunked_array(
        [
            pa.FixedSizeListArray.from_arrays(pa.array(x[:2].ravel()), 4),
            pa.FixedSizeListArray.from_arrays(pa.array(x[2:].ravel()), 4),
        ]
    )
    np.testing.assert_array_equal(vector_matrix(col), x)
    assert vector_matrix(embeddings_for(catalog_table(2))["embedding"]).shape[1] == EMB_DIM
