"""Title lookups compare one normalised key, computed by one function on the write path and the query path."""

import pyarrow as pa
import pytest

from genre_ray.store import title_key
from genre_ray.store.tables import with_title_key

# A title as a catalog wrote it, and as a user types it: no-break space (U+00A0), em space (U+2003), ideographic
# space (U+3000), tabs, newlines and case all fold to the same key.
SPELLINGS = [
    ("Alien\u00a0Resurrection", "alien resurrection"),
    ("  The\u2003Dark   Knight\t", "the dark knight"),
    ("Crouching\u3000Tiger,\nHidden Dragon", "crouching tiger, hidden dragon"),
    ("AMÉLIE", "amélie"),
]


@pytest.mark.parametrize(("written", "typed"), SPELLINGS)
def test_a_title_with_unicode_spaces_is_found_as_typed(written: str, typed: str) -> None:
    served = with_title_key(pa.table({"title": [written]}))["title_key"][0].as_py()
    assert served == title_key(typed) == title_key(written)


def test_the_served_key_replaces_a_stale_one() -> None:
    batch = pa.table({"title": ["Heat\u00a0 2"], "title_key": ["stale"]})
    assert with_title_key(batch)["title_key"].to_pylist() == ["heat 2"]
