"""The plain check of a batch's events (llm.events.plain_event) against EventSerializer: for any
event, either the plain check leaves it to the serializer (None), or the serializer finds it valid
with exactly the same validated data. Valid events of the usual forms take the plain path."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm.events import PLAIN_FIELDS, parse_events, plain_event
from llm.models import LLMRequestLog
from llm.serializers import EventSerializer

pytestmark = pytest.mark.one_database  # the plain check and the serializer's validation, no database

BOUNDED = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NOW = timezone.now()

# Values near every edge EventSerializer has: types, blanks, whitespace, lengths, bounds, nulls,
# NUL and surrogates, other UUID and time spellings, numbers as text.
EDGE_TEXT = st.sampled_from(
    ["", " ", "  x  ", "x", "a" * 32, "A" * 16, "f" * 33, "0" * 16 + "\n", "\x00", "a\ud800", "é" * 64, "x" * 65]
    + ["x" * 200, "x" * 201, "x" * 10_000, "x" * 10_001, "success", "error", "timeout", "other", "SUCCESS"]
    + [str(uuid.uuid4()), "{" + str(uuid.uuid4()) + "}", uuid.uuid4().hex, "urn:uuid:" + str(uuid.uuid4())]
    + [(NOW - timedelta(days=3)).isoformat(), (NOW + timedelta(minutes=4)).isoformat()]
    + [(NOW + timedelta(minutes=6)).isoformat(), "1969-12-31T23:59:59Z", "1970-01-01T00:00:00Z"]
    + ["2024-05-01T10:00:00", "2024-05-01 10:00", "2024-05-01", "1.5", "12", "0.0000000001", "1e3", "NaN"]
)
EDGE_NUMBERS = st.sampled_from(
    [0, 1, -1, 2, 3, 0.5, 2.0, 2.0000001, -0.0, 1.5e-11, 86_400_000, 86_400_000.5, 2**31 - 1, 2**31, 2**53 + 1]
    + [10**30, 1e308, 1_000_000, 1_000_000.0000000001, 0.00000000015, 12.34567890123]
)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    EDGE_TEXT,
    EDGE_NUMBERS,
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.dictionaries(st.sampled_from(["", "k", "x" * 101, "\x00"]), st.sampled_from(["", "v", "x" * 501]), max_size=3),
    st.lists(st.integers(), max_size=2),
)
NAMES = [field.name for field in PLAIN_FIELDS]


def serializer_answer(event):
    serializer = EventSerializer(data=event)
    return dict(serializer.validated_data) if serializer.is_valid() else None


def assert_agrees(event) -> None:
    plain = plain_event(event)
    if plain is not None:
        # Through JSON, as the API reads it: the same values a request would carry.
        assert serializer_answer(event) == plain, event


@BOUNDED
@given(st.dictionaries(st.sampled_from([*NAMES, "unknown_key"]), VALUES, max_size=12))
def test_the_plain_check_never_accepts_what_the_serializer_refuses_nor_changes_a_value(event):
    assert_agrees(event)


@BOUNDED
@given(st.sampled_from(NAMES), VALUES)
def test_any_value_of_a_field_in_a_good_event_agrees(name, value):
    assert_agrees({"model": "llama-3.1-8b-instant", "prompt_tokens": 10, "latency_ms": 50} | {name: value})


USUAL_EVENTS = [
    {"model": "m"},
    {
        "request_id": str(uuid.uuid4()),
        "timestamp": (NOW - timedelta(hours=1)).isoformat(),
        "model": "llama-3.1-8b-instant",
        "provider": "groq",
        "prompt_tokens": 120,
        "completion_tokens": 40,
        "total_tokens": 160,
        "latency_ms": 812.5,
        "ttft_ms": 90,
        "status": "success",
        "cost_usd": 0.00012,
        "user_id": " alice ",
        "session_id": "s-1",
        "prompt": "  Hello  ",
        "response": "World",
        "finish_reason": "stop",
        "temperature": 0.7,
        "max_tokens": 256,
        "trace_id": "0123456789abcdef0123456789ABCDEF",
        "span_id": "0123456789abcdef",
        "parent_span_id": "",
        "tags": {"team": "search"},
        "something_else": [1, 2],
    },
    {"model": "m", "status": "error", "error_message": "boom", "timestamp": "2024-05-01T10:00:00Z"},
    {"model": "m", "error_type": "timeout", "ttft_ms": None, "cost_usd": "1.25", "temperature": None},
]


@pytest.mark.parametrize("event", USUAL_EVENTS)
def test_usual_valid_events_take_the_plain_path_with_the_serializers_values(event):
    plain = plain_event(json.loads(json.dumps(event)))
    assert plain is not None
    assert plain == serializer_answer(event)


def test_a_batch_mixing_plain_and_unusual_events_keeps_order_and_values():
    braces = "{" + str(uuid.uuid4()) + "}"  # a UUID form only the serializer reads
    events = [USUAL_EVENTS[1], {"model": "m", "request_id": braces}, USUAL_EVENTS[2]]
    assert plain_event(events[1]) is None
    validated = parse_events({"events": events})
    assert [dict(data) for data in validated] == [serializer_answer(event) for event in events]
    assert validated[1]["request_id"] == uuid.UUID(braces)
    assert validated[0]["cost_usd"] == Decimal("0.0001200000")
    assert validated[2]["status"] == LLMRequestLog.Status.ERROR


def test_errors_name_the_event_by_its_index_in_the_whole_batch():
    events = [{"model": "m"}] * 3 + [{"model": "m", "prompt_tokens": -1}, {"model": "m"}, {"model": ""}]
    with pytest.raises(Exception) as raised:
        parse_events({"events": events})
    detail = raised.value.detail["events"]
    assert sorted(detail) == [3, 5]
    assert detail[3] == {"prompt_tokens": ["Ensure this value is greater than or equal to 0."]}
    assert detail[5] == {"model": ["This field may not be blank."]}


def _row_by_keywords(data: dict) -> LLMRequestLog:
    """What log_from_event made before it built rows by position: Django's keyword constructor."""
    from llm.ingest_limits import fill_ids_from_tags

    log = LLMRequestLog(
        request_id=data["request_id"],
        timestamp=data["timestamp"],
        source=LLMRequestLog.Source.API,
        provider=data["provider"],
        model_name=data["model"],
        user_id=data.get("user_id", ""),
        session_id=data.get("session_id", ""),
        trace_id=data.get("trace_id", "").lower(),
        span_id=data.get("span_id", "").lower(),
        parent_span_id=data.get("parent_span_id", "").lower(),
        prompt_text=data.get("prompt", ""),
        response_text=data.get("response", ""),
        prompt_tokens=data["prompt_tokens"],
        completion_tokens=data["completion_tokens"],
        total_tokens=data.get("total_tokens") or data["prompt_tokens"] + data["completion_tokens"],
        cached_tokens=data.get("cached_tokens", 0),
        latency_ms=data["latency_ms"],
        ttft_ms=data.get("ttft_ms"),
        cost_estimate=data.get("cost_usd"),
        status=data["status"],
        error_type=data["error_type"],
        error_message=data.get("error_message", ""),
        finish_reason=data.get("finish_reason", ""),
        temperature=data.get("temperature"),
        max_tokens=data.get("max_tokens"),
        tags=data.get("tags", {}),
    )
    fill_ids_from_tags(log)
    return log


@pytest.mark.parametrize(
    "event",
    [
        {"model": "m", "provider": "groq"},
        {
            "model": "m",
            "provider": "groq",
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "latency_ms": 12.5,
            "ttft_ms": 2,
            "status": "error",
            "error_type": "timeout",
            "error_message": "slow",
            "trace_id": "A" * 32,
            "span_id": "B" * 16,
            "prompt": "p",
            "response": "r",
            "temperature": 0.5,
            "max_tokens": 10,
            "cost_usd": "0.25",
            "finish_reason": "stop",
            "cached_tokens": 1,
            "tags": {"user_id": "from-tag", "session_id": "session-tag", "team": "x"},
        },
    ],
)
def test_a_row_built_by_position_equals_the_keyword_built_one(event):
    from llm.events import ROW_SHAPE, log_from_event

    data = parse_events({"events": [{"request_id": str(uuid.uuid4()), "timestamp": NOW.isoformat(), **event}]})[0]
    built, expected = log_from_event(data), _row_by_keywords(data)
    for field in LLMRequestLog._meta.concrete_fields:
        assert getattr(built, field.attname) == getattr(expected, field.attname), field.attname
    assert built._state.adding and built.pk is None
    # Defaults made afresh for each row: two rows never share a mutable default or a request_id.
    first, second = ROW_SHAPE.row({}), ROW_SHAPE.row({})
    assert first.tags == {} and first.tags is not second.tags
    assert first.request_id != second.request_id


def test_a_time_with_an_offset_is_in_the_current_zone_as_the_serializer_answers_it():
    # The plain check reads the zone once per batch; the serializer asks for it per value.
    with timezone.override("America/New_York"):
        for text in ["2024-05-01T10:00:00+02:00", "2024-05-01T10:00:00.123456Z", "2024-12-01T23:30:00-08:00"]:
            event = {"model": "m", "timestamp": text}
            plain, expected = plain_event(event), serializer_answer(event)
            assert plain is not None and plain == expected
            assert plain["timestamp"].tzinfo == expected["timestamp"].tzinfo
            assert str(plain["timestamp"].tzinfo) == "America/New_York"
        # A time without an offset is made aware in the zone by the serializer (gaps checked there).
        assert plain_event({"model": "m", "timestamp": "2024-05-01T10:00:00"}) is None
        batch = parse_events({"events": [{"model": "m", "timestamp": "2024-03-10T02:30:00"}, {"model": "m"}]})
        assert batch[0] == serializer_answer({"model": "m", "timestamp": "2024-03-10T02:30:00"})


def test_a_row_is_made_through_the_constructor_when_someone_listens_to_its_signals():
    from django.db.models.signals import post_init

    from llm.events import ROW_SHAPE

    seen = []

    def listener(sender, instance, **kwargs):
        seen.append(instance.model_name)

    post_init.connect(listener, sender=LLMRequestLog)
    try:
        ROW_SHAPE.row({"model_name": "heard"})
    finally:
        post_init.disconnect(listener, sender=LLMRequestLog)
    ROW_SHAPE.row({"model_name": "unheard"})
    assert seen == ["heard"]
