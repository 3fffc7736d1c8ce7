"""GET /api/traces/<trace_id>/: every call of one trace, in time order, as a tree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from llm.models import LLMRequestLog

pytestmark = pytest.mark.django_db

TRACE = "0af7651916cd43dd8448eb211c80319c"
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def make_call(span_id: str, parent_span_id: str, offset_ms: int, trace_id: str = TRACE, **fields) -> LLMRequestLog:
    return LLMRequestLog(
        source="otlp",
        model_name=fields.pop("model_name", "llama-3.1-8b-instant"),
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_span_id,
        timestamp=T0 + timedelta(milliseconds=offset_ms),
        prompt_tokens=100,
        completion_tokens=50,
        latency_ms=10.0,
        cost_estimate=None,
        **fields,
    )


@pytest.fixture
def trace_rows():
    calls = [
        # Sent out of order on purpose: the answer is in time order.
        make_call("c" * 16, "b" * 16, 30),  # grandchild
        make_call("a" * 16, "f" * 16, 10),  # its parent span (an HTTP handler) was not stored: a root
        make_call("b" * 16, "a" * 16, 20, status="error", error_type="timeout"),
        make_call("d" * 16, "", 40),  # a second root
        make_call("e" * 16, "", 5, trace_id="1" * 32),  # another trace
    ]
    LLMRequestLog.objects.record_many(calls)
    return {call.span_id[0]: call for call in calls}


def test_calls_in_time_order_with_depth_and_parent(api_client, trace_rows, django_assert_max_num_queries):
    with django_assert_max_num_queries(4):  # API key, its last-used stamp, the calls, the context spans
        response = api_client.get(f"/api/traces/{TRACE}/")
    assert response.status_code == 200
    body = response.json()
    assert body["trace_id"] == TRACE and body["truncated"] is False and body["spans"] == []
    calls = body["calls"]
    assert [call["span_id"][0] for call in calls] == ["a", "b", "c", "d"]
    assert [call["depth"] for call in calls] == [0, 1, 2, 0]
    request_id = {key: str(row.request_id) for key, row in trace_rows.items()}
    assert [call["parent_request_id"] for call in calls] == [None, request_id["a"], request_id["b"], None]
    assert [call["parent_span_id"] for call in calls] == ["f" * 16, "a" * 16, "b" * 16, ""]
    assert set(calls[0]) == {
        "request_id", "timestamp", "source", "provider", "model_name", "span_id", "parent_span_id", "parent_request_id",
        "depth", "status", "error_type", "latency_ms", "prompt_tokens", "completion_tokens", "total_tokens",
        "cost_estimate", "user_id", "session_id", "finish_reason",
    }  # fmt: skip
    second = calls[1]
    assert (second["status"], second["error_type"]) == ("error", "timeout")
    assert second["model_name"] == "llama-3.1-8b-instant" and "model" not in second
    assert second["timestamp"] == "2025-06-01T12:00:00.020000+00:00"
    assert (second["total_tokens"], second["source"]) == (150, "otlp")
    # 100 × 0.05 + 50 × 0.08 per million.
    assert second["cost_estimate"] == pytest.approx(0.000009)


def test_upper_case_trace_id_is_accepted(api_client, trace_rows):
    assert api_client.get(f"/api/traces/{TRACE.upper()}/").status_code == 200


def test_unknown_trace_is_404(api_client, trace_rows):
    assert api_client.get(f"/api/traces/{'9' * 32}/").status_code == 404


def test_malformed_trace_id_is_400(api_client):
    response = api_client.get("/api/traces/not-a-trace/")
    assert response.status_code == 400 and set(response.json()["fields"]) == {"trace_id"}


def test_a_cycle_of_parent_ids_does_not_loop(api_client):
    LLMRequestLog.objects.record_many([make_call("1" * 16, "2" * 16, 0), make_call("2" * 16, "1" * 16, 1)])
    response = api_client.get(f"/api/traces/{TRACE}/")
    assert response.status_code == 200
    assert sorted(call["depth"] for call in response.json()["calls"]) == [0, 1]


def test_a_deep_chain_is_walked_without_recursion(api_client):
    chain = [make_call(f"{index + 1:016x}", f"{index:016x}" if index else "", index) for index in range(1_500)]
    LLMRequestLog.objects.record_many(chain)
    calls = api_client.get(f"/api/traces/{TRACE}/").json()["calls"]
    assert [call["depth"] for call in calls] == list(range(1_500))


def test_needs_credentials(anonymous_client, trace_rows):
    assert anonymous_client.get(f"/api/traces/{TRACE}/").status_code == 401
