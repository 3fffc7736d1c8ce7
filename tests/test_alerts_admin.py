"""The AlertRule admin: its compact list and the "Send a test notification" action."""

from __future__ import annotations

import pytest

from llm.models import AlertLog, AlertRule
from tests.factories import make_rule

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/llm/alertrule/"


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_send_test_notification_action_reaches_each_rules_channels(
    admin_client, smtp_server, webhook_receiver, settings
):
    settings.ALERT_EMAIL_RECIPIENTS, settings.ALERT_WEBHOOK_URL = [], ""
    by_email = make_rule(name="By e-mail", email_recipients="oncall@example.com")
    by_webhook = make_rule(name="By webhook", notify_email=False, webhook_url=webhook_receiver.url)
    nowhere = make_rule(name="Nowhere", email_recipients="")
    state_before = list(AlertRule.objects.order_by("pk").values())

    response = admin_client.post(
        CHANGELIST,
        {"action": "send_test_notification", "_selected_action": [by_email.pk, by_webhook.pk, nowhere.pk]},
        follow=True,
    )

    assert messages_of(response) == [
        "Test notification for By e-mail: email sent.",
        "Test notification for By webhook: webhook sent.",
        "Nowhere: No channel: add e-mail recipients or a webhook in admin "
        "(or set ALERT_EMAIL_RECIPIENTS / ALERT_WEBHOOK_URL).",
    ]
    assert [envelope[1] for envelope in smtp_server.envelopes] == [["oncall@example.com"]]
    assert smtp_server.messages[0]["Subject"].startswith("[TEST] By e-mail")
    assert [request.json()["rule"] for request in webhook_receiver.requests] == ["By webhook"]
    assert AlertLog.objects.count() == 0
    assert list(AlertRule.objects.order_by("pk").values()) == state_before


def test_send_test_notification_action_reports_a_failing_channel(admin_client, webhook_receiver):
    webhook_receiver.status = 404
    rule = make_rule(name="Broken hook", notify_email=False, webhook_url=webhook_receiver.url)
    response = admin_client.post(
        CHANGELIST, {"action": "send_test_notification", "_selected_action": [rule.pk]}, follow=True
    )
    [message] = messages_of(response)
    assert message.startswith("Test notification for Broken hook: webhook error (HTTP 404")
    assert len(webhook_receiver.requests) == 1  # a 404 is not retried


def test_changelist_shows_condition_channels_and_state(admin_client, settings):
    settings.ALERT_EMAIL_RECIPIENTS, settings.ALERT_WEBHOOK_URL = [], ""
    make_rule(
        name="Errors",
        threshold=5,
        time_window_minutes=15,
        model_name="qwen/qwen3-32b",
        email_recipients="oncall@example.com",
    )
    make_rule(
        name="Silence",
        metric_type=AlertRule.MetricType.NO_TRAFFIC,
        threshold=1,
        time_window_minutes=15,
        email_recipients="",
    )
    page = admin_client.get(CHANGELIST).content.decode()
    assert "error_rate &gt; 5.00% / 15 min, qwen/qwen3-32b" in page
    assert "no_traffic &lt; 1 / 15 min" in page
    assert '<td class="field-notify_to">email</td>' in page
    assert '<td class="field-notify_to">none</td>' in page
    assert '<td class="field-state">not checked</td>' in page
