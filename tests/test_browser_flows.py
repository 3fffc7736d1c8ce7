"""Dashboard flows in a real headless Chromium that tests/test_browser.py does not drive: a custom
range shared by URL, opt-in auto refresh, search and pagination, the JSON export, feedback on a
call, logging out, and phone-width layout."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from llm.models import LLMRequestLog, UserFeedback
from tests.factories import build_log, make_log
from tests.fake_groq import Behaviour

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MODELS = ["llama-3.1-8b-instant", "openai/gpt-oss-20b"]


@pytest.fixture
def calls(model_prices) -> list[LLMRequestLog]:
    """120 calls, one every 10 minutes back from now; every 10th failed, every 6th about an invoice."""
    now = timezone.now()
    logs = [
        build_log(
            timestamp=now - timedelta(minutes=10 * index + 1),
            model_name=MODELS[index % 2],
            user_id=f"user-{index % 4}",
            prompt_text=f"Question about invoice {index}" if index % 6 == 0 else f"Question {index}",
            response_text="An answer.",
            prompt_tokens=100 + index,
            completion_tokens=20,
            latency_ms=200.0 + 7 * index,
            cost_estimate=0.0002,
            status="error" if index % 10 == 0 else "success",
            error_type="timeout" if index % 10 == 0 else "",
        )
        for index in range(120)
    ]
    LLMRequestLog.objects.bulk_create(logs)
    return list(LLMRequestLog.objects.order_by("-timestamp"))


def card(page, key: str) -> float:
    return float(page.get_attribute(f".metric[data-key={key}]", "data-value"))


def test_custom_range_applies_and_is_shareable(page_for, live_server, calls):
    page = page_for()
    page.goto(f"{live_server.url}/?range=24h")
    page.check("input[name=range][value=custom]")
    assert page.is_visible("input[name=start_date]")
    start = timezone.localtime() - timedelta(hours=5)
    end = timezone.localtime() - timedelta(hours=2)
    page.fill("input[name=start_date]", start.strftime("%Y-%m-%dT%H:%M"))
    page.fill("input[name=end_date]", end.strftime("%Y-%m-%dT%H:%M"))
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**range=custom**")
    cards = page.locator(".cards[data-start]")  # the key figures, not the spend cards
    window_start = datetime.fromisoformat(cards.get_attribute("data-start"))
    window_end = datetime.fromisoformat(cards.get_attribute("data-end"))
    assert window_start == start.replace(second=0, microsecond=0)
    expected = LLMRequestLog.objects.filter(timestamp__gte=window_start, timestamp__lte=window_end).count()
    assert card(page, "requests") == expected
    assert 0 < expected < len(calls)

    # The URL alone reproduces the view in another session.
    shared = page_for()
    shared.goto(page.url)
    assert shared.locator("input[name=range][value=custom]").is_checked()
    assert card(shared, "requests") == expected
    assert page.problems == shared.problems == []


def test_auto_refresh_is_opt_in(page_for, live_server, calls):
    page = page_for()
    page.clock.install()
    page.goto(f"{live_server.url}/analytics/?range=24h")
    page.evaluate("() => { window.marker = 1; }")
    page.clock.run_for(120_000)
    assert page.evaluate("() => window.marker") == 1  # off by default: no reload

    with page.expect_navigation():
        page.check("input[name=refresh]")
    assert "refresh=1" in page.url and "range=24h" in page.url
    page.evaluate("() => { window.marker = 1; }")
    with page.expect_navigation():
        page.clock.run_for(31_000)
    assert page.evaluate("() => window.marker") is None
    assert page.locator("input[name=refresh]").is_checked()
    assert page.problems == []


def test_logs_search_and_pagination_keep_the_filter(page_for, live_server, calls):
    page = page_for()
    page.goto(f"{live_server.url}/logs/?range=7d")
    assert page.text_content(".pagination span") == "Page 1 of 3"
    first_page = page.locator("tbody tr").all_text_contents()
    page.click("a[rel=next]")
    page.wait_for_url("**page=2**")
    assert "range=7d" in page.url
    assert page.locator("tbody tr").count() == 50
    assert page.locator("tbody tr").all_text_contents() != first_page

    page.fill("input[name=search]", "INVOICE")
    page.press("input[name=search]", "Enter")
    page.wait_for_url("**search=INVOICE**")
    expected = sum("invoice" in log.prompt_text for log in calls)
    assert page.text_content(".table-head strong") == str(expected) == "20"
    assert page.locator("tbody tr").count() == expected
    assert page.locator(".pagination").count() == 0
    assert page.problems == []


def test_json_export_button_has_the_filtered_rows(page_for, live_server, calls):
    page = page_for()
    page.goto(f"{live_server.url}/logs/?range=7d&model={MODELS[0]}&status=success&search=invoice")
    with page.expect_download() as download:
        page.click("#export-json")
    rows = json.loads(Path(download.value.path()).read_text())
    expected = {
        str(log.request_id)
        for log in calls
        if log.model_name == MODELS[0] and log.status == "success" and "invoice" in log.prompt_text
    }
    assert {row["request_id"] for row in rows} == expected
    assert len(expected) == 16  # every 6th call mentions an invoice, minus the failed ones
    assert download.value.suggested_filename.endswith(".json")


def test_feedback_on_a_call_is_stored_and_shown(page_for, live_server, calls):
    log = calls[3]
    page = page_for()
    page.goto(f"{live_server.url}/logs/{log.request_id}/")
    page.check("input[name=rating][value=thumbs_down]")
    page.fill("textarea[name=comment]", "Wrong total on the invoice")
    page.click("button:has-text('Save feedback')")
    page.wait_for_selector(".messages:has-text('Thanks')")
    page.reload()
    assert "Wrong total on the invoice" in page.text_content("main")
    feedback = UserFeedback.objects.get(request=log)
    assert (feedback.rating, feedback.comment) == ("thumbs_down", "Wrong total on the invoice")
    assert page.problems == []


def test_log_out(page_for, live_server):
    page = page_for()
    page.click("button:has-text('Log out')")
    page.wait_for_url("**/accounts/login/")
    page.goto(f"{live_server.url}/logs/")
    assert "/accounts/login/?next=/logs/" in page.url
    assert page.is_visible("#id_username")


@pytest.mark.parametrize("path", ["/", "/analytics/", "/logs/", "/feedback/", "/alerts/", "/playground/"])
def test_phone_width_needs_no_sideways_scrolling(page_for, live_server, calls, path):
    """Wide tables scroll inside their card; the page itself fits a 390 px wide phone."""
    page = page_for(390)
    page.goto(f"{live_server.url}{path}")
    page.wait_for_load_state("networkidle")
    too_wide = page.evaluate(
        """() => {
            const width = document.documentElement.clientWidth;
            return [...document.querySelectorAll("body *")]
                .filter((element) => element.getBoundingClientRect().right > width + 0.5)
                .filter((element) => !element.closest(".table-wrap"))  // scrolls inside its card
                .map((element) => element.outerHTML.split(">")[0].slice(0, 120) + ">");
        }"""
    )
    assert too_wide == []
    assert page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth") == 0


def test_playground_shows_the_answer_while_it_streams(page_for, live_server, fake_groq, model_prices):
    fake_groq.default = Behaviour(chunks=["Once", " upon", " a", " time"], chunk_delay_seconds=0.3)
    page = page_for()
    page.goto(f"{live_server.url}/playground/")
    page.fill("#pg-prompt", "Tell a story")
    page.click("#pg-send")
    # Part of the answer is on screen before the last chunk and the figures arrive.
    page.wait_for_function(
        """() => {
            const text = document.getElementById("pg-answer").textContent;
            return text.startsWith("Once") && text !== "Once upon a time"
                && document.getElementById("pg-figures").hidden;
        }"""
    )
    assert page.is_disabled("#pg-send")  # no second prompt while one streams
    page.wait_for_selector("#pg-figures:not([hidden])")
    assert page.text_content("#pg-answer") == "Once upon a time"
    assert page.is_enabled("#pg-send")
    assert page.problems == []


def test_playground_shows_an_error_in_the_middle_of_the_stream(page_for, live_server, fake_groq, model_prices):
    fake_groq.default = Behaviour(mode="stream_error", chunks=["Once", " upon", " a", " time"])
    page = page_for()
    page.goto(f"{live_server.url}/playground/")
    page.fill("#pg-prompt", "Tell a story")
    page.click("#pg-send")
    page.wait_for_selector("#pg-error:not(:empty)")
    page.wait_for_selector("#pg-send:enabled")
    assert page.text_content("#pg-answer") == "Once upon"
    log = LLMRequestLog.objects.get()
    assert log.status == "error"
    assert "Groq reported an error in the middle of the answer" in page.text_content("#pg-error")
    assert page.get_attribute("#pg-error-link", "href") == f"/logs/{log.request_id}/"
    assert page.is_hidden("#pg-rate")  # nothing to rate
    assert page.problems == []


def test_playground_shows_a_refused_prompt(page_for, live_server, fake_groq, model_prices):
    fake_groq.default = Behaviour(mode="status", status=429, error_message="Rate limit reached for model")
    page = page_for()
    page.goto(f"{live_server.url}/playground/")
    page.fill("#pg-prompt", "Hello?")
    page.click("#pg-send")
    page.wait_for_selector("#pg-error:not(:empty)")
    assert "Groq is rate limiting this API key" in page.text_content("#pg-error")
    assert page.text_content("#pg-upstream-text") == "Rate limit reached for model"
    assert LLMRequestLog.objects.get().error_type == "rate_limit"
    assert page.is_hidden("#pg-figures") and page.is_hidden("#pg-rate")
    # The only problem the browser saw is the 429 answer itself.
    assert page.problems and all("429" in problem for problem in page.problems)


def test_trace_page_indents_calls_under_their_parent(page_for, live_server, model_prices):
    trace_id = "7f" * 16
    now = timezone.now()
    spans = {"root": ("a" * 16, ""), "child": ("b" * 16, "a" * 16), "grandchild": ("c" * 16, "b" * 16)}
    spans["sibling"] = ("d" * 16, "a" * 16)
    for index, (name, (span_id, parent)) in enumerate(spans.items()):
        make_log(
            timestamp=now - timedelta(seconds=10 - index),
            model_name=f"model-{name}",
            latency_ms=100,
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=parent,
        )
    page = page_for()
    page.goto(f"{live_server.url}/logs/{LLMRequestLog.objects.get(model_name='model-grandchild').request_id}/")
    page.click(f"a[href='/traces/{trace_id}/']")
    page.wait_for_url(f"**/traces/{trace_id}/")
    lefts = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll(".waterfall li.wf-call")].map(
            (item) => [item.querySelector("a").textContent, item.querySelector("a").getBoundingClientRect().left]))"""
    )
    assert list(lefts) == ["model-root", "model-child", "model-grandchild", "model-sibling"]  # time order
    assert lefts["model-root"] < lefts["model-child"] < lefts["model-grandchild"]
    assert lefts["model-sibling"] == lefts["model-child"]
    assert page.problems == []
