"""Every dashboard page: login required, renders, shows the right things (Django test client)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from llm import metrics, rollup_math
from llm.dashboard import time_range
from llm.models import AlertLog, DashboardSettings, LLMRequestLog, UserFeedback
from tests.factories import build_log, make_alert, make_feedback, make_rule

pytestmark = pytest.mark.django_db

PAGES = ["/", "/analytics/", "/logs/", "/feedback/", "/alerts/", "/playground/"]


@pytest.fixture
def browser(client, staff_user):
    client.force_login(staff_user)
    return client


@pytest.fixture
def traffic(model_prices):
    now = timezone.now()
    logs = []
    for index in range(40):
        failed = index % 8 == 0
        logs.append(
            build_log(
                timestamp=now - timedelta(minutes=20 * index),
                model_name="llama-3.1-8b-instant" if index % 2 else "openai/gpt-oss-20b",
                user_id=f"user-{index % 3}",
                prompt_text=f"question {index}",
                response_text="" if failed else f"answer {index}",
                prompt_tokens=100 + index,
                completion_tokens=0 if failed else 50,
                latency_ms=100.0 + 10 * index,
                status="error" if failed else "success",
                error_type="timeout" if failed else "",
                error_message="Request timed out." if failed else "",
                trace_id="ab" * 16 if index < 3 else "",
                span_id=f"{index:016x}" if index < 3 else "",
                parent_span_id=f"{0:016x}" if 0 < index < 3 else "",
            )
        )
    LLMRequestLog.objects.bulk_create(logs)
    return list(LLMRequestLog.objects.order_by("-timestamp"))


@pytest.mark.parametrize("path", [*PAGES, f"/logs/{uuid.uuid4()}/", f"/traces/{'cd' * 16}/"])
def test_pages_redirect_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.parametrize("path", PAGES)
def test_pages_render_with_data(browser, traffic, path):
    response = browser.get(path)
    assert response.status_code == 200
    assert b"LLM Observatory" in response.content


@pytest.mark.parametrize("path", ["/", "/logs/"])
def test_empty_state_tells_what_to_do(browser, path):
    response = browser.get(path)
    assert response.status_code == 200
    assert b"generate_sample_data" in response.content


def test_login_page_and_login(client, staff_user):
    assert client.get("/accounts/login/").status_code == 200
    response = client.post("/accounts/login/", {"username": "alice", "password": "secret-password"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_overview_cards_equal_metrics(browser, traffic):
    response = browser.get("/", {"range": "24h"})
    window = response.context["window"]
    expected = metrics.overview(LLMRequestLog.objects.in_window(window.start, window.end))
    cards = {card["key"]: card["value"] for card in response.context["cards"]}
    assert (
        cards["requests"]
        == expected["total_requests"]
        == len([log for log in traffic if log.timestamp >= window.start])
    )
    assert cards["error_rate"] == pytest.approx(expected["error_rate"])
    # 24 hours read from the roll-ups: percentiles within their documented bound of the exact ones.
    assert response.context["percentiles"] == metrics.PERCENTILES_APPROXIMATE
    assert cards["p95_latency_ms"] == pytest.approx(expected["p95_latency_ms"], rel=rollup_math.ERROR_BOUND)
    assert cards["total_cost"] == pytest.approx(expected["total_cost"])
    # Previous period: the 24 hours before.
    previous = metrics.overview(LLMRequestLog.objects.in_window(window.start - timedelta(hours=24), window.start))
    requests_card = next(card for card in response.context["cards"] if card["key"] == "requests")
    assert requests_card["previous"] == previous["total_requests"]


def test_model_filter_changes_the_figures(browser, traffic):
    all_models = browser.get("/", {"range": "24h"}).context["figures"]["total_requests"]
    one_model = browser.get("/", {"range": "24h", "model": "openai/gpt-oss-20b"}).context["figures"]["total_requests"]
    assert 0 < one_model < all_models


def test_card_levels_follow_thresholds(browser, traffic):
    settings_row = DashboardSettings.load()
    settings_row.error_rate_amber, settings_row.error_rate_red = 1, 50
    settings_row.save()
    cards = {card["key"]: card for card in browser.get("/").context["cards"]}
    assert cards["error_rate"]["level"] == "amber"
    settings_row.error_rate_red = 2
    settings_row.save()
    cards = {card["key"]: card for card in browser.get("/").context["cards"]}
    assert cards["error_rate"]["level"] == "red"


def test_custom_range_and_bad_range(browser, traffic):
    response = browser.get("/", {"range": "custom", "start_date": "2026-01-01T00:00", "end_date": "2026-01-02T00:00"})
    assert response.context["window"].key == "custom"
    assert response.context["figures"]["total_requests"] == 0
    response = browser.get("/", {"range": "custom", "start_date": "garbage"})
    assert response.status_code == 200
    assert "start_date" in response.context["window"].errors
    assert browser.get("/", {"range": "99y"}).context["window"].errors["range"]


def test_logs_page_filters_search_and_export_links(browser, traffic):
    response = browser.get("/logs/", {"range": "7d", "status": "error"})
    assert response.context["page_obj"].paginator.count == len([log for log in traffic if log.is_error])
    html = response.content.decode()
    assert "/api/export/csv/?" in html and "status=error" in html
    response = browser.get("/logs/", {"range": "7d", "search": "question 1"})
    expected = [log for log in traffic if "question 1" in log.prompt_text]
    assert response.context["page_obj"].paginator.count == len(expected)
    assert browser.get("/logs/", {"status": "maybe"}).context["window"].errors["status"]


def test_log_detail_and_feedback_form(browser, traffic):
    log = traffic[1]
    page = browser.get(f"/logs/{log.request_id}/")
    assert page.status_code == 200
    assert log.prompt_text in page.content.decode()
    response = browser.post(f"/logs/{log.request_id}/", {"rating": "thumbs_up", "comment": "spot on"})
    assert response.status_code == 302
    assert UserFeedback.objects.get(request=log).comment == "spot on"
    assert browser.post(f"/logs/{log.request_id}/", {"rating": "meh"}).status_code == 200
    assert UserFeedback.objects.count() == 1
    assert browser.get(f"/logs/{uuid.uuid4()}/").status_code == 404


def test_logs_page_shows_source_and_links_the_trace(browser, traffic):
    html = browser.get("/logs/", {"range": "24h"}).content.decode()
    assert f'href="/traces/{"ab" * 16}/"' in html
    assert f"{1:016x}" in html  # a span id
    assert "<td>proxy</td>" in html


def test_trace_page_lists_the_calls(browser, traffic):
    page = browser.get(f"/traces/{'ab' * 16}/")
    assert page.status_code == 200
    assert len(page.context["calls"]) == 3
    assert browser.get(f"/traces/{'ef' * 16}/").status_code == 404
    assert browser.get("/traces/not-hex/").status_code == 404


def test_alerts_page_shows_state_and_acknowledges(browser, traffic, staff_user):
    rule = make_rule(name="Errors", metric_type="error_rate", threshold=1, time_window_minutes=600)
    alert = make_alert(rule, message="error rate 12%", metric_value=12)
    page = browser.get("/alerts/")
    (item,) = page.context["rules"]
    assert item["evaluation"].breached is True
    assert "firing" in page.content.decode()
    response = browser.post(f"/alerts/{alert.pk}/acknowledge/")
    assert response.status_code == 302
    alert.refresh_from_db()
    assert alert.acknowledged and alert.acknowledged_by == staff_user
    assert browser.get(f"/alerts/{alert.pk}/acknowledge/").status_code == 405


def test_feedback_page_figures(browser, traffic):
    for log, rating in zip(traffic[:4], ["thumbs_up", "thumbs_up", "thumbs_down", "thumbs_up"], strict=True):
        make_feedback(log, rating, comment="c")
    summary = browser.get("/feedback/").context["summary"]
    assert (summary["thumbs_up"], summary["thumbs_down"]) == (3, 1)
    assert summary["satisfaction_rate"] == pytest.approx(75)


def test_time_range_parameters_match_the_api(db):
    window = time_range({"range": "7d", "model": "m"})
    params = window.api_params()
    assert params["model"] == "m"
    assert window.length == timedelta(days=7)
    assert window.group_by == "hour"


def test_analytics_compares_models(browser, traffic):
    response = browser.get("/analytics/", {"range": "24h"})
    html = response.content.decode()
    for row in response.context["models"]:
        assert f'<th scope="row">{row["model"]}' in html
    assert {row["model"] for row in response.context["models"]} == {"llama-3.1-8b-instant", "openai/gpt-oss-20b"}
    assert "no price" not in html


def test_alerts_page_with_alerts_acknowledged_by_nobody_in_particular(browser, traffic):
    """Sample data and API-key acknowledgements leave acknowledged_by empty."""
    rule = make_rule(name="Cost", metric_type="cost", threshold=1)
    for name in ["", "API key ops"]:
        make_alert(rule, acknowledged=True, acknowledged_at=timezone.now(), acknowledged_by_name=name)
    page = browser.get("/alerts/")
    assert page.status_code == 200
    assert "API key ops" in page.content.decode()


def test_logs_page_orders_the_worst_calls_first(browser, traffic):
    in_range = [log for log in traffic if log.timestamp >= timezone.now() - timedelta(hours=24)]
    for sort, key in [("slowest", "latency_ms"), ("costliest", "cost_estimate"), ("tokens", "total_tokens")]:
        response = browser.get("/logs/", {"range": "24h", "sort": sort})
        shown = [getattr(log, key) for log in response.context["page_obj"]]
        assert shown == sorted((getattr(log, key) for log in in_range), reverse=True)
        assert response.context["window"].options == {"sort": sort}
    newest = browser.get("/logs/", {"range": "24h"}).context["page_obj"]
    assert [log.pk for log in newest] == [log.pk for log in sorted(in_range, key=lambda log: log.timestamp)[::-1]]
    response = browser.get("/logs/", {"sort": "random"})
    assert response.status_code == 200
    assert response.context["window"].errors["sort"]
    # The export keeps the filter but has no use for the order.
    response = browser.get("/logs/", {"range": "24h", "sort": "slowest", "status": "error"})
    assert "sort" not in response.context["window"].api_params()
    assert response.context["window"].api_params()["status"] == "error"


def test_pagination_keeps_the_filter_and_order(browser, traffic, monkeypatch):
    monkeypatch.setattr("llm.views.LOGS_PER_PAGE", 5)
    response = browser.get("/logs/", {"range": "7d", "sort": "slowest", "model": "openai/gpt-oss-20b"})
    html = response.content.decode()
    assert 'href="?range=7d&amp;model=openai%2Fgpt-oss-20b&amp;sort=slowest&amp;page=2"' in html
    second = browser.get("/logs/", {"range": "7d", "sort": "slowest", "model": "openai/gpt-oss-20b", "page": 2})
    latencies = [log.latency_ms for log in response.context["page_obj"]] + [
        log.latency_ms for log in second.context["page_obj"]
    ]
    assert latencies == sorted(latencies, reverse=True)
    assert {log.model_name for log in second.context["page_obj"]} == {"openai/gpt-oss-20b"}


def test_overview_cards_link_to_the_calls_behind_them(browser, traffic):
    response = browser.get("/", {"range": "7d", "model": "llama-3.1-8b-instant"})
    links = {card["key"]: card["logs_query"] for card in response.context["cards"]}
    assert links["error_rate"] == "range=7d&model=llama-3.1-8b-instant&status=error"
    assert links["p95_latency_ms"] == "range=7d&model=llama-3.1-8b-instant&sort=slowest"
    failed = browser.get(f"/logs/?{links['error_rate']}").context["page_obj"]
    expected = [log for log in traffic if log.is_error and log.model_name == "llama-3.1-8b-instant"]
    assert {log.pk for log in failed} == {log.pk for log in expected}
    assert f'href="/logs/?{links["total_cost"].replace("&", "&amp;")}"' in response.content.decode()


def test_every_page_renders_over_sample_data(browser, model_prices):
    """What `make run` serves: sample traffic, feedback and triggered alerts (some acknowledged by
    nobody in particular: no user row)."""
    call_command("generate_sample_data", count=400, days=3, seed=7, verbosity=0)
    assert AlertLog.objects.filter(acknowledged=True, acknowledged_by=None).exists()
    log = LLMRequestLog.objects.exclude(trace_id="").first() or LLMRequestLog.objects.first()
    paths = [*PAGES, f"/logs/{log.request_id}/", "/logs/?sort=slowest&range=30d", "/?range=30d"]
    if log.trace_id:
        paths.append(f"/traces/{log.trace_id}/")
    for path in paths:
        assert browser.get(path).status_code == 200, path
    assert "sample data" in browser.get("/alerts/").content.decode()
