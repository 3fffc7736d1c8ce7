"""The trace page's waterfall in a real headless Chromium, at desktop width and at 390 px: every
span of the request on one time axis, nested by parent, the LLM calls highlighted and linked."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from llm.models import LLMRequestLog, TraceSpan
from tests.factories import build_log, build_span
from tests.test_browser import wcag_violations

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TRACE = "3e" * 16
# name: (offset ms, duration ms, depth) as drawn; the total is 2,000 ms.
EXPECTED = {
    "POST /ask": (0, 2_000, 0),
    "SELECT sessions": (20, 80, 1),
    "llama-3.3-70b-versatile": (150, 1_500, 1),
    "vector search": (200, 100, 2),
    "INSERT answers": (1_700, 250, 1),
}


@pytest.fixture
def request_trace(model_prices):
    start = timezone.now() - timedelta(minutes=5)

    def at(ms: float):
        return start + timedelta(milliseconds=ms)

    TraceSpan.objects.store(
        [
            build_span(TRACE, "a" * 16, at(0), 2_000, name="POST /ask", service="checkout"),
            build_span(
                TRACE, "b" * 16, at(20), 80, name="SELECT sessions", parent_span_id="a" * 16, kind="client",
                attributes={"db.system": "postgresql", "db.query.text": "SELECT * FROM sessions WHERE id = $1"},
            ),
            build_span(TRACE, "d" * 16, at(200), 100, name="vector search", parent_span_id="c" * 16),
            build_span(
                TRACE, "e" * 16, at(1_700), 250, name="INSERT answers", parent_span_id="a" * 16, status="error",
                status_message="duplicate key",
            ),
        ]
    )  # fmt: skip
    call = build_log(
        trace_id=TRACE, span_id="c" * 16, parent_span_id="a" * 16, timestamp=at(150), latency_ms=1_500,
        source="otlp", model_name="llama-3.3-70b-versatile", prompt_tokens=1_000, completion_tokens=200,
        cost_estimate=None,
    )  # fmt: skip
    LLMRequestLog.objects.record_many([call])
    return call


def bars(page) -> dict:
    """Per row: its name, the bar's left and width as fractions of its track, and the label's indent."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll(".waterfall li[data-depth]")].map((row) => {
            const track = row.querySelector("svg.wf-track").getBoundingClientRect();
            const bar = row.querySelector("rect.wf-bar").getBoundingClientRect();
            const label = row.querySelector(".wf-label");
            const name = (label.querySelector("a, .wf-name")).textContent.trim();
            return [name, {
                left: (bar.left - track.left) / track.width,
                width: bar.width / track.width,
                indent: parseFloat(getComputedStyle(label).paddingLeft),
                call: row.classList.contains("wf-call"),
                fill: getComputedStyle(row.querySelector("rect.wf-bar")).fill,
            }];
        }))"""
    )


@pytest.mark.parametrize("width", [1280, 390])
def test_waterfall_draws_every_span_on_one_axis(page_for, live_server, request_trace, width, screenshots):
    page = page_for(width)
    page.goto(f"{live_server.url}/traces/{TRACE}/")
    drawn = bars(page)
    assert list(drawn) == list(EXPECTED)  # depth first, children in time order
    for name, (offset, duration, depth) in EXPECTED.items():
        assert drawn[name]["left"] == pytest.approx(offset / 2_000, abs=0.005), name
        assert drawn[name]["width"] == pytest.approx(duration / 2_000, abs=0.005), name
        assert drawn[name]["indent"] == pytest.approx(depth * 16), name  # 1rem per level
    # The LLM call is highlighted: its own row style and bar colour, unlike any context span.
    assert [name for name, bar in drawn.items() if bar["call"]] == ["llama-3.3-70b-versatile"]
    assert drawn["llama-3.3-70b-versatile"]["fill"] not in {bar["fill"] for bar in drawn.values() if not bar["call"]}
    assert drawn["INSERT answers"]["fill"] != drawn["SELECT sessions"]["fill"]  # the failed query
    # Nothing sticks out sideways, even at 390 px.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    assert wcag_violations(page) == []
    page.screenshot(path=str(screenshots / f"trace-waterfall-{width}.png"), full_page=True)

    # A context span opens to show its attributes.
    query = page.locator("li[data-depth]", has_text="SELECT sessions")
    assert query.locator("dd").first.is_hidden()
    query.locator("summary").click()
    assert query.locator("dd").all_text_contents() == ["SELECT * FROM sessions WHERE id = $1", "postgresql"]
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width

    page.click("a:text('llama-3.3-70b-versatile')")
    page.wait_for_url(f"**/logs/{request_trace.request_id}/")
    assert page.problems == []
