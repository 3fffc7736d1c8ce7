"""In a real Chromium: phone-width pages that do not scroll sideways, partial periods on the charts,
and a favicon on every page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from llm.models import LLMRequestLog
from tests.factories import build_log, make_feedback

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The longest names of SPEC's price table: what made the dropdown and the feedback table too wide.
MODELS = ["meta-llama/llama-4-scout-17b-16e-instruct", "llama-3.3-70b-versatile", "openai/gpt-oss-120b"]


@pytest.fixture
def traffic(model_prices):
    now = timezone.now()
    logs = [
        build_log(
            timestamp=now - timedelta(minutes=7 * index + 1),
            model_name=MODELS[index % 3],
            user_id=f"user-{index % 4}",
            prompt_tokens=100,
            completion_tokens=40,
            latency_ms=200.0 + (index * 31) % 900,
            status="error" if index % 11 == 0 else "success",
            error_type="rate_limit" if index % 11 == 0 else "",
        )
        for index in range(150)
    ]
    LLMRequestLog.objects.bulk_create(logs)
    for log in LLMRequestLog.objects.order_by("id")[:60:3]:
        make_feedback(log, "thumbs_up" if log.id % 4 else "thumbs_down")


SIDEWAYS = """() => ({
    page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
    tables: [...document.querySelectorAll(".table-wrap")].filter((wrap) => wrap.querySelector("table.compact"))
        .map((wrap) => [wrap.scrollWidth, wrap.clientWidth]),
})"""
DROPDOWN_IN_CARD = """() => {
    const select = document.querySelector("select[name=model]").getBoundingClientRect();
    const card = document.querySelector("form.filters").getBoundingClientRect();
    return [select.left >= card.left, select.right <= card.right, select.width > 0];
}"""


@pytest.mark.parametrize("path", ["/feedback/", "/", "/analytics/"])
def test_phone_width_pages_do_not_scroll_sideways(page_for, live_server, traffic, path):
    page = page_for(390)
    page.goto(f"{live_server.url}{path}?range=24h&model={MODELS[0]}")
    page.wait_for_load_state("networkidle")
    assert page.locator("select[name=model]").input_value() == MODELS[0]
    widths = page.evaluate(SIDEWAYS)
    scroll_width, client_width = widths["page"]
    assert scroll_width <= client_width, widths
    # The feedback page's small tables fit: no sideways scrolling inside them either.
    assert all(inner <= outer for inner, outer in widths["tables"]), widths
    if path == "/feedback/":
        assert len(widths["tables"]) == 2
    assert page.evaluate(DROPDOWN_IN_CARD) == [True, True, True]
    assert page.problems == []


def test_charts_mark_the_partial_period_and_count_calls(page_for, live_server, traffic):
    page = page_for()
    page.goto(f"{live_server.url}/?range=24h")
    page.wait_for_load_state("networkidle")
    labels = page.evaluate("() => Chart.getChart('chart-traffic').data.labels")
    assert labels[-1].endswith(" (partial)")
    assert not any(label.endswith("(partial)") for label in labels[1:-1])
    # The tooltip of the last period names its calls.
    footer = page.evaluate(
        """() => {
            const chart = Chart.getChart('chart-traffic');
            const last = chart.data.labels.length - 1;
            const items = [{dataIndex: last}];
            return chart.options.plugins.tooltip.callbacks.footer(items);
        }"""
    )
    data = page.evaluate("() => JSON.parse(document.getElementById('chart-data').textContent).periods")
    calls = data["requests"][-1]  # 1 in the first minutes of an hour
    # The charts over time and the sparklines draw the shared columns: each card its own one.
    drawn = page.evaluate(
        """() => ({
            tokens: Chart.getChart('chart-tokens').data.datasets[1].data,
            p99: Chart.getChart('chart-latency').data.datasets[2].data,
            labels: Chart.getChart('chart-latency').data.labels,
            cost: Chart.getChart(document.querySelector('canvas[data-spark="total_cost"]')).data.datasets[0].data,
            errors: Chart.getChart(document.querySelector('canvas[data-spark="error_rate"]')).data.datasets[0].data,
        })"""
    )
    assert drawn["tokens"] == data["completion_tokens"] and drawn["p99"] == data["p99_latency_ms"]
    assert drawn["labels"] == labels and len(labels) == len(data["labels"])
    assert drawn["cost"] == data["cost"] and drawn["errors"] == data["error_rate"]
    assert footer == f"{calls:,} {'call' if calls == 1 else 'calls'}"
    # Its point is drawn hollow: white inside, the line's colour around.
    point = page.evaluate(
        """() => {
            const meta = Chart.getChart('chart-traffic').getDatasetMeta(0);
            const last = meta.data[meta.data.length - 1].options, before = meta.data[meta.data.length - 2].options;
            return [last.backgroundColor, last.radius, before.radius];
        }"""
    )
    assert point[0] == "#fff" and point[1] > 0 and point[2] == 0
    assert page.problems == []


def test_favicon_on_every_page_and_at_the_root(page_for, live_server, traffic):
    page = page_for()
    for path in ["/", "/feedback/", "/api/docs/"]:
        page.goto(f"{live_server.url}{path}")
        page.wait_for_load_state("networkidle")
    icon = page.request.get(f"{live_server.url}/favicon.ico")
    assert icon.status == 200
    assert icon.body()[:4] == b"\x00\x00\x01\x00"
    # The API docs page leads back to the dashboard.
    page.click("text=← Back to the dashboard")
    page.wait_for_url(f"{live_server.url}/")
    assert page.problems == []  # no 404 (for a favicon or anything else), no console error
