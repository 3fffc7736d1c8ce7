"""POST /api/events/: calls reported by other applications."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from llm.api.ingest import MAX_BODY_BYTES
from llm.models import LLMRequestLog

pytestmark = pytest.mark.django_db

URL = "/api/events/"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def make_event(**overrides) -> dict:
    event = {
        "request_id": str(uuid.uuid4()),
        "timestamp": "2025-06-01T11:59:00Z",
        "model": "llama-3.3-70b-versatile",
        "provider": "groq",
        "prompt_tokens": 2_000,
        "completion_tokens": 1_000,
        "latency_ms": 812.5,
        "ttft_ms": 120.0,
        "user_id": "u-7",
        "session_id": "s-7",
        "prompt": "Summarise this.",
        "response": "A summary.",
        "finish_reason": "stop",
        "tags": {"feature": "summary"},
    }
    event.update(overrides)
    return event


def post(client, payload, **extra):
    return client.post(URL, json.dumps(payload), content_type="application/json", **extra)


@pytest.fixture(autouse=True)
def _frozen_clock():
    # The "not in the future" rule compares with now; fix now so the cases do not depend on the day.
    with time_machine.travel(NOW, tick=False):
        yield


def test_single_event_is_stored_with_every_field(api_client):
    event = make_event(temperature=0.3, max_tokens=256, trace_id="AB" * 16, span_id="cd" * 8)
    response = post(api_client, event)
    assert response.status_code == 201, response.content
    assert response.json() == {"created": 1, "duplicates": 0, "request_ids": [event["request_id"]]}

    row = LLMRequestLog.objects.get(request_id=event["request_id"])
    assert row.source == "api" and row.provider == "groq" and row.model_name == "llama-3.3-70b-versatile"
    assert row.timestamp == datetime(2025, 6, 1, 11, 59, tzinfo=UTC)
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (2_000, 1_000, 3_000)
    assert (row.latency_ms, row.ttft_ms) == (812.5, 120.0)
    assert (row.user_id, row.session_id, row.tags) == ("u-7", "s-7", {"feature": "summary"})
    assert (row.prompt_text, row.response_text, row.finish_reason) == ("Summarise this.", "A summary.", "stop")
    assert (row.temperature, row.max_tokens) == (0.3, 256)
    assert (row.trace_id, row.span_id, row.parent_span_id) == ("ab" * 16, "cd" * 8, "")
    assert (row.status, row.error_type, row.error_message) == ("success", "", "")


def test_cost_is_computed_from_the_price_table_when_absent(api_client):
    event = make_event()
    assert post(api_client, event).status_code == 201
    # 2,000 × 0.59 + 1,000 × 0.79 per million (SPEC's price for llama-3.3-70b-versatile).
    expected = (2_000 * Decimal("0.59") + 1_000 * Decimal("0.79")) / 1_000_000
    assert LLMRequestLog.objects.get(request_id=event["request_id"]).cost_estimate == expected == Decimal("0.00197")


def test_a_supplied_cost_is_kept(api_client):
    event = make_event(cost_usd="0.0123")
    assert post(api_client, event).status_code == 201
    assert LLMRequestLog.objects.get(request_id=event["request_id"]).cost_estimate == Decimal("0.0123")


def test_minimal_event_gets_defaults(api_client):
    response = post(api_client, {"model": "some-model"})
    assert response.status_code == 201, response.content
    row = LLMRequestLog.objects.get(request_id=response.json()["request_ids"][0])
    assert row.timestamp == NOW and row.provider == "unknown" and row.source == "api"
    assert (row.total_tokens, row.cost_estimate, row.status, row.tags) == (0, Decimal(0), "success", {})


def test_only_a_total_is_accepted_and_kept(api_client):
    response = post(api_client, {"model": "m", "total_tokens": 90})
    assert response.status_code == 201, response.content
    row = LLMRequestLog.objects.get()
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (0, 0, 90)


def test_error_event_without_status_is_an_error_and_status_error_defaults_to_other(api_client):
    first = make_event(error_type="rate_limit", error_message="429 from upstream")
    second = make_event(status="error")
    response = post(api_client, {"events": [first, second]})
    assert response.status_code == 201, response.content
    rows = {str(row.request_id): row for row in LLMRequestLog.objects.all()}
    assert (rows[first["request_id"]].status, rows[first["request_id"]].error_type) == ("error", "rate_limit")
    assert rows[first["request_id"]].error_message == "429 from upstream"
    assert (rows[second["request_id"]].status, rows[second["request_id"]].error_type) == ("error", "other")


def test_batch_stores_every_event(api_client):
    events = [make_event(prompt_tokens=i, completion_tokens=2 * i) for i in range(1, 251)]
    response = post(api_client, {"events": events})
    assert response.status_code == 201
    assert response.json() == {"created": 250, "duplicates": 0, "request_ids": [e["request_id"] for e in events]}
    assert LLMRequestLog.objects.filter(source="api").count() == 250
    assert LLMRequestLog.objects.get(request_id=events[9]["request_id"]).total_tokens == 30


def test_a_repeated_request_id_is_stored_once(api_client):
    events = [make_event() for _ in range(3)]
    assert post(api_client, {"events": events[:2]}).json()["created"] == 2
    # A retry of the whole batch plus one new event; and a repeat inside the batch itself.
    response = post(api_client, {"events": [*events, events[2]]})
    assert response.status_code == 201
    assert (response.json()["created"], response.json()["duplicates"]) == (1, 3)
    again = post(api_client, events[0])
    assert again.status_code == 200 and (again.json()["created"], again.json()["duplicates"]) == (0, 1)
    assert LLMRequestLog.objects.count() == 3


def test_batch_with_any_bad_event_stores_nothing_and_names_each_index(api_client):
    events = [make_event() for _ in range(5)]
    events[1]["prompt_tokens"] = -1
    events[3]["status"] = "maybe"
    events[3]["tags"] = {"a": 1}
    events[4] = "not an object"
    response = post(api_client, {"events": events})
    assert response.status_code == 400
    errors = response.json()["fields"]["events"]
    assert set(errors) == {"1", "3", "4"}
    assert set(errors["1"]) == {"prompt_tokens"}
    assert set(errors["3"]) == {"status", "tags"}
    assert set(errors["4"]) == {"non_field_errors"}
    assert LLMRequestLog.objects.count() == 0


LONG = "x" * 100_001
# (field overrides, field named in the 400 answer)
INVALID_EVENTS = [
    ({"model": None}, "model"),
    ({"model": ""}, "model"),
    ({"model": "m" * 201}, "model"),
    ({"model": 42}, "model"),
    ({"request_id": "not-a-uuid"}, "request_id"),
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"timestamp": 1717243200}, "timestamp"),
    ({"timestamp": "2025-06-01T12:06:00Z"}, "timestamp"),  # 6 minutes ahead: past the tolerance
    ({"prompt_tokens": -1}, "prompt_tokens"),
    ({"prompt_tokens": "many"}, "prompt_tokens"),
    ({"prompt_tokens": 1.5}, "prompt_tokens"),
    ({"prompt_tokens": "12"}, "prompt_tokens"),
    ({"prompt_tokens": True}, "prompt_tokens"),
    ({"prompt_tokens": 2**31}, "prompt_tokens"),
    ({"completion_tokens": -5}, "completion_tokens"),
    ({"total_tokens": 10}, "total_tokens"),  # 2,000 + 1,000 were sent
    ({"total_tokens": -1}, "total_tokens"),
    ({"latency_ms": -0.1}, "latency_ms"),
    ({"latency_ms": "fast"}, "latency_ms"),
    ({"latency_ms": False}, "latency_ms"),
    ({"latency_ms": 86_400_001}, "latency_ms"),
    ({"ttft_ms": -1}, "ttft_ms"),
    ({"ttft_ms": 900.0}, "ttft_ms"),  # after the call ended (latency 812.5)
    ({"status": "ok"}, "status"),
    ({"error_type": "gremlins", "status": "error"}, "error_type"),
    ({"error_type": "timeout", "status": "success"}, "error_type"),
    ({"error_message": "e" * 10_001}, "error_message"),
    ({"cost_usd": -0.01}, "cost_usd"),
    ({"cost_usd": "free"}, "cost_usd"),
    ({"user_id": "u" * 201}, "user_id"),
    ({"session_id": "s" * 201}, "session_id"),
    ({"provider": "p" * 65}, "provider"),
    ({"prompt": LONG}, "prompt"),
    ({"response": LONG}, "response"),
    ({"prompt": 42}, "prompt"),
    ({"finish_reason": "f" * 33}, "finish_reason"),
    ({"temperature": 3}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"trace_id": "xyz"}, "trace_id"),
    ({"span_id": "ab" * 16}, "span_id"),
    ({"parent_span_id": "12345"}, "parent_span_id"),
    ({"tags": ["a"]}, "tags"),
    ({"tags": {"a": 1}}, "tags"),
    ({"tags": {"k": "v" * 501}}, "tags"),
    ({"tags": {f"k{i}": "v" for i in range(51)}}, "tags"),
]


@pytest.mark.parametrize(("overrides", "field"), INVALID_EVENTS)
def test_invalid_field_is_named_and_nothing_is_stored(api_client, overrides, field):
    single = post(api_client, make_event(**overrides))
    assert single.status_code == 400, single.content
    assert single.json()["error"] == "Invalid input."
    assert set(single.json()["fields"]) == {field}

    batch = post(api_client, {"events": [make_event(), make_event(**overrides), make_event()]})
    assert batch.status_code == 400
    assert batch.json()["fields"] == {"events": {"1": {field: single.json()["fields"][field]}}}
    assert LLMRequestLog.objects.count() == 0


def test_timestamp_within_the_tolerance_is_accepted(api_client):
    response = post(api_client, make_event(timestamp="2025-06-01T12:04:59+00:00"))
    assert response.status_code == 201, response.content


def test_timestamp_with_an_offset_is_stored_in_utc(api_client):
    event = make_event(timestamp="2025-06-01T13:30:00+02:00")
    assert post(api_client, event).status_code == 201
    assert LLMRequestLog.objects.get().timestamp == datetime(2025, 6, 1, 11, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([make_event()], "non_field_errors"),
        ("just a string", "non_field_errors"),
        ({"events": []}, "events"),
        ({"events": {"0": {}}}, "events"),
        ({"events": [{"model": "m"}] * 1_001}, "events"),
    ],
)
def test_malformed_envelope_is_refused(api_client, payload, field):
    response = post(api_client, payload)
    assert response.status_code == 400
    assert set(response.json()["fields"]) == {field}
    assert LLMRequestLog.objects.count() == 0


def test_a_batch_of_exactly_1000_is_accepted(api_client):
    events = [{"model": "m", "request_id": str(uuid.uuid4())} for _ in range(1_000)]
    response = post(api_client, {"events": events})
    assert response.status_code == 201 and response.json()["created"] == 1_000


def test_malformed_json_is_400(api_client):
    response = api_client.post(URL, b'{"model": ', content_type="application/json")
    assert response.status_code == 400 and "Malformed JSON" in response.json()["error"]


def test_form_encoded_body_is_415(api_client):
    response = api_client.post(URL, "model=m", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415


def test_gzip_body_is_accepted(api_client):
    events = [make_event() for _ in range(3)]
    body = gzip.compress(json.dumps({"events": events}).encode())
    response = api_client.post(URL, body, content_type="application/json", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 201 and response.json()["created"] == 3


def test_unknown_content_encoding_is_415(api_client):
    response = post(api_client, make_event(), HTTP_CONTENT_ENCODING="br")
    assert response.status_code == 415


def test_body_over_the_limit_is_413_even_beyond_djangos_upload_limit(api_client, settings):
    assert MAX_BODY_BYTES > settings.DATA_UPLOAD_MAX_MEMORY_SIZE  # 10 MiB against Django's 2.5 MB
    # Between Django's limit and ours: accepted (Django alone would answer 400).
    padded = {"events": [make_event(prompt="p" * 90_000) for _ in range(40)]}
    body = json.dumps(padded)
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE < len(body) < MAX_BODY_BYTES
    assert post(api_client, padded).status_code == 201

    too_big = json.dumps({"events": [make_event(prompt="p" * 99_000) for _ in range(110)]})
    assert len(too_big) > MAX_BODY_BYTES
    response = api_client.post(URL, too_big, content_type="application/json")
    assert response.status_code == 413
    assert response.json() == {"error": "Request body larger than 10 MiB."}
    assert LLMRequestLog.objects.count() == 40


def test_declared_length_over_the_limit_is_413_without_reading(api_client):
    response = api_client.post(URL, b"{}", content_type="application/json", CONTENT_LENGTH=str(MAX_BODY_BYTES + 1))
    assert response.status_code == 413


def test_gzip_body_that_inflates_past_the_limit_is_413(api_client):
    # About 10 KB on the wire, over 10 MiB once decompressed.
    body = gzip.compress(b'{"model": "' + b"m" * (MAX_BODY_BYTES + 10) + b'"}')
    assert len(body) < 100_000
    response = api_client.post(URL, body, content_type="application/json", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 413


def test_corrupt_gzip_is_400(api_client):
    response = api_client.post(URL, b"not gzip", content_type="application/json", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 400


def test_no_key_or_a_wrong_key_is_401(anonymous_client):
    assert post(anonymous_client, make_event()).status_code == 401
    anonymous_client.credentials(HTTP_AUTHORIZATION="Bearer llmo_wrong")
    response = post(anonymous_client, make_event())
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert LLMRequestLog.objects.count() == 0


def test_a_logged_in_session_may_post_events(logged_in_client):
    assert post(logged_in_client, make_event()).status_code == 201


def test_a_stored_event_appears_in_the_future_only_within_tolerance(api_client):
    # Tolerance is measured from the server's clock: moving it moves the limit.
    event = make_event(timestamp=(NOW + timedelta(minutes=10)).isoformat())
    assert post(api_client, event).status_code == 400
    with time_machine.travel(NOW + timedelta(minutes=6), tick=False):
        assert post(api_client, event).status_code == 201
