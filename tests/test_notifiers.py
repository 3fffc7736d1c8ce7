"""Channels (llm/notifiers.py) against a real SMTP server and a real webhook receiver on 127.0.0.1."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llm import alerts, notifiers
from llm.models import AlertLog, AlertRule, DashboardSettings
from tests.alert_receivers import free_port
from tests.factories import make_alert, make_rule

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


ERROR_RATE_RULE = {
    "name": "Error rate above 5%",
    "metric_type": AlertRule.MetricType.ERROR_RATE,
    "threshold": 5,
    "time_window_minutes": 15,
    "email_recipients": "oncall@example.com, lead@example.com",
}


def error_rate_rule(**fields) -> AlertRule:
    return make_rule(**ERROR_RATE_RULE | fields)


def notice(rule: AlertRule, kind: str = AlertLog.Kind.FIRED, value: float = 12.5) -> AlertLog:
    message = f"error rate {value:.2f}% over the last 15 min (fires above 5.00%; 40 requests)"
    return make_alert(rule, triggered_at=NOW, kind=kind, message=message, metric_value=value)


def delivered(alert: AlertLog) -> AlertLog:
    assert alerts.deliver(alert, NOW)
    alert.refresh_from_db()
    return alert


def test_email_reaches_the_smtp_server_with_the_facts(smtp_server, settings):
    settings.SITE_URL = "https://observatory.test/"
    rule = error_rate_rule(description="More than one call in twenty failed.", model_name="qwen/qwen3-32b")
    alert = delivered(notice(rule))

    assert len(smtp_server.messages) == 1
    message = smtp_server.messages[0]
    assert message["From"] == "Observatory <alerts@observatory.test>"
    assert message["To"] == "oncall@example.com, lead@example.com"
    assert smtp_server.envelopes[0] == ("alerts@observatory.test", ["oncall@example.com", "lead@example.com"])
    assert message["Subject"].startswith("[FIRING] Error rate above 5%: error rate 12.50%")
    body = message.get_content()
    for expected in [
        "More than one call in twenty failed.",
        "Metric:    Error rate (%)",
        "Model:     qwen/qwen3-32b",
        "Value:     12.5",
        "Threshold: 5",
        "Window:    2026-03-10 11:45:00 to 2026-03-10 12:00:00 UTC",
        "Alerts: https://observatory.test/alerts/",
    ]:
        assert expected in body
    assert alert.notifications["email"]["status"] == "sent"
    assert alert.notifications["email"]["recipients"] == ["oncall@example.com", "lead@example.com"]
    assert alert.delivered_at is not None


def test_resolved_notice_says_resolved(smtp_server):
    delivered(notice(error_rate_rule(), kind=AlertLog.Kind.RESOLVED, value=1.0))
    assert smtp_server.messages[0]["Subject"].startswith("[RESOLVED] Error rate above 5%")


def test_email_falls_back_to_alert_email_recipients(smtp_server, settings):
    settings.ALERT_EMAIL_RECIPIENTS = ["team@example.com"]
    alert = delivered(notice(error_rate_rule(email_recipients="")))
    assert smtp_server.envelopes[0][1] == ["team@example.com"]
    assert alert.notifications["email"]["status"] == "sent"


def test_rule_without_any_channel_attempts_nothing_and_records_no_channel(smtp_server, settings, caplog):
    settings.ALERT_EMAIL_RECIPIENTS = []
    settings.ALERT_WEBHOOK_URL = ""
    rule = error_rate_rule(email_recipients="")
    assert notifiers.channel_names(rule) == []
    with caplog.at_level("WARNING"):
        alert = delivered(notice(rule))
    assert smtp_server.messages == []
    assert alert.notifications == {}
    assert alert.delivery_note == "not sent: no channel"
    assert alert.delivery_summary == "not sent: no channel"
    assert alert.delivered_at is not None  # settled: the next run does not pick it up again
    # Nothing logged by the app (the SMTP test server may log a previous test's connection closing).
    assert [record for record in caplog.records if record.name.startswith("llm")] == []


def test_email_without_recipients_is_no_channel_when_a_webhook_is_set(smtp_server, webhook_receiver, settings):
    settings.ALERT_EMAIL_RECIPIENTS = []
    rule = error_rate_rule(email_recipients="", webhook_url=webhook_receiver.url)
    assert notifiers.channel_names(rule) == ["webhook"]
    alert = delivered(notice(rule))
    assert list(alert.notifications) == ["webhook"]
    assert alert.notifications["webhook"]["status"] == "sent"
    assert (alert.delivery_note, alert.delivery_summary) == ("", "webhook sent")
    assert smtp_server.messages == []


def test_rule_with_email_turned_off_sends_no_email(smtp_server):
    alert = delivered(notice(error_rate_rule(notify_email=False)))
    assert smtp_server.messages == []
    assert alert.notifications == {}


def test_webhook_posts_slack_compatible_json_with_structured_fields(webhook_receiver):
    rule = error_rate_rule(webhook_url=webhook_receiver.url, notify_email=False, model_name="qwen/qwen3-32b")
    alert = delivered(notice(rule))

    assert len(webhook_receiver.requests) == 1
    request = webhook_receiver.requests[0]
    assert request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json"
    payload = request.json()
    assert payload["text"].startswith("[FIRING] Error rate above 5%: error rate 12.50%")
    assert "<https://observatory.test/alerts/|Open alerts>" in payload["text"]
    assert payload == {
        "text": payload["text"],
        "status": "firing",
        "test": False,
        "alert_id": alert.pk,
        "rule": "Error rate above 5%",
        "rule_id": rule.pk,
        "metric": "error_rate",
        "model": "qwen/qwen3-32b",
        "value": 12.5,
        "threshold": 5.0,
        "window": {"start": "2026-03-10T11:45:00+00:00", "end": "2026-03-10T12:00:00+00:00", "minutes": 15},
        "triggered_at": "2026-03-10T12:00:00+00:00",
        "message": alert.message,
        "link": "https://observatory.test/alerts/",
    }
    assert alert.notifications["webhook"] == {
        "status": "sent",
        "url": webhook_receiver.url,
        "http_status": 200,
        "attempts": 1,
        "at": alert.notifications["webhook"]["at"],
    }


def test_webhook_falls_back_to_alert_webhook_url(webhook_receiver, settings):
    settings.ALERT_WEBHOOK_URL = webhook_receiver.url
    alert = delivered(notice(error_rate_rule(notify_email=False)))
    assert webhook_receiver.requests[0].json()["status"] == "firing"
    assert alert.notifications["webhook"]["status"] == "sent"


def test_failing_webhook_is_recorded_and_the_email_still_goes(smtp_server, webhook_receiver):
    webhook_receiver.status = 500
    alert = delivered(notice(error_rate_rule(webhook_url=webhook_receiver.url)))
    assert len(webhook_receiver.requests) == 2  # ALERT_WEBHOOK_TRIES in the fixture: bounded retries
    assert alert.notifications["webhook"]["status"] == "error"
    assert alert.notifications["webhook"]["error"].startswith("HTTP 500")
    assert alert.notifications["webhook"]["attempts"] == 2
    assert alert.notifications["email"]["status"] == "sent"
    assert len(smtp_server.messages) == 1


def test_hanging_webhook_times_out_and_the_email_still_goes(smtp_server, webhook_receiver, settings):
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = 0.2
    webhook_receiver.hang = True
    alert = delivered(notice(error_rate_rule(webhook_url=webhook_receiver.url)))
    assert alert.notifications["webhook"]["status"] == "error"
    assert alert.notifications["webhook"]["error"] == "timed out after 0.2s"
    assert len(webhook_receiver.requests) == 2
    assert alert.notifications["email"]["status"] == "sent"
    assert len(smtp_server.messages) == 1


def test_unreachable_webhook_is_recorded(smtp_server, webhook_receiver):
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    alert = delivered(notice(error_rate_rule(webhook_url=url)))
    assert alert.notifications["webhook"]["status"] == "error"
    assert "ConnectError" in alert.notifications["webhook"]["error"]
    assert alert.notifications["email"]["status"] == "sent"


def test_unreachable_smtp_server_is_recorded_and_the_webhook_still_goes(settings, webhook_receiver):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 2
    alert = delivered(notice(error_rate_rule(webhook_url=webhook_receiver.url)))
    assert alert.notifications["email"]["status"] == "error"
    assert "ConnectionRefusedError" in alert.notifications["email"]["error"]
    assert alert.notifications["webhook"]["status"] == "sent"
    assert len(webhook_receiver.requests) == 1


@pytest.mark.parametrize(("status", "requests"), [(404, 1), (400, 1), (429, 3), (503, 3)])
def test_post_json_retries_only_what_a_retry_can_fix(webhook_receiver, status, requests):
    webhook_receiver.status = status
    with pytest.raises(notifiers.DeliveryError) as raised:
        notifiers.post_json(webhook_receiver.url, {"text": "hi"}, tries=3, retry_delay=0)
    assert len(webhook_receiver.requests) == requests
    assert raised.value.attempts == requests


def test_post_json_refuses_other_schemes():
    with pytest.raises(notifiers.DeliveryError, match="Not an http"):
        notifiers.post_json("file:///etc/passwd", {}, tries=1)


def test_a_notice_is_delivered_once_even_if_delivered_twice(smtp_server, webhook_receiver):
    alert = notice(error_rate_rule(webhook_url=webhook_receiver.url))
    assert alerts.deliver(alert, NOW) is True
    stale_copy = AlertLog.objects.get(pk=alert.pk)
    stale_copy.delivery_claimed_at = None  # as another run that read the row before the claim
    assert alerts.deliver(stale_copy, NOW) is False
    assert len(smtp_server.messages) == 1
    assert len(webhook_receiver.requests) == 1


def test_deliver_pending_sends_unclaimed_notices_of_the_given_rules_only(smtp_server):
    first, second = error_rate_rule(), error_rate_rule(name="other")
    notice(first)
    notice(second)
    sent = alerts.deliver_pending([first], NOW)
    assert [alert.alert_rule_id for alert in sent] == [first.pk]
    assert len(smtp_server.messages) == 1
    assert alerts.deliver_pending([first], NOW) == []
    assert AlertLog.objects.undelivered().get().alert_rule == second


# Test notifications: the same notifiers, a notice that says it is a test, nothing written.


def test_test_notification_reaches_smtp_and_webhook_and_says_it_is_a_test(smtp_server, webhook_receiver):
    rule = error_rate_rule(webhook_url=webhook_receiver.url)
    before = AlertRule.objects.values().get(pk=rule.pk)

    result = alerts.send_test_notification(rule, NOW)

    assert (result.all_sent, result.summary) == (True, "email sent, webhook sent")
    message = smtp_server.messages[0]
    assert message["Subject"].startswith("[TEST] Error rate above 5%: Test notification")
    assert "nothing is firing" in message.get_content()
    payload = webhook_receiver.requests[0].json()
    assert (payload["status"], payload["test"], payload["alert_id"]) == ("test", True, None)
    assert payload["text"].startswith("[TEST] Error rate above 5%")
    # Nothing stored: no triggered alert, and the rule's state and cooldown are as they were.
    assert AlertLog.objects.count() == 0
    assert AlertRule.objects.values().get(pk=rule.pk) == before


def test_test_notification_reports_a_failing_channel_and_still_sends_the_other(smtp_server, webhook_receiver):
    webhook_receiver.status = 500
    result = alerts.send_test_notification(error_rate_rule(webhook_url=webhook_receiver.url), NOW)
    assert result.all_sent is False
    assert result.notifications["email"]["status"] == "sent"
    assert result.notifications["webhook"]["status"] == "error"
    assert result.notifications["webhook"]["error"].startswith("HTTP 500")
    assert len(webhook_receiver.requests) == 2  # bounded by ALERT_WEBHOOK_TRIES, even on request


def test_test_notification_for_a_rule_without_channel_is_refused(smtp_server, settings):
    settings.ALERT_EMAIL_RECIPIENTS = []
    with pytest.raises(alerts.NoChannel, match="add e-mail recipients or a webhook"):
        alerts.send_test_notification(error_rate_rule(email_recipients=""), NOW)
    assert smtp_server.messages == []


# Links in notices: SITE_URL when set, else where the dashboard is served from.


@pytest.mark.parametrize(
    ("site_url", "served", "request_origin", "expected"),
    [
        (
            "https://observatory.example/",
            "http://10.0.0.5:9000",
            "http://localhost:8001",
            "https://observatory.example",
        ),
        ("", "", "", "http://127.0.0.1:8000"),
        ("", "http://10.0.0.5:9000", "", "http://10.0.0.5:9000"),
        ("", "http://10.0.0.5:9000", "http://localhost:8001", "http://localhost:8001"),
    ],
)
def test_base_url_prefers_site_url_then_the_request_then_the_last_served_origin(
    settings, site_url, served, request_origin, expected
):
    settings.SITE_URL = site_url
    if served:
        DashboardSettings.remember_origin(served)
    assert notifiers.base_url(request_origin) == expected


def test_notice_links_follow_the_served_origin_when_site_url_is_empty(smtp_server, webhook_receiver, settings):
    settings.SITE_URL = ""
    DashboardSettings.remember_origin("http://192.168.1.20:9000")
    delivered(notice(error_rate_rule(webhook_url=webhook_receiver.url)))
    assert "Alerts: http://192.168.1.20:9000/alerts/" in smtp_server.messages[0].get_content()
    assert webhook_receiver.requests[0].json()["link"] == "http://192.168.1.20:9000/alerts/"


def test_remember_origin_writes_only_when_the_origin_changes(django_assert_num_queries):
    DashboardSettings.remember_origin("http://127.0.0.1:9000")
    with django_assert_num_queries(1):  # one read, no write
        DashboardSettings.remember_origin("http://127.0.0.1:9000")
    with django_assert_num_queries(2):  # the read, then the write
        DashboardSettings.remember_origin("http://127.0.0.1:9001")
    assert DashboardSettings.last_served_origin() == "http://127.0.0.1:9001"
