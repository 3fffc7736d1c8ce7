"""/api/alerts/rules/ and /api/alerts/logs/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from llm.models import AlertLog, AlertRule

pytestmark = pytest.mark.django_db

RULES_URL = "/api/alerts/rules/"
LOGS_URL = "/api/alerts/logs/"
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)

VALID_RULE = {
    "name": "Error rate above 5%",
    "metric_type": "error_rate",
    "threshold": 5,
    "time_window_minutes": 15,
    "cooldown_minutes": 60,
    "model_name": "",
    "email_recipients": "oncall@example.com; lead@example.com",
    "webhook_url": "https://hooks.slack.com/services/T000/B000/XXXX",
}


def make_rule(name: str = "rule", **fields) -> AlertRule:
    fields.setdefault("metric_type", AlertRule.MetricType.COST)
    fields.setdefault("threshold", 10)
    return AlertRule.objects.create(name=name, **fields)


def make_alert(rule: AlertRule, minutes_ago: float = 0, **fields) -> AlertLog:
    at = NOW - timedelta(minutes=minutes_ago)
    fields.setdefault("message", "cost $12.0000 over the last 60 min")
    return AlertLog.objects.create(
        alert_rule=rule,
        triggered_at=at,
        metric_value=12.0,
        threshold=rule.threshold,
        window_start=at - timedelta(hours=1),
        window_end=at,
        **fields,
    )


# Rules


def test_create_rule_and_read_it_back(api_client):
    response = api_client.post(RULES_URL, VALID_RULE, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    rule = AlertRule.objects.get()
    assert body["id"] == rule.pk
    assert body["email_recipients"] == rule.email_recipients == "oncall@example.com, lead@example.com"
    assert (body["is_firing"], body["last_value"], body["last_checked_at"]) == (False, None, None)
    assert api_client.get(f"{RULES_URL}{rule.pk}/").json() == body
    assert api_client.get(RULES_URL).json() == [body]


def test_state_fields_are_read_only(api_client):
    response = api_client.post(RULES_URL, {**VALID_RULE, "is_firing": True, "last_value": 99}, format="json")
    assert response.status_code == 201
    rule = AlertRule.objects.get()
    assert (rule.is_firing, rule.last_value) == (False, None)


def test_update_patch_and_delete_rule(api_client):
    rule = make_rule()
    url = f"{RULES_URL}{rule.pk}/"
    response = api_client.put(url, {**VALID_RULE, "name": "renamed", "threshold": 7.5}, format="json")
    assert response.status_code == 200, response.json()
    rule.refresh_from_db()
    assert (rule.name, rule.threshold, rule.metric_type) == ("renamed", 7.5, "error_rate")

    assert api_client.patch(url, {"is_active": False}, format="json").status_code == 200
    rule.refresh_from_db()
    assert (rule.is_active, rule.threshold) == (False, 7.5)

    assert api_client.delete(url).status_code == 204
    assert not AlertRule.objects.exists()
    assert api_client.get(url).status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metric_type": "latency_p50"}, "metric_type"),
        ({"threshold": -1}, "threshold"),
        ({"threshold": "lots"}, "threshold"),
        ({"threshold": "NaN"}, "threshold"),
        ({"threshold": "Infinity"}, "threshold"),
        ({"metric_type": "error_rate", "threshold": 100.5}, "threshold"),
        ({"time_window_minutes": 0}, "time_window_minutes"),
        ({"time_window_minutes": 10081}, "time_window_minutes"),
        ({"cooldown_minutes": -1}, "cooldown_minutes"),
        ({"cooldown_minutes": 10081}, "cooldown_minutes"),
        ({"webhook_url": "ftp://example.com/hook"}, "webhook_url"),
        ({"webhook_url": "javascript:alert(1)"}, "webhook_url"),
        ({"webhook_url": "not a url"}, "webhook_url"),
        ({"email_recipients": "oncall@example.com, not-an-address"}, "email_recipients"),
        ({"name": ""}, "name"),
    ],
)
def test_invalid_rule_is_refused_naming_the_field(api_client, change, field):
    response = api_client.post(RULES_URL, {**VALID_RULE, **change}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "Invalid input."
    assert list(body["fields"]) == [field]
    assert not AlertRule.objects.exists()


def test_bounds_themselves_are_accepted(api_client):
    edge = {"time_window_minutes": 10080, "cooldown_minutes": 0, "threshold": 100, "webhook_url": "http://x.test/"}
    assert api_client.post(RULES_URL, {**VALID_RULE, **edge}, format="json").status_code == 201
    one_minute = {**VALID_RULE, "name": "tiny", "time_window_minutes": 1, "threshold": 0, "webhook_url": ""}
    assert api_client.post(RULES_URL, one_minute, format="json").status_code == 201


def test_duplicate_name_is_refused(api_client):
    make_rule(VALID_RULE["name"])
    response = api_client.post(RULES_URL, VALID_RULE, format="json")
    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["name"]


def test_patch_checks_the_error_rate_bound_against_the_stored_metric(api_client):
    rule = make_rule(metric_type=AlertRule.MetricType.ERROR_RATE, threshold=5)
    response = api_client.patch(f"{RULES_URL}{rule.pk}/", {"threshold": 150}, format="json")
    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["threshold"]


def test_unknown_rule_is_404(api_client):
    assert api_client.get(f"{RULES_URL}999/").status_code == 404
    assert api_client.patch(f"{RULES_URL}999/", {"threshold": 1}, format="json").status_code == 404


def test_alerts_api_needs_credentials(anonymous_client):
    assert anonymous_client.get(RULES_URL).status_code == 401
    assert anonymous_client.get(LOGS_URL).status_code == 401
    assert anonymous_client.post(f"{LOGS_URL}1/acknowledge/").status_code == 401


# Logs


def test_logs_list_newest_first_with_rule_name(api_client):
    rule = make_rule("spend")
    older, newer = make_alert(rule, minutes_ago=30), make_alert(rule, minutes_ago=5, kind="resolved")
    body = api_client.get(LOGS_URL).json()
    assert body["count"] == 2
    assert [row["id"] for row in body["results"]] == [newer.pk, older.pk]
    row = body["results"][0]
    assert (row["alert_rule"], row["rule_name"], row["metric_type"], row["kind"]) == (
        rule.pk,
        "spend",
        "cost",
        "resolved",
    )
    assert row["acknowledged"] is False and row["acknowledged_by"] is None


def test_logs_filters(api_client):
    first, second = make_rule("first"), make_rule("second")
    old = make_alert(first, minutes_ago=120)
    recent = make_alert(first, minutes_ago=10, acknowledged=True, acknowledged_by_name="bob")
    other = make_alert(second, minutes_ago=5, kind="resolved")

    def ids(**params) -> set[int]:
        response = api_client.get(LOGS_URL, params)
        assert response.status_code == 200, response.json()
        return {row["id"] for row in response.json()["results"]}

    assert ids(rule=first.pk) == {old.pk, recent.pk}
    assert ids(acknowledged="true") == {recent.pk}
    assert ids(acknowledged="false") == {old.pk, other.pk}
    assert ids(since=(NOW - timedelta(minutes=60)).isoformat()) == {recent.pk, other.pk}
    assert ids(until=(NOW - timedelta(minutes=60)).isoformat()) == {old.pk}
    assert ids(kind="resolved") == {other.pk}
    assert ids(rule=first.pk, acknowledged="false") == {old.pk}


@pytest.mark.parametrize(
    ("params", "field"),
    [({"since": "yesterday"}, "since"), ({"rule": "abc"}, "rule"), ({"kind": "exploded"}, "kind")],
)
def test_bad_log_filter_is_400_naming_it(api_client, params, field):
    response = api_client.get(LOGS_URL, params)
    assert response.status_code == 400
    assert field in response.json()["fields"]


def test_logs_are_paginated(api_client):
    rule = make_rule()
    for minutes in range(7):
        make_alert(rule, minutes_ago=minutes)
    body = api_client.get(LOGS_URL, {"page_size": 3, "page": 3}).json()
    assert body["count"] == 7
    assert len(body["results"]) == 1
    assert api_client.get(LOGS_URL, {"page": 9}).status_code == 404


def test_logs_list_query_count_does_not_grow_with_rows(api_client, django_assert_max_num_queries, staff_user):
    for index in range(3):
        rule = make_rule(f"rule {index}")
        for minutes in range(10):
            make_alert(rule, minutes_ago=minutes).acknowledge(staff_user)
    # Authentication (API key lookup) + count + page.
    with django_assert_max_num_queries(4):
        body = api_client.get(LOGS_URL).json()
    assert len(body["results"]) == 30
    assert {row["acknowledged_by"] for row in body["results"]} == {"alice"}


def test_acknowledge_with_a_session_records_the_user(logged_in_client, staff_user, time_machine):
    time_machine.move_to(NOW, tick=False)
    alert = make_alert(make_rule())
    response = logged_in_client.post(f"{LOGS_URL}{alert.pk}/acknowledge/")
    assert response.status_code == 200
    body = response.json()
    assert (body["acknowledged"], body["acknowledged_by"], body["acknowledged_at"]) == (
        True,
        "alice",
        "2026-03-10T12:00:00Z",
    )
    alert.refresh_from_db()
    assert (alert.acknowledged_by, alert.acknowledged_at) == (staff_user, NOW)


def test_acknowledge_with_an_api_key_records_the_key_and_keeps_the_first(api_client, logged_in_client):
    alert = make_alert(make_rule())
    first = api_client.post(f"{LOGS_URL}{alert.pk}/acknowledge/").json()
    assert first["acknowledged_by"] == "API key tests"
    again = logged_in_client.post(f"{LOGS_URL}{alert.pk}/acknowledge/").json()
    assert (again["acknowledged_by"], again["acknowledged_at"]) == ("API key tests", first["acknowledged_at"])


def test_acknowledge_unknown_alert_is_404(api_client):
    response = api_client.post(f"{LOGS_URL}999/acknowledge/")
    assert response.status_code == 404
    assert "error" in response.json()


def test_acknowledge_needs_post(api_client):
    alert = make_alert(make_rule())
    assert api_client.get(f"{LOGS_URL}{alert.pk}/acknowledge/").status_code == 405
    alert.refresh_from_db()
    assert alert.acknowledged is False


def test_admin_acknowledge_action(admin_client, admin_user):
    rule = make_rule()
    pending, done = make_alert(rule), make_alert(rule, acknowledged=True, acknowledged_by_name="bob")
    response = admin_client.post(
        "/admin/llm/alertlog/",
        {"action": "acknowledge", "_selected_action": [pending.pk, done.pk]},
        follow=True,
    )
    assert "Acknowledged 1 alert(s)." in [str(message) for message in response.context["messages"]]
    pending.refresh_from_db()
    done.refresh_from_db()
    assert (pending.acknowledged, pending.acknowledged_by, pending.acknowledged_by_name) == (True, admin_user, "admin")
    assert done.acknowledged_by_name == "bob"


def test_schema_documents_the_alert_endpoints(api_client):
    schema = api_client.get("/api/schema/", {"format": "json"}).json()
    for path in [
        "/api/alerts/rules/",
        "/api/alerts/rules/{id}/",
        "/api/alerts/logs/",
        "/api/alerts/logs/{id}/acknowledge/",
        "/api/alerts/rules/{id}/test/",
        "/api/alerts/rules/{id}/check/",
    ]:
        assert path in schema["paths"]
    test_answer = schema["paths"]["/api/alerts/rules/{id}/test/"]["post"]["responses"]["200"]
    assert test_answer["content"]["application/json"]["schema"]["$ref"].endswith("/TestNotification")


# Test notification and check now


def rule_url(rule_id: int, action: str) -> str:
    return f"{RULES_URL}{rule_id}/{action}/"


def test_test_notification_reaches_smtp_and_webhook_and_stores_nothing(api_client, smtp_server, webhook_receiver):
    rule = make_rule(email_recipients="oncall@example.com", webhook_url=webhook_receiver.url)
    state_before = AlertRule.objects.values().get(pk=rule.pk)

    response = api_client.post(rule_url(rule.pk, "test"))

    assert response.status_code == 200
    body = response.json()
    assert (body["rule_id"], body["sent"], body["summary"]) == (rule.pk, True, "email sent, webhook sent")
    assert body["notifications"]["email"]["recipients"] == ["oncall@example.com"]
    assert body["notifications"]["webhook"]["http_status"] == 200
    assert smtp_server.messages[0]["Subject"].startswith("[TEST] rule: Test notification")
    assert webhook_receiver.requests[0].json()["status"] == "test"
    assert AlertLog.objects.count() == 0
    assert AlertRule.objects.values().get(pk=rule.pk) == state_before


def test_test_notification_answers_each_channels_error(api_client, smtp_server, webhook_receiver):
    webhook_receiver.status = 500
    rule = make_rule(email_recipients="oncall@example.com", webhook_url=webhook_receiver.url)
    body = api_client.post(rule_url(rule.pk, "test")).json()
    assert body["sent"] is False
    assert body["notifications"]["email"]["status"] == "sent"
    assert body["notifications"]["webhook"]["status"] == "error"
    assert body["notifications"]["webhook"]["error"].startswith("HTTP 500")


@pytest.mark.parametrize(
    ("site_url", "link"),
    [("https://observatory.example", "https://observatory.example/alerts/"), ("", "http://localhost:9000/alerts/")],
)
def test_test_notification_links_use_site_url_else_the_requests_origin(
    api_client, webhook_receiver, settings, site_url, link
):
    settings.SITE_URL = site_url
    rule = make_rule(notify_email=False, webhook_url=webhook_receiver.url)
    assert api_client.post(rule_url(rule.pk, "test"), HTTP_HOST="localhost:9000").status_code == 200
    assert webhook_receiver.requests[0].json()["link"] == link


def test_test_notification_for_a_rule_without_channel_is_400_naming_it(api_client, smtp_server, settings):
    settings.ALERT_EMAIL_RECIPIENTS, settings.ALERT_WEBHOOK_URL = [], ""
    rule = make_rule(name="Quiet rule")
    response = api_client.post(rule_url(rule.pk, "test"))
    assert response.status_code == 400
    [error] = response.json()["fields"]["channels"]
    assert error.startswith(f"Rule “Quiet rule” (#{rule.pk}): No channel: add e-mail recipients or a webhook")
    assert smtp_server.messages == []


@pytest.mark.parametrize("action", ["test", "check"])
def test_test_and_check_of_an_unknown_rule_are_404(api_client, action):
    assert api_client.post(rule_url(999_999, action)).status_code == 404


@pytest.mark.parametrize("action", ["test", "check"])
def test_test_and_check_need_post_and_credentials(api_client, anonymous_client, action):
    rule = make_rule()
    assert api_client.get(rule_url(rule.pk, action)).status_code == 405
    assert anonymous_client.post(rule_url(rule.pk, action)).status_code in (401, 403)


def test_check_now_fires_and_notifies_once_under_the_cooldown(api_client, smtp_server, time_machine):
    time_machine.move_to(NOW, tick=False)
    # No traffic at all: a dead man's switch fires.
    rule = make_rule(
        metric_type=AlertRule.MetricType.NO_TRAFFIC,
        threshold=1,
        time_window_minutes=10,
        cooldown_minutes=30,
        email_recipients="oncall@example.com",
    )

    first = api_client.post(rule_url(rule.pk, "check")).json()
    alert = AlertLog.objects.get()
    assert (first["state"], first["value"], first["notice"], first["alert_id"]) == ("firing", 0.0, "fired", alert.pk)
    assert first["summary"].endswith("0 requests in 10 min: FIRING; notice: fired")
    assert first["deliveries"] == [
        {
            "alert_id": alert.pk,
            "kind": "fired",
            "delivery": "email sent",
            "notifications": first["deliveries"][0]["notifications"],
        }
    ]
    assert len(smtp_server.messages) == 1

    time_machine.move_to(NOW + timedelta(minutes=29), tick=False)
    second = api_client.post(rule_url(rule.pk, "check")).json()
    assert (second["state"], second["notice"], second["alert_id"], second["deliveries"]) == ("firing", None, None, [])
    assert AlertLog.objects.count() == 1
    assert len(smtp_server.messages) == 1

    time_machine.move_to(NOW + timedelta(minutes=31), tick=False)
    third = api_client.post(rule_url(rule.pk, "check")).json()
    assert third["notice"] == "fired"  # the reminder cron would also send after the cooldown
    assert len(smtp_server.messages) == 2
    rule.refresh_from_db()
    assert rule.last_checked_at == NOW + timedelta(minutes=31)


def test_check_now_of_a_fine_rule_writes_state_and_sends_nothing(api_client, smtp_server):
    rule = make_rule(threshold=10, email_recipients="oncall@example.com")
    body = api_client.post(rule_url(rule.pk, "check")).json()
    assert (body["state"], body["value"], body["notice"], body["deliveries"]) == ("ok", 0.0, None, [])
    rule.refresh_from_db()
    assert rule.last_checked_at is not None and rule.is_firing is False
    assert smtp_server.messages == []


def test_check_now_of_an_inactive_rule_is_400_naming_is_active(api_client):
    rule = make_rule(is_active=False)
    response = api_client.post(rule_url(rule.pk, "check"))
    assert response.status_code == 400
    assert "inactive" in response.json()["fields"]["is_active"][0]
    rule.refresh_from_db()
    assert rule.last_checked_at is None


def test_kind_filter_refuses_test_which_is_never_stored(api_client):
    response = api_client.get(LOGS_URL, {"kind": "test"})
    assert response.status_code == 400
    assert "kind" in response.json()["fields"]


def test_check_now_of_a_rule_that_cannot_be_evaluated_is_400_not_500(api_client):
    rule = make_rule(metric_type="retired_metric")  # e.g. left behind by a downgrade
    response = api_client.post(rule_url(rule.pk, "check"))
    assert response.status_code == 400
    assert "retired_metric" in response.json()["fields"]["rule"][0]
