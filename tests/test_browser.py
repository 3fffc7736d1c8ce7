"""The dashboard in a real headless Chromium: pages, figures, filters, charts, playground, alerts, export."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from llm.alerts import create_default_rules
from llm.models import LLMRequestLog, UserFeedback
from tests.factories import build_log, make_alert, make_feedback, make_rule
from tests.fake_groq import Behaviour

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAGES = {"overview": "/", "analytics": "/analytics/", "logs": "/logs/", "feedback": "/feedback/", "alerts": "/alerts/"}
PAGES["playground"] = "/playground/"
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
# What WCAG 2.1 A and AA rules an automated checker can verify (contrast, labels, names, structure).
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


@pytest.fixture
def traffic(model_prices):
    now = timezone.now()
    models = ["llama-3.1-8b-instant", "llama-3.3-70b-versatile", "openai/gpt-oss-20b"]
    logs = []
    for index in range(300):
        failed = index % 17 == 0
        logs.append(
            build_log(
                timestamp=now - timedelta(minutes=9 * index + 1),
                model_name=models[index % 3],
                user_id=f"user-{index % 7}",
                prompt_text=f"Summarise ticket #{index}",
                response_text="" if failed else "A short summary.",
                prompt_tokens=200 + index % 50 * 10,
                completion_tokens=0 if failed else 60 + index % 40,
                latency_ms=300.0 + (index * 37) % 2500,
                cost_estimate=0.0001 * (1 + index % 5),
                status="error" if failed else "success",
                error_type="rate_limit" if failed else "",
                error_message="Rate limit reached" if failed else "",
            )
        )
    LLMRequestLog.objects.bulk_create(logs)
    for log in LLMRequestLog.objects.order_by("id")[:40:4]:
        make_feedback(log, "thumbs_down" if log.id % 3 == 0 else "thumbs_up", comment="ok")


def card_value(page, key: str) -> float:
    return float(page.get_attribute(f".metric[data-key={key}]", "data-value"))


def api_overview(page, params: dict) -> dict:
    response = page.request.get(page.url.split("?")[0].rstrip("/") + "/api/metrics/overview/", params=params)
    assert response.ok
    return response.json()


def wcag_violations(page) -> list[str]:
    """axe-core's WCAG A/AA violations on the page as it is now, one line per rule and element."""
    if not page.evaluate("() => Boolean(window.axe)"):
        # Evaluated through the DevTools protocol: a <script> tag of its text would be an inline
        # script, which the pages' Content-Security-Policy blocks.
        page.evaluate(AXE.read_text() + "\n;undefined")
    violations = page.evaluate("(tags) => axe.run(document, {runOnly: {type: 'tag', values: tags}})", WCAG_TAGS)[
        "violations"
    ]
    return [f"{v['id']}: {node['target']} {node['failureSummary']}" for v in violations for node in v["nodes"]]


def canvas_has_pixels(page, selector: str) -> bool:
    return page.evaluate(
        """(selector) => {
            const canvas = document.querySelector(selector);
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) return true;
            return false;
        }""",
        selector,
    )


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_loads_cleanly_and_is_captured(page_for, live_server, traffic, width, screenshots):
    rules = create_default_rules()
    make_alert(rules[0], message="error rate 5.9% over 60 min", metric_value=5.9)
    page = page_for(width)
    # A small agent run: a planner call, two tool calls under it, and a failed summary under the second.
    calls = list(LLMRequestLog.objects.order_by("-timestamp")[:4])[::-1]
    log = calls[-1]
    assert log.status == "error"
    spans = [("1" * 16, ""), ("2" * 16, "1" * 16), ("3" * 16, "1" * 16), ("4" * 16, "3" * 16)]
    for call, (span_id, parent) in zip(calls, spans, strict=True):
        LLMRequestLog.objects.filter(pk=call.pk).update(trace_id="ab" * 16, span_id=span_id, parent_span_id=parent)
    pages = {**PAGES, "log": f"/logs/{log.request_id}/", "trace": f"/traces/{'ab' * 16}/"}
    inaccessible = {}
    for name, path in pages.items():
        page.goto(f"{live_server.url}{path}")
        page.wait_for_load_state("networkidle")
        assert page.locator("h1").first.is_visible()
        suffix = "" if width == 1280 else "-phone"
        page.screenshot(path=screenshots / f"{name}{suffix}.png", full_page=True)
        inaccessible[name] = wcag_violations(page)
        # Nothing sticks out sideways (wide tables scroll inside their own box).
        overflow = page.evaluate(
            """() => [...document.querySelectorAll("body *")].filter((el) => {
                const box = el.getBoundingClientRect();
                return box.width && box.right > document.documentElement.clientWidth + 0.5
                    && !el.closest(".table-wrap");
            }).map((el) => el.tagName + "." + el.className)"""
        )
        assert overflow == [], (name, overflow)
    assert page.problems == []
    assert inaccessible == dict.fromkeys(pages, [])


def test_overview_numbers_equal_the_api_and_follow_the_model_filter(page_for, live_server, traffic):
    page = page_for()
    page.goto(f"{live_server.url}/?range=7d")
    cards = page.locator(".cards[data-start]")  # the key figures, not the spend cards
    window = {"start_date": cards.get_attribute("data-start"), "end_date": cards.get_attribute("data-end")}
    api = api_overview(page, window)
    assert card_value(page, "requests") == api["total_requests"] == 300
    assert card_value(page, "error_rate") == pytest.approx(api["error_rate"])
    assert card_value(page, "p95_latency_ms") == pytest.approx(api["p95_latency_ms"])
    assert card_value(page, "total_tokens") == api["total_tokens"]
    assert card_value(page, "total_cost") == pytest.approx(api["total_cost"])

    page.select_option("select[name=model]", "openai/gpt-oss-20b")
    page.wait_for_url("**model=openai%2Fgpt-oss-20b**")
    assert "range=7d" in page.url
    cards = page.locator(".cards[data-start]")  # the key figures, not the spend cards
    window = {"start_date": cards.get_attribute("data-start"), "end_date": cards.get_attribute("data-end")}
    filtered = api_overview(page, {**window, "model": "openai/gpt-oss-20b"})
    assert card_value(page, "requests") == filtered["total_requests"] == 100
    assert card_value(page, "p95_latency_ms") == pytest.approx(filtered["p95_latency_ms"])
    assert page.problems == []


def focused(page) -> str:
    return page.evaluate("() => document.activeElement.outerHTML.split('>')[0] + '>'")


def test_keyboard_only_login_and_filter_bar(page_for, live_server, traffic):
    page = page_for(log_in=False)
    page.goto(f"{live_server.url}/analytics/?range=24h")
    assert page.url.startswith(f"{live_server.url}/accounts/login/")
    assert wcag_violations(page) == []
    assert 'id="id_username"' in focused(page)  # autofocus: type right away
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type("secret-password")
    page.keyboard.press("Enter")
    page.wait_for_url("**/analytics/?range=24h")

    page.keyboard.press("Tab")
    assert "skip-link" in focused(page)
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")  # past the navigation, into the filter bar: the checked range
    assert 'value="24h"' in focused(page)
    # Arrow keys move through the ranges without reloading the page (the focus stays)...
    page.keyboard.press("ArrowRight")
    assert 'value="7d"' in focused(page)
    assert page.url == f"{live_server.url}/analytics/?range=24h#main"
    # ...and Enter applies the choice.
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "range=7d" in page.url
    assert page.locator("input[name=range][value='7d']").is_checked()
    assert page.problems == []


def test_charts_draw(page_for, live_server, traffic):
    page = page_for()
    for path, selectors in {
        "/?range=7d": ["#chart-traffic", "#chart-tokens", "#chart-latency", "#chart-cost", "canvas[data-spark]"],
        "/analytics/?range=7d": ["#chart-model-requests", "#chart-model-latency", "#chart-daily"],
        "/feedback/?range=7d": ["#chart-feedback-models"],
    }.items():
        page.goto(f"{live_server.url}{path}")
        page.wait_for_load_state("networkidle")
        for selector in selectors:
            assert canvas_has_pixels(page, selector), (path, selector)
    # The check itself can fail: an empty canvas has no pixel.
    page.evaluate("() => { const c = document.createElement('canvas'); c.id = 'blank'; document.body.append(c); }")
    assert not canvas_has_pixels(page, "#blank")


def test_playground_streams_and_stores_the_rating(page_for, live_server, fake_groq, model_prices):
    fake_groq.default = Behaviour(chunks=["Bon", "jour", " !"], prompt_tokens=12, completion_tokens=3)
    page = page_for()
    page.goto(f"{live_server.url}/playground/")
    page.select_option("#pg-model", "llama-3.1-8b-instant")
    page.fill("#pg-prompt", "Say hello in French")
    page.click("#pg-send")
    page.wait_for_selector("#pg-figures:not([hidden])")
    assert page.text_content("#pg-answer") == "Bonjour !"
    assert page.text_content("#pg-tokens") == "12 prompt + 3 completion = 15"
    log = LLMRequestLog.objects.get()
    assert page.text_content("#pg-request") == str(log.request_id)
    assert fake_groq.requests[0]["stream"] is True
    page.click("button[data-rating=thumbs_up]")
    page.wait_for_selector("#pg-rated:has-text('Thanks')")
    assert UserFeedback.objects.get(request=log).rating == "thumbs_up"
    assert page.problems == []


def test_acknowledging_an_alert_sticks(page_for, live_server, staff_user, db):
    rule = make_rule(name="High error rate", metric_type="error_rate", threshold=5)
    alert = make_alert(rule, message="error rate 9%", metric_value=9)
    page = page_for()
    page.goto(f"{live_server.url}/alerts/")
    page.click(f"tr[data-alert='{alert.pk}'] button:has-text('Acknowledge')")
    page.wait_for_load_state("networkidle")
    page.reload()
    row = page.locator(f"tr[data-alert='{alert.pk}']")
    assert "alice" in row.text_content()
    assert row.locator("button").count() == 0
    alert.refresh_from_db()
    assert alert.acknowledged and alert.acknowledged_by == staff_user


def test_export_button_downloads_the_filtered_rows(page_for, live_server, traffic):
    page = page_for()
    page.goto(f"{live_server.url}/logs/?range=7d&status=error&model=llama-3.1-8b-instant")
    with page.expect_download() as download:
        page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    expected = LLMRequestLog.objects.filter(status="error", model_name="llama-3.1-8b-instant").count()
    assert len(rows) == expected > 0
    assert {row["status"] for row in rows} == {"error"}
    assert download.value.suggested_filename.startswith("llm-logs_")
