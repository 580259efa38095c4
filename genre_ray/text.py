"""Movie metadata -> one text document, and the content hash that lets later stages skip unchanged movies.

Plain Python: no Ray, no torch. The document is built from `string.Template` parts (never `str.format`, which
would let a template reach attributes), and catalog text is only ever substituted as data.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from string import Template
from typing import Any

from genre_ray.config import TextConfig
from genre_ray.errors import TemplateError
from genre_ray.schema import CATALOG

LABEL_FIELDS = frozenset({"genres"})
# Derived fields: the money texts, and the original title only where it differs from the title (most films'
# original title is their title: rendered always it would repeat the first sentence).
DERIVED_FIELDS = frozenset({"budget_text", "revenue_text", "original_title_text"})
# What a template may name: the catalog's fields plus the derived ones. A typo ($overveiw) would otherwise
# silently drop its part from every document.
TEMPLATE_FIELDS = frozenset(set(CATALOG.names) - {"document", "content_hash"} | DERIVED_FIELDS)


def _money(value: Any) -> str | None:
    if not _present(value) or float(value) <= 0:
        return None
    v = float(value)
    for unit, div in (("billion", 1e9), ("million", 1e6), ("thousand", 1e3)):
        if v >= div:
            return f"${v / div:.1f} {unit}"
    return f"${v:.0f}"


def _fold(title: Any) -> str:
    return " ".join(str(title).casefold().split())


def _other_title(original: Any, title: Any) -> str | None:
    if not _present(original) or (_present(title) and _fold(original) == _fold(title)):
        return None
    return str(original)


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    if isinstance(value, str) and not value.strip():
        return False
    return not (isinstance(value, (list, tuple)) and len(value) == 0)


def _render(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value).strip()


def template_fields(part: str) -> list[str]:
    return [
        m.group("named") or m.group("braced")
        for m in Template.pattern.finditer(part)
        if m.group("named") or m.group("braced")
    ]


class DocumentBuilder:
    """Builds documents from normalised catalog rows with a fixed list of template parts."""

    def __init__(self, cfg: TextConfig):
        self.parts = [(Template(p), template_fields(p)) for p in cfg.parts]
        used = {f for _, fields in self.parts for f in fields}
        unknown = used - TEMPLATE_FIELDS
        if unknown:
            raise TemplateError(f"text.parts uses unknown field(s) {sorted(unknown)}; known: {sorted(TEMPLATE_FIELDS)}")
        leaked = used & LABEL_FIELDS
        if leaked and not cfg.include_genres:
            raise TemplateError(
                f"text.parts uses {sorted(leaked)}: the genre labels are what the classifier predicts, so they "
                "must not be in its input (set text.include_genres: true to allow it, e.g. for a retrieval-only run)"
            )
        self.include_genres = cfg.include_genres

    def __call__(self, row: Mapping[str, Any]) -> str:
        values = {k: v for k, v in row.items() if k not in LABEL_FIELDS or self.include_genres}
        values["budget_text"] = _money(row.get("budget"))
        values["revenue_text"] = _money(row.get("revenue"))
        values["original_title_text"] = _other_title(row.get("original_title"), row.get("title"))
        out = []
        for template, fields in self.parts:
            present = {f: _render(values[f]) for f in fields if _present(values.get(f))}
            if fields and not present:
                continue
            if len(present) < len(fields):
                # A part is one sentence about some fields; half-filled it reads as noise to the encoder.
                continue
            out.append(template.safe_substitute(present))
        return _squash(" ".join(out))

    def build_many(self, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        return [self(r) for r in rows]


_WS = re.compile(r"\s+")


def _squash(text: str) -> str:
    return _WS.sub(" ", text).strip()


def content_hash(document: str, encoder_id: str) -> str:
    """Changes when the document or the encoder changes: the key for incremental re-embedding."""
    h = hashlib.sha256()
    h.update(encoder_id.encode("utf-8"))
    h.update(b"\x00")
    h.update(document.encode("utf-8"))
    return h.hexdigest()[:32]


def encoder_id(model: str, max_length: int, pooling: str, normalize: bool, backend: str = "torch") -> str:
    """Everything about the encoder that changes its output; part of every content hash.

    A non-default backend (onnx-int8) is appended, so the stored `encoder_id` tells the embed stage which rows
    were made by another backend; torch keeps the historical id, so existing stores stay valid."""
    base = f"{model}|len={max_length}|pool={pooling}|norm={int(normalize)}"
    return base if backend == "torch" else f"{base}|backend={backend}"
