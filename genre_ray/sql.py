"""SQL filter strings for Lance scans, deletes and merges: the one place catalog values are quoted.

Catalog text is data, never SQL: every value goes through `sql_str`, which doubles single quotes.
"""

from __future__ import annotations

from collections.abc import Iterable


def sql_str(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def sql_in(column: str, values: Iterable[object]) -> str:
    return f"{column} IN ({', '.join(sql_str(v) for v in values)})"
