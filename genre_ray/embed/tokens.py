"""Token ids as flat numpy arrays: tokenise a window of documents, bucket it by length, pad one batch at a time.

A window's ids are one int32 array plus offsets (Arrow's list layout), never Python lists of lists: the Rust
tokenizer's output is flattened once, bucketing is an argsort of the lengths, and a batch is padded by one numpy
gather. The same arrays travel between Ray stages as an Arrow list column without a copy (`to_arrow`/`from_arrow`),
which is what lets tokenisation run in its own CPU stage ahead of a GPU actor.

Imports no torch: a tokenising worker loads only the tokenizer.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Tokens:
    """The ids of n documents: document i is ids[offsets[i]:offsets[i + 1]] (special tokens included)."""

    ids: np.ndarray  # int32, all documents' ids concatenated
    offsets: np.ndarray  # int64, n + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def length_order(self) -> np.ndarray:
        # stable: equal lengths keep input order, so a window's batches are deterministic
        return np.argsort(self.lengths, kind="stable")

    def take(self, rows: np.ndarray) -> Tokens:
        """The documents `rows`, in that order (a window re-ordered by length before it leaves the tokenizer)."""
        starts, lengths = self.offsets[rows], self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return Tokens(self.ids[_positions(starts, lengths, offsets)], offsets)

    def padded(self, rows: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) of documents `rows`, int64 [len(rows), longest], padded on the right."""
        starts, lengths = self.offsets[rows], self.lengths[rows]
        width = int(lengths.max()) if len(rows) else 0
        position = np.arange(width)
        mask = position[None, :] < lengths[:, None]
        index = np.where(mask, starts[:, None] + position[None, :], 0)
        ids = np.where(mask, self.ids[index] if len(self.ids) else 0, pad_id).astype(np.int64)
        return ids, mask.astype(np.int64)

    def to_arrow(self) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(self.offsets.astype(np.int32)), pa.array(self.ids))

    @classmethod
    def from_arrow(cls, column: pa.ChunkedArray | pa.ListArray) -> Tokens:
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        # a sliced list array's offsets do not start at 0: rebase them onto its own values
        offsets = np.asarray(array.offsets, dtype=np.int64)
        values = np.asarray(array.values.slice(offsets[0], offsets[-1] - offsets[0]), dtype=np.int32)
        return cls(values, offsets - offsets[0])


def _positions(starts: np.ndarray, lengths: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Flat indices of the ranges [starts[i], starts[i] + lengths[i]) concatenated (offsets: their cumsum)."""
    return np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])


class Tokenizer:
    """MiniLM's (any fast) tokenizer with truncation, returning Tokens; loads no model weights."""

    def __init__(self, path: str, max_length: int):
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.pad_id = int(hf.pad_token_id or 0)
        # The Rust tokenizer itself: transformers' __call__ wraps every id in a Python list per document.
        self.backend = hf.backend_tokenizer
        self.backend.enable_truncation(max_length)
        self.backend.no_padding()

    def __call__(self, texts: list[str]) -> Tokens:
        encodings = self.backend.encode_batch_fast(texts, add_special_tokens=True)
        lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
        offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int32, count=offsets[-1])
        return Tokens(ids, offsets)
