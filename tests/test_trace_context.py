"""A trace's context spans (TraceSpan): the waterfall llm/traces.py draws from calls and spans,
the trace page and API with them, and purge_logs deleting them with their calls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from llm import retention, traces
from llm.models import LLMRequestLog, TraceSpan
from llm.serializers import TraceSpanSerializer
from tests.factories import build_log, build_span

pytestmark = pytest.mark.django_db

TRACE = "5c" * 16
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


@pytest.fixture
def request_trace():
    """POST /chat (0-1,000 ms) > SELECT (10-30 ms), an LLM call (40-840 ms) > a tool span
    (100-150 ms) under the call, and a second call (850-990 ms) under the handler; a span of
    another trace."""
    TraceSpan.objects.store(
        [
            build_span(TRACE, "a" * 16, at(0), 1_000, name="POST /chat", service="shop"),
            build_span(TRACE, "b" * 16, at(10), 20, name="SELECT", parent_span_id="a" * 16, kind="client"),
            build_span(TRACE, "d" * 16, at(100), 50, name="tool", parent_span_id="c" * 16, status="error"),
            build_span("9" * 32, "e" * 16, at(0), 5, name="other trace"),
        ]
    )
    calls = [
        build_log(
            trace_id=TRACE, span_id="c" * 16, parent_span_id="a" * 16, timestamp=at(40), latency_ms=800,
            source="otlp", prompt_tokens=10, completion_tokens=5, model_name="llama-3.1-8b-instant",
        ),
        build_log(
            trace_id=TRACE, span_id="f" * 16, parent_span_id="a" * 16, timestamp=at(850), latency_ms=140,
            source="otlp", status="error", model_name="qwen/qwen3-32b",
        ),
    ]  # fmt: skip
    LLMRequestLog.objects.record_many(calls)
    return calls


def test_waterfall_nests_by_parent_and_places_bars_on_one_axis(request_trace):
    found = LLMRequestLog.objects.trace(TRACE)
    waterfall = traces.waterfall(found)
    assert [(row.name, row.depth, row.is_call) for row in waterfall.rows] == [
        ("POST /chat", 0, False),
        ("SELECT", 1, False),
        ("llama-3.1-8b-instant", 1, True),
        ("tool", 2, False),
        ("qwen/qwen3-32b", 1, True),
    ]
    assert waterfall.start == T0 and waterfall.duration_ms == 1_000
    # Independently: a bar starts at offset / total and is duration / total wide, in 1,000 units.
    expected = {"POST /chat": (0, 1_000), "SELECT": (10, 20), "llama-3.1-8b-instant": (40, 800)}
    expected |= {"tool": (100, 50), "qwen/qwen3-32b": (850, 140)}
    for row in waterfall.rows:
        offset, duration = expected[row.name]
        assert (row.offset_ms, row.duration_ms) == (offset, duration)
        assert (row.x, row.width) == (offset / 1_000 * 1_000, duration / 1_000 * 1_000)
    assert [row.status for row in waterfall.rows] == ["unset", "unset", "ok", "error", "error"]
    assert waterfall.ticks == [(0, 0), (250, 250), (500, 500), (750, 750), (1_000, 1_000)]


def test_an_instant_span_stays_visible_and_inside_the_axis():
    trace = traces.Trace(
        calls=[],
        truncated=False,
        spans=[
            {"span_id": "a" * 16, "parent_span_id": "", "name": "long", "service": "", "kind": "server",
             "start": at(0).isoformat(), "duration_ms": 10_000.0, "status": "ok", "status_message": ""},
            {"span_id": "b" * 16, "parent_span_id": "a" * 16, "name": "instant", "service": "", "kind": "internal",
             "start": at(10_000).isoformat(), "duration_ms": 0.0, "status": "ok", "status_message": ""},
        ],
    )  # fmt: skip
    instant = traces.waterfall(trace).rows[1]
    assert instant.width == traces.MIN_BAR
    assert instant.x + instant.width <= traces.WATERFALL_WIDTH


def test_a_cycle_of_parents_still_shows_every_span():
    order = traces.tree_order([("a", "b"), ("b", "a"), ("c", "")])
    assert sorted(index for index, _ in order) == [0, 1, 2]


def test_trace_page_draws_the_waterfall(logged_in_client, request_trace, django_assert_max_num_queries):
    # Session, user, calls, spans, and six for the dashboard settings row a first visit writes:
    # none per span or call.
    with django_assert_max_num_queries(12):  # 10 (11 on PostgreSQL), plus the user's permissions (roles)
        response = logged_in_client.get(f"/traces/{TRACE}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('class="wf-row') == 1 + 5  # the axis and five bars
    assert html.count("wf-row wf-call") == 2
    for call in request_trace:
        assert f'href="/logs/{call.request_id}/"' in html
    assert 'x="40.00" y="1" width="800.00"' in html
    assert "other trace" not in html


def test_a_trace_with_spans_only_is_found(logged_in_client, api_client):
    TraceSpan.objects.store([build_span(TRACE, "a" * 16, T0, 10, name="GET /health")])
    assert logged_in_client.get(f"/traces/{TRACE}/").status_code == 200
    body = api_client.get(f"/api/traces/{TRACE}").json()
    assert (body["calls"], [span["name"] for span in body["spans"]]) == ([], ["GET /health"])
    # The answer's keys are the documented ones (llm/serializers.py).
    assert set(body["spans"][0]) == set(TraceSpanSerializer().fields) == {*traces.TRACE_SPAN_FIELDS, "duration_ms"}
    assert body["spans"][0]["duration_ms"] == 10.0 and body["spans"][0]["start"] == T0.isoformat()
    assert api_client.get(f"/api/traces/{'7' * 32}/").status_code == 404


def test_purge_logs_deletes_context_spans_by_start_time():
    now = timezone.now()
    old = [build_span(TRACE, f"{index + 1:016x}", now - timedelta(days=100, minutes=index), 5) for index in range(3)]
    recent = [build_span(TRACE, f"{index + 9:016x}", now - timedelta(days=10), 5) for index in range(2)]
    TraceSpan.objects.store(old + recent)

    dry = retention.purge(90, dry_run=True, now=now)
    assert (dry.spans, TraceSpan.objects.count()) == (3, 5)
    result = retention.purge(90, batch_size=2, now=now)
    assert result.spans == 3
    assert sorted(TraceSpan.objects.values_list("span_id", flat=True)) == [span.span_id for span in recent]

    out = StringIO()
    call_command("purge_logs", "--older-than", "5", stdout=out)
    assert "Traces' context spans: 2." in out.getvalue()
    assert TraceSpan.objects.count() == 0
