"""How deep a JSON body nests, read from its text (llm.ingest_limits.json_text_depth), equals
json_depth's walk of the parsed document, whatever its strings hold (brackets, quotes, escapes,
any character), in str and in UTF-8 bytes; parse_json refuses just past MAX_JSON_DEPTH."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm.ingest_limits import MAX_JSON_DEPTH, JSONError, json_depth, json_text_depth, parse_json

TRICKY_TEXT = st.one_of(st.text(alphabet='[]{}"\\/ ,:aé\u2028\x00\n', max_size=12), st.text(max_size=6))
DOCUMENTS = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), TRICKY_TEXT),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(TRICKY_TEXT, children, max_size=4)),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(DOCUMENTS, st.booleans(), st.booleans())
def test_the_depth_read_from_the_text_equals_the_walk(document, ensure_ascii, as_bytes):
    text = json.dumps(document, ensure_ascii=ensure_ascii)
    read = json_text_depth(text.encode("utf-8", "surrogatepass") if as_bytes else text)
    assert read == json_depth(json.loads(text))


def test_bytes_in_another_encoding_are_left_to_the_walk():
    text = json.dumps({"a": [[1]]})
    assert json_text_depth(text.encode("utf-16")) is None
    assert parse_json(text.encode("utf-16")) == {"a": [[1]]}


@pytest.mark.parametrize("as_bytes", [False, True])
def test_parse_json_refuses_one_level_past_the_limit(as_bytes):
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    past = '{"s": "]]]]", "d": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}"
    assert json_depth(parse_json(at_limit.encode() if as_bytes else at_limit)) == MAX_JSON_DEPTH
    with pytest.raises(JSONError, match="levels deep"):
        parse_json(past.encode() if as_bytes else past)
