"""The CLI's ``--json`` output: the fast writer for lists of flat objects prints exactly what
``json.dumps(indent=2)`` prints, whatever the strings hold."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from goldfleet.cli.output import dumps, list_items

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    # what would fool a careless rewrite: separators and brackets inside strings
    st.sampled_from(["},\n    {", "}", "{", "},", '"', "\\", "\n", "[{", "}]", "\u2028", "é"]),
)
rows = st.dictionaries(st.text(), scalars, min_size=1, max_size=6)


@given(st.lists(rows, min_size=1, max_size=8))
def test_flat_rows_match_the_python_encoder(data: list[dict]) -> None:
    assert dumps(data) == json.dumps(data, indent=2, default=str)


@given(
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=12,
    )
)
def test_anything_else_matches_the_python_encoder(data: object) -> None:
    assert dumps(data) == json.dumps(data, indent=2, default=str)


def test_a_clone_list_reads_back_as_itself() -> None:
    clones = [
        {"name": f"web-{i:03d}", "version": 1, "error": None, "note": "a},\n    {b"}
        for i in range(3)
    ]
    clones[1]["ratio"] = math.pi
    text = dumps(clones)
    assert json.loads(text) == clones
    assert text.startswith('[\n  {\n    "name": "web-000",\n')
    assert text.endswith("\n  }\n]")


items = st.one_of(
    rows,
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=6,
    ),
)


@given(st.lists(st.lists(items, min_size=1, max_size=4), max_size=4))
def test_a_list_written_page_by_page_is_the_whole_list(pages: list[list]) -> None:
    """``clone list --json`` formats each page as it arrives (cli/fastpath.py): the pages'
    parts put together are what the whole list prints, flat pages or not."""
    parts = [list_items(page) for page in pages]
    text = "[\n" + ",\n".join(parts) + "\n]" if parts else "[]"
    whole = [item for page in pages for item in page]
    assert text == json.dumps(whole, indent=2, default=str) == dumps(whole)
