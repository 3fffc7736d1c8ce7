"""POST /api/events/ with generated JSON (hypothesis): any value as the body, as an event, or as a
field of an otherwise good event answers 201 or 400, never 500, and a 400 stores nothing."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm.models import LLMRequestLog

pytestmark = pytest.mark.django_db

URL = "/api/events/"
BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "request_id",
    "timestamp",
    "model",
    "provider",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "latency_ms",
    "ttft_ms",
    "status",
    "error_type",
    "error_message",
    "cost_usd",
    "user_id",
    "session_id",
    "prompt",
    "response",
    "tags",
    "temperature",
    "max_tokens",
    "trace_id",
    "span_id",
    "finish_reason",
]


def good_event() -> dict:
    return {"request_id": str(uuid.uuid4()), "model": "llama-3.1-8b-instant", "prompt_tokens": 10, "latency_ms": 50}


def post(client, payload):
    return client.post(URL, json.dumps(payload), content_type="application/json")


def assert_created_or_refused(client, payload) -> None:
    before = LLMRequestLog.objects.count()
    response = post(client, payload)
    assert response.status_code in (201, 400), (payload, response.status_code, response.content[:300])
    if response.status_code == 400:
        assert LLMRequestLog.objects.count() == before


@BOUNDED
@given(JSON_VALUES)
def test_any_json_body_answers_201_or_400(api_client, body):
    assert_created_or_refused(api_client, body)


@BOUNDED
@given(JSON_VALUES)
def test_any_json_value_in_a_batch_answers_201_or_400(api_client, event):
    assert_created_or_refused(api_client, {"events": [good_event(), event]})


@BOUNDED
@given(field=st.sampled_from(FIELDS), value=JSON_VALUES)
def test_any_value_of_any_field_answers_201_or_400(api_client, field, value):
    assert_created_or_refused(api_client, good_event() | {field: value})
