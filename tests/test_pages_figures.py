"""Figures on the pages that do not mislead: rates change in points, partial periods say so,
percentiles need a sample, counts stand beside rates; and the favicon and the API docs' way back."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from html import unescape
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from llm import dashboard, metrics, rollup_math
from llm.models import LLMRequestLog
from tests.factories import make_feedback, make_logs

pytestmark = pytest.mark.django_db

# Mid-hour, mid-day (UTC, the tests' TIME_ZONE unless a test says otherwise).
NOW = datetime(2026, 3, 11, 14, 30, tzinfo=ZoneInfo("UTC"))


@pytest.fixture
def browser(client, staff_user):
    client.force_login(staff_user)
    return client


@pytest.fixture
def clock(time_machine):
    time_machine.move_to(NOW, tick=False)
    return time_machine


def make_calls(count: int, *, at: datetime, errors: int = 0, error_type: str = "timeout", model: str = "m") -> None:
    make_logs(
        count,
        model_name=model,
        timestamp=lambda index: at - timedelta(seconds=index),
        latency_ms=lambda index: float(100 + (index * 37) % 500),
        prompt_tokens=10,
        completion_tokens=5,
        status=lambda index: "error" if index < errors else "success",
        error_type=lambda index: error_type if index < errors else "",
        error_message=lambda index: f"{error_type} happened" if index < errors else "",
    )


def chart_data(response) -> dict:
    match = re.search(r'<script id="chart-data" type="application/json">(.*?)</script>', response.content.decode())
    return json.loads(match.group(1))


def cards_of(response) -> dict:
    return {card["key"]: card for card in response.context["cards"]}


def test_a_rate_card_changes_in_percentage_points_and_others_in_percent():
    specs = {spec.key: spec for spec in dashboard.CARDS}
    current = {"total_requests": 1300, "error_rate": 5.23}
    previous = {"total_requests": 1000, "error_rate": 3.08}
    error_rate = dashboard.card(specs["error_rate"], current, previous)
    assert error_rate["change"] == pytest.approx(2.15)
    assert error_rate["change_unit"] == "pp"
    requests = dashboard.card(specs["requests"], current, previous)
    assert requests["change"] == pytest.approx(30.0)
    assert requests["change_unit"] == "%"
    # A previous window without calls has no rate to compare with (0 % of nothing is not 0 %).
    nothing_before = dashboard.card(specs["error_rate"], current, {"total_requests": 0, "error_rate": 0.0})
    assert nothing_before["previous"] is None and nothing_before["change"] is None
    # Every rate card is in points: the ones whose figure is a percentage.
    assert [spec.key for spec in dashboard.CARDS if spec.is_rate] == ["error_rate"]


def test_overview_page_shows_the_error_rate_change_in_points(browser, clock):
    make_calls(25, at=NOW - timedelta(hours=30), errors=1)  # previous 24 h: 4 %
    make_calls(20, at=NOW - timedelta(hours=2), errors=2)  # this 24 h: 10 %
    response = browser.get("/", {"range": "24h"})
    card = cards_of(response)["error_rate"]
    assert (card["value"], card["previous"]) == (pytest.approx(10.0), pytest.approx(4.0))
    html = response.content.decode()
    assert "+6.00 pp vs previous 24 h" in html
    assert "+150.0%" not in html  # the relative change of a percentage, which this replaced
    assert "-20.0% vs previous 24 h" in html  # requests: 25 -> 20, a relative change


def test_overview_marks_partial_periods_and_counts_calls(browser, clock):
    make_calls(30, at=NOW - timedelta(minutes=5))
    make_calls(3, at=NOW - timedelta(hours=3, minutes=10))
    response = browser.get("/", {"range": "24h"})
    series = response.context["series"]
    # 24 h from 14:30: the 14:00 hour of yesterday (from 14:30) and today's 14:00 (until 14:30).
    assert len(series) == 25
    assert [row["period"][11:16] for row in series if row["partial"]] == ["14:00", "14:00"]
    assert series[0]["partial"] and series[-1]["partial"]
    assert not any(row["partial"] for row in series[1:-1])
    latency = chart_data(response)["periods"]
    assert latency["partial"][-1] is True and latency["partial"][-2] is False
    assert latency["requests"][-1] == 30
    assert "p99_latency_ms" in latency
    # The 3-call hour has a gap, not a percentile; the 30-call hour has one equal to NumPy's.
    three = series.index(next(row for row in series if row["requests"] == 3))
    assert latency["p95_latency_ms"][three] is None
    expected = [float(100 + (index * 37) % 500) for index in range(30)]
    # Read from the roll-ups' histograms: within their documented bound.
    bound = rollup_math.ERROR_BOUND
    assert latency["p95_latency_ms"][-1] == pytest.approx(float(np.percentile(expected, 95)), rel=bound)
    assert latency["p99_latency_ms"][-1] == pytest.approx(float(np.percentile(expected, 99)), rel=bound)
    assert f"Percentiles need at least {metrics.MIN_CALLS_FOR_PERCENTILE} calls" in response.content.decode()


def test_overview_shows_p99_and_errors_by_type_linking_to_failed_calls(browser, clock):
    make_calls(30, at=NOW - timedelta(hours=1), errors=4, error_type="rate_limit")
    make_calls(10, at=NOW - timedelta(hours=2), errors=1, error_type="timeout", model="other")
    response = browser.get("/", {"range": "24h"})
    html = response.content.decode()
    p95_card = cards_of(response)["p95_latency_ms"]
    assert p95_card["secondary"]["value"] == response.context["figures"]["p99_latency_ms"] is not None
    assert f'data-key="p99_latency_ms">{p95_card["secondary"]["value"]:,.0f} ms<' in html
    assert [(row["error_type"], row["count"]) for row in response.context["errors_by_type"]] == [
        ("rate_limit", 4),
        ("timeout", 1),
    ]
    section = html[html.index("<h2>Errors by type</h2>") : html.index("<h2>Recent calls</h2>")]
    links = re.findall(r'<a href="(/logs/\?[^"]+)">(\w+)</a>', section)
    assert [text for _, text in links] == ["rate_limit", "timeout"]
    assert all("status=error" in href and "range=24h" in href for href, _ in links)
    # The link leads to exactly the failed calls of the range.
    logs_page = browser.get(links[0][0].replace("&amp;", "&"))
    assert logs_page.context["page_obj"].paginator.count == 5


def test_overview_without_errors_says_so(browser, clock):
    make_calls(3, at=NOW - timedelta(hours=1))
    html = browser.get("/").content.decode()
    assert "No errors in this range." in html


def test_analytics_daily_table_marks_today_and_needs_20_calls_for_percentiles(browser, clock):
    make_calls(19, at=NOW - timedelta(days=2, hours=3))
    make_calls(20, at=NOW - timedelta(days=1, hours=3))
    make_calls(25, at=NOW - timedelta(hours=1))
    response = browser.get("/analytics/", {"range": "7d"})
    daily = {row["date"]: row for row in response.context["daily"]}
    assert daily["2026-03-09"]["p95_latency_ms"] is None and daily["2026-03-09"]["requests"] == 19
    assert daily["2026-03-10"]["p95_latency_ms"] is not None
    assert [date for date, row in daily.items() if row["partial"]] == ["2026-03-11"]
    html = response.content.decode()
    assert '<tr class="partial"><th scope="row">2026-03-11, today (so far)</th>' in html
    assert '<tr><th scope="row">2026-03-10</th>' in html
    row_19 = html[html.index('<th scope="row">2026-03-09</th>') :].split("</tr>")[0]
    assert row_19.count("—") == 2  # p95 and p99
    assert "Percentiles need at least 20 calls" in html
    # p99 in the model comparison too.
    assert '<th scope="col" class="num">p99</th>' in html


def test_analytics_first_day_of_a_range_that_starts_mid_day_is_partial(browser, clock):
    make_calls(5, at=NOW - timedelta(days=6, hours=20))  # 2026-03-04 18:30, after the 14:30 start
    make_calls(5, at=NOW - timedelta(days=3))
    html = browser.get("/analytics/", {"range": "7d"}).content.decode()
    assert "2026-03-04 (partial)" in html
    assert '<tr><th scope="row">2026-03-08</th>' in html


def test_feedback_page_shows_the_ratings_behind_each_day(browser, clock):
    make_calls(6, at=NOW - timedelta(hours=2))
    calls = list(LLMRequestLog.objects.order_by("id"))
    for call, rating in zip(calls, ["thumbs_up", "thumbs_up", "thumbs_up", "thumbs_down"], strict=False):
        make_feedback(call, rating)
    make_feedback(calls[4], "thumbs_down", created_at=NOW - timedelta(days=1))
    response = browser.get("/feedback/", {"range": "7d"})
    html = response.content.decode()
    today = html[html.index('<tr data-day="2026-03-11">') :].split("</tr>")[0]
    assert '<td class="num ratings">4</td>' in today and "75.0%" in today
    yesterday = html[html.index('<tr data-day="2026-03-10">') :].split("</tr>")[0]
    assert '<td class="num ratings">1</td>' in yesterday and "0.0%" in yesterday
    assert chart_data(response)["by_day"]["ratings"] == [1, 4]


def test_favicon_answers_at_the_root_and_pages_carry_one(client, browser):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert body[:4] == b"\x00\x00\x01\x00"  # an ICO file's header
    svg = client.get("/static/favicon.svg")
    assert svg.status_code == 200
    svg_text = b"".join(svg.streaming_content).decode().strip()
    for path in ["/", "/api/docs/", "/accounts/login/"]:
        html = browser.get(path).content.decode()
        href = re.search(r'<link rel="icon" href="data:image/svg\+xml,([^"]+)" type="image/svg\+xml">', html).group(1)
        assert unquote(unescape(href)) == svg_text


def test_api_docs_lead_back_to_the_dashboard(browser):
    html = browser.get("/api/docs/").content.decode()
    assert '<a href="/">← Back to the dashboard</a>' in html


def test_an_empty_latency_chart_says_why(browser, clock):
    make_calls(5, at=NOW - timedelta(hours=1))
    response = browser.get("/", {"range": "24h"})
    assert response.context["periods_with_percentiles"] == 0
    assert "No hour in this range has 20 calls" in response.content.decode()
    make_calls(20, at=NOW - timedelta(hours=3))
    response = browser.get("/", {"range": "24h"})
    assert response.context["periods_with_percentiles"] == 1
    assert 'id="no-percentiles"' not in response.content.decode()
