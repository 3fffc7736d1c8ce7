"""The plain reading of an OTLP/JSON span (llm.otlp.plain_span) against protobuf's JSON mapping:
for any span, either the plain reading leaves it to json_format (adds nothing), or json_format
reads the same span into exactly the same message. Spans of the usual form take the plain path."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans

from llm import otlp

BOUNDED = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

TEXT = st.one_of(
    st.sampled_from(["", "x", "chat llama", "é" * 3, "a\ud800", "\x00", "SPAN_KIND_CLIENT", "STATUS_CODE_ERROR"]),
    st.sampled_from(["0", "12", "-12", "+12", "012", "1_000", " 12", "1e3", "18446744073709551615"]),
    st.sampled_from(["18446744073709551616", "9223372036854775807", "-9223372036854775808", "-9223372036854775809"]),
    st.sampled_from(["0123456789abcdef", "0123456789ABCDEF" * 2, "abc", "zz", "ab cd", "NaN", "Infinity"]),
    st.text(max_size=8),
)
NUMBER = st.one_of(
    st.sampled_from([0, 1, -1, 2, 3, 5, 6, 7, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1]),
    st.sampled_from([0.0, 1.0, 1.5, -2.5, 1e300, 2.0**53, 2.0**53 * 2]),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)
SCALAR = st.one_of(st.none(), st.booleans(), TEXT, NUMBER, st.just([]), st.just({}))
VALUE = st.one_of(
    st.dictionaries(
        st.sampled_from(["stringValue", "intValue", "doubleValue", "boolValue", "bytesValue", "arrayValue"]),
        SCALAR,
        min_size=0,
        max_size=2,
    ),
    SCALAR,
)
ATTRIBUTE = st.one_of(
    st.fixed_dictionaries({"key": TEXT, "value": VALUE}),
    st.dictionaries(st.sampled_from(["key", "value", "other"]), SCALAR, max_size=3),
)
FIELDS = {
    "traceId": st.one_of(TEXT, SCALAR),
    "spanId": st.one_of(TEXT, SCALAR),
    "parentSpanId": st.one_of(TEXT, SCALAR),
    "name": st.one_of(TEXT, SCALAR),
    "kind": st.one_of(NUMBER, TEXT, SCALAR),
    "startTimeUnixNano": st.one_of(TEXT, NUMBER, SCALAR),
    "endTimeUnixNano": st.one_of(TEXT, NUMBER, SCALAR),
    "attributes": st.one_of(st.lists(ATTRIBUTE, max_size=4), SCALAR),
    "status": st.one_of(
        st.dictionaries(st.sampled_from(["code", "message", "other"]), st.one_of(NUMBER, TEXT, SCALAR), max_size=3),
        SCALAR,
    ),
    "traceState": TEXT,
    "trace_id": TEXT,
    "events": st.just([]),
}


def usual_span(index: int = 0) -> dict:
    """A span as the hot-path bench and OTel exporters send it."""
    return {
        "traceId": "5b8aa5a2d2c872e8321cf37308d69df2",
        "spanId": "051581bf3cb55c13",
        "parentSpanId": "",
        "name": "chat llama-3.1-8b-instant",
        "kind": 3,
        "startTimeUnixNano": "1732972800000000000",
        "endTimeUnixNano": str(1732972800250000000 + index),
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": str(120 + index)}},
            {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 40}},
            {"key": "gen_ai.request.temperature", "value": {"doubleValue": 0.7}},
            {"key": "streamed", "value": {"boolValue": True}},
        ],
        "status": {"code": 2, "message": "boom"} if index % 2 else {},
    }


def by_json_format(span_json: object) -> bytes | None:
    """The span as the JSON mapping reads it (serialized), or None when it refuses it: what
    `otlp._parse_span` does for a span the plain reading leaves to it."""
    if not isinstance(span_json, dict):
        return None
    span = ScopeSpans().spans.add()
    try:
        item = copy.deepcopy(span_json)
        otlp._convert_ids(item)
        otlp.json_format.ParseDict(item, span, ignore_unknown_fields=True)
    except otlp.JSON_MAPPING_ERRORS:
        return None
    return span.SerializeToString(deterministic=True)


def by_plain_reading(span_json: object) -> bytes | None:
    scope = ScopeSpans()
    if not otlp.plain_span(copy.deepcopy(span_json), scope):
        assert len(scope.spans) == 0  # nothing left behind
        return None
    return scope.spans[0].SerializeToString(deterministic=True)


def assert_agrees(span_json: object) -> None:
    plain = by_plain_reading(span_json)
    if plain is not None:
        assert by_json_format(span_json) == plain, span_json


@BOUNDED
@given(st.fixed_dictionaries({}, optional=FIELDS))
def test_the_plain_reading_never_takes_what_json_format_refuses_nor_reads_it_otherwise(span_json):
    assert_agrees(span_json)


@BOUNDED
@given(st.sampled_from(sorted(FIELDS)), st.one_of(*FIELDS.values()))
def test_any_value_of_a_field_in_a_usual_span_agrees(name, value):
    assert_agrees(usual_span() | {name: value})


@pytest.mark.parametrize("index", [0, 1])
def test_usual_spans_take_the_plain_path_with_json_formats_message(index):
    span_json = json.loads(json.dumps(usual_span(index)))
    plain = by_plain_reading(span_json)
    assert plain is not None
    assert plain == by_json_format(span_json)


def test_an_export_mixing_plain_and_unusual_spans_keeps_order_and_rejects_only_the_bad():
    unusual = usual_span() | {"kind": "SPAN_KIND_SERVER", "spanId": "1111111111111111"}  # an enum by name
    bad = usual_span() | {"name": "a\ud800", "spanId": "2222222222222222"}
    document = {"resourceSpans": [{"scopeSpans": [{"spans": [usual_span(0), unusual, bad, usual_span(1)]}]}]}
    decoded = otlp._request_from_json(document)
    spans = decoded.message.resource_spans[0].scope_spans[0].spans
    assert [span.kind for span in spans] == [3, 2, 3]
    assert [span.span_id.hex() for span in spans] == ["051581bf3cb55c13", "1111111111111111", "051581bf3cb55c13"]
    assert len(decoded.rejected) == 1 and decoded.rejected[0].startswith("span 2222222222222222:")
    assert spans[2].status.code == 2 and spans[2].status.message == "boom"
