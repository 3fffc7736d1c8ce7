"""How deep a JSON body nests (llm.ingest_limits.json_depth, walked level by level) equals a plain
recursive definition, whatever the document; parse_json refuses just past MAX_JSON_DEPTH and
measures no further than needed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm.ingest_limits import MAX_JSON_DEPTH, JSONError, json_depth, parse_json

DOCUMENTS = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(alphabet='[]{}"\\ a', max_size=6)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=40,
)


def recursive_depth(value: object) -> int:
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return 0
    return 1 + max((recursive_depth(child) for child in value), default=0)


@settings(max_examples=300, deadline=None)
@given(DOCUMENTS)
def test_the_depth_equals_the_recursive_definition(document):
    assert json_depth(document) == recursive_depth(document)
    assert json_depth(json.loads(json.dumps(document))) == recursive_depth(document)


def test_parse_json_takes_the_limit_and_refuses_one_level_past_it():
    at_limit = '{"s": "]]]]", "d": ' + "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1) + "}"
    assert json_depth(parse_json(at_limit)) == MAX_JSON_DEPTH
    with pytest.raises(JSONError, match="levels deep"):
        parse_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))


def test_a_very_deep_document_is_measured_only_past_the_limit():
    deep: list = []
    for _ in range(50_000):  # deeper than Python's recursion would go
        deep = [deep]
    assert json_depth(deep) == MAX_JSON_DEPTH + 1
