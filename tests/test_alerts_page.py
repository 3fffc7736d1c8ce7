"""The alerts page's rule actions: channels shown, "Send test", "Check now", and notice links."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from llm.models import AlertLog, AlertRule, DashboardSettings
from tests.factories import make_rule

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
NO_CHANNEL = (
    "No channel: add e-mail recipients or a webhook in admin (or set ALERT_EMAIL_RECIPIENTS / ALERT_WEBHOOK_URL)"
)


@pytest.fixture
def browser(client, staff_user):
    client.force_login(staff_user)
    return client


@pytest.fixture
def no_default_channels(settings):
    settings.ALERT_EMAIL_RECIPIENTS = []
    settings.ALERT_WEBHOOK_URL = ""


# With no traffic in the test database, this rule fires.
DEAD_MANS_SWITCH = {
    "name": "No traffic",
    "metric_type": AlertRule.MetricType.NO_TRAFFIC,
    "threshold": 1,
    "time_window_minutes": 10,
    "cooldown_minutes": 30,
    "email_recipients": "oncall@example.com",
}


def dead_mans_switch(**fields) -> AlertRule:
    return make_rule(**DEAD_MANS_SWITCH | fields)


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_rule_without_channel_says_so_and_links_to_the_rule_in_admin(browser, no_default_channels):
    quiet = dead_mans_switch(name="Quiet", email_recipients="")
    page = browser.get("/alerts/").content.decode()
    row = re.search(rf'<tr class="rule" data-rule="{quiet.pk}">.*?</tr>', page, re.S).group(0)
    assert NO_CHANNEL in text_of(row)
    assert f'href="/admin/llm/alertrule/{quiet.pk}/change/"' in row
    assert "Send test" not in row  # nothing to test
    assert "Check now" in row  # but it is still evaluated


def test_rule_with_channels_lists_them_and_offers_a_test(browser, no_default_channels):
    rule = dead_mans_switch(webhook_url="https://hooks.example/alerts")
    page = browser.get("/alerts/").content.decode()
    row = re.search(rf'<tr class="rule" data-rule="{rule.pk}">.*?</tr>', page, re.S).group(0)
    assert '<td class="channels">email, webhook</td>' in row
    assert f'action="/alerts/rules/{rule.pk}/test/"' in row
    assert "No channel" not in row


def test_send_test_button_posts_with_csrf_and_reaches_smtp_and_webhook(staff_user, smtp_server, webhook_receiver):
    rule = dead_mans_switch(webhook_url=webhook_receiver.url)
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    client.get("/alerts/")
    url = f"/alerts/rules/{rule.pk}/test/"
    assert client.post(url).status_code == 403  # no CSRF token: refused, nothing sent
    assert smtp_server.messages == []

    response = client.post(url, {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}, follow=True)

    assert response.redirect_chain == [("/alerts/", 302)]
    assert messages_of(response) == ["Test notification for No traffic: email sent, webhook sent."]
    assert smtp_server.messages[0]["Subject"].startswith("[TEST] No traffic")
    assert webhook_receiver.requests[0].json()["test"] is True
    assert AlertLog.objects.count() == 0


def test_send_test_shows_a_failing_channel(browser, smtp_server, webhook_receiver):
    webhook_receiver.status = 500
    rule = dead_mans_switch(webhook_url=webhook_receiver.url)
    response = browser.post(f"/alerts/rules/{rule.pk}/test/", follow=True)
    [message] = messages_of(response)
    assert message.startswith("Test notification for No traffic: email sent, webhook error (HTTP 500")


def test_send_test_for_a_rule_without_channel_says_what_to_do(browser, smtp_server, no_default_channels):
    rule = dead_mans_switch(email_recipients="")
    response = browser.post(f"/alerts/rules/{rule.pk}/test/", follow=True)
    assert messages_of(response) == [f"No traffic: {NO_CHANNEL}."]
    assert smtp_server.messages == []


def test_check_now_fires_notifies_once_and_shows_the_verdict(browser, smtp_server, time_machine):
    time_machine.move_to(NOW, tick=False)
    rule = dead_mans_switch()
    url = f"/alerts/rules/{rule.pk}/check/"

    first = messages_of(browser.post(url, follow=True))
    alert = AlertLog.objects.get()
    assert first == [
        f"Checked now: #{rule.pk} No traffic [no_traffic]: value 0, threshold 1, 0 requests in 10 min: "
        "FIRING; notice: fired",
        f"Sent alert #{alert.pk} (fired, No traffic): email sent",
    ]
    time_machine.move_to(NOW + timedelta(minutes=5), tick=False)
    second = messages_of(browser.post(url, follow=True))
    assert second == [
        f"Checked now: #{rule.pk} No traffic [no_traffic]: value 0, threshold 1, 0 requests in 10 min: FIRING"
    ]
    assert AlertLog.objects.count() == 1
    assert len(smtp_server.messages) == 1  # the cooldown holds, as it does for cron


def test_check_now_of_a_rule_without_channel_records_not_sent(browser, no_default_channels, caplog):
    rule = dead_mans_switch(email_recipients="")
    with caplog.at_level("WARNING"):
        response = browser.post(f"/alerts/rules/{rule.pk}/check/", follow=True)
    alert = AlertLog.objects.get()
    assert f"Sent alert #{alert.pk} (fired, No traffic): not sent: no channel" in messages_of(response)
    assert alert.delivery_note == "not sent: no channel"
    assert [record for record in caplog.records if record.levelname in ("WARNING", "ERROR")] == []
    page = browser.get("/alerts/").content.decode()
    row = re.search(rf'<tr class="alert-log" data-alert="{alert.pk}">.*?</tr>', page, re.S).group(0)
    assert '<td class="delivery">not sent: no channel</td>' in row


def test_check_now_of_an_inactive_rule_changes_nothing(browser):
    rule = dead_mans_switch(is_active=False)
    response = browser.post(f"/alerts/rules/{rule.pk}/check/", follow=True)
    assert messages_of(response) == ["No traffic is inactive: activate it to check it."]
    rule.refresh_from_db()
    assert rule.last_checked_at is None
    assert "Check now" not in browser.get("/alerts/").content.decode()


def test_check_now_of_a_rule_that_cannot_be_evaluated_says_why(browser):
    rule = dead_mans_switch(metric_type="retired_metric")  # e.g. left behind by a downgrade
    response = browser.post(f"/alerts/rules/{rule.pk}/check/", follow=True)
    assert response.status_code == 200
    [message] = messages_of(response)
    assert message.startswith("No traffic: could not evaluate: ValueError: Unknown metric type 'retired_metric'")


@pytest.mark.parametrize("action", ["test", "check"])
def test_rule_buttons_need_post_login_and_a_known_rule(browser, client, action):
    rule = dead_mans_switch()
    assert browser.get(f"/alerts/rules/{rule.pk}/{action}/").status_code == 405
    assert browser.post(f"/alerts/rules/999999/{action}/").status_code == 404
    client.logout()
    response = client.post(f"/alerts/rules/{rule.pk}/{action}/")
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")
    assert AlertLog.objects.count() == 0


# Links in notices


def run_check_alerts() -> str:
    out = io.StringIO()
    call_command("check_alerts", stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_cron_notice_links_to_where_the_dashboard_was_last_served(browser, webhook_receiver, settings):
    settings.SITE_URL = ""
    dead_mans_switch(notify_email=False, webhook_url=webhook_receiver.url)
    browser.get("/alerts/", HTTP_HOST="localhost:9000")
    assert DashboardSettings.last_served_origin() == "http://localhost:9000"

    run_check_alerts()

    assert webhook_receiver.requests[0].json()["link"] == "http://localhost:9000/alerts/"


def test_cron_notice_links_to_site_url_when_set(browser, webhook_receiver, settings):
    settings.SITE_URL = "https://observatory.example/"
    dead_mans_switch(notify_email=False, webhook_url=webhook_receiver.url)
    browser.get("/alerts/", HTTP_HOST="localhost:9000")
    run_check_alerts()
    assert webhook_receiver.requests[0].json()["link"] == "https://observatory.example/alerts/"


def test_cron_notice_links_to_the_default_address_when_never_served(webhook_receiver, settings):
    settings.SITE_URL = ""
    dead_mans_switch(notify_email=False, webhook_url=webhook_receiver.url)
    run_check_alerts()
    assert webhook_receiver.requests[0].json()["link"] == "http://127.0.0.1:8000/alerts/"


def test_check_now_links_to_the_requests_own_origin(browser, webhook_receiver, settings):
    settings.SITE_URL = ""
    DashboardSettings.remember_origin("http://127.0.0.1:8000")
    rule = dead_mans_switch(notify_email=False, webhook_url=webhook_receiver.url)
    browser.post(f"/alerts/rules/{rule.pk}/check/", HTTP_HOST="localhost:8123")
    assert webhook_receiver.requests[0].json()["link"] == "http://localhost:8123/alerts/"


def test_each_rules_links_are_its_own(browser, no_default_channels):
    """The page writes each rule's links from one reverse() per link name (views.RuleLinks): every
    link names its own rule, as reverse() writes it, whatever digits the ids share."""
    rules = [make_rule(name=f"rule {index}", email_recipients=["ops@example.com"]) for index in range(12)]
    rules[0].silence(timezone.now() + timedelta(minutes=30), reason="deploy")
    html = browser.get("/alerts/").content.decode()
    for rule in rules:
        row = re.search(rf'<tr class="rule" data-rule="{rule.pk}">(.*?)</tr>', html, re.S).group(1)
        found = set(re.findall(r'(?:href|action)="([^"]+)"', row))
        silence = "alert-rule-unsilence" if rule is rules[0] else "alert-rule-silence"
        names = ["alert-history", "alert-rule-edit", "alert-rule-check", "alert-rule-test", silence]
        assert found == {reverse(name, args=[rule.pk]) for name in names}, rule.name
