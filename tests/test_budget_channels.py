"""Budget warnings through named channels (as alert rules: Slack, signed webhook, PagerDuty, e-mail)
against real receivers on 127.0.0.1, failing-channel counting, and the budget API's `channels` and
outbound-URL check."""

from __future__ import annotations

import hashlib
import hmac
from decimal import Decimal

import pytest
from django.core.management import call_command

from llm.models import BudgetWarning, NotificationChannel
from tests.alert_receivers import verify_signature
from tests.test_budgets import DAY_START, at_now, make_budget, spend  # noqa: F401 - at_now is a fixture
from tests.test_channels import ROUTING_KEY, SECRET, make_channel, pagerduty, pagerduty_session  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def channels(webhook_receiver, settings):
    settings.ALERT_WEBHOOK_URL = ""
    settings.ALERT_EMAIL_RECIPIENTS = []
    return [
        make_channel(NotificationChannel.Kind.WEBHOOK, "signed", target=webhook_receiver.url, secret=SECRET),
        make_channel(NotificationChannel.Kind.SLACK, "team-chat", target=webhook_receiver.url + "slack"),
        make_channel(NotificationChannel.Kind.PAGERDUTY, "oncall", routing_key=ROUTING_KEY),
    ]


def test_warnings_reach_every_named_channel_and_pagerduty_keeps_one_incident_per_period(
    at_now,  # noqa: F811
    channels,
    webhook_receiver,
    pagerduty,  # noqa: F811
):
    budget = make_budget(name="Team", amount_usd=Decimal("1.00"), warn_at_percent=[80, 100])
    budget.channels.set(channels)
    spend(["0.85"])
    call_command("check_alerts")
    spend(["0.20"])
    call_command("check_alerts")

    signed = [request for request in webhook_receiver.requests if request.path == "/hook"]
    slack = [request for request in webhook_receiver.requests if request.path == "/hookslack"]
    assert [request.json()["percent"] for request in signed] == [80, 100]
    assert [request.json()["percent"] for request in slack] == [80, 100]
    for request in signed:
        assert verify_signature(SECRET, request.headers, request.body)
        assert not verify_signature(SECRET + "x", request.headers, request.body)
        timestamp = request.headers["X-Observatory-Timestamp"]
        digest = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
        assert request.headers["X-Observatory-Signature"] == f"v1={digest}"
    assert all("X-Observatory-Signature" not in request.headers for request in slack)
    assert all(request.json()["text"].startswith("[BUDGET] Budget “Team” reached") for request in slack)

    events = [request.json() for request in pagerduty.requests]
    assert [event["event_action"] for event in events] == ["trigger", "trigger"]
    assert {event["routing_key"] for event in events} == {ROUTING_KEY}
    # The 80 % and the 100 % warning of one period update one incident.
    assert {event["dedup_key"] for event in events} == {f"llm-observatory/budget-{budget.pk}/{DAY_START:%Y-%m-%d}"}
    assert [event["payload"]["severity"] for event in events] == ["warning", "critical"]
    assert events[1]["payload"]["custom_details"]["spent_usd"] == pytest.approx(1.05)

    warning = BudgetWarning.objects.get(percent=100)
    assert set(warning.notifications) == {"webhook:signed", "slack:team-chat", "pagerduty:oncall"}
    assert {result["status"] for result in warning.notifications.values()} == {"sent"}


def test_a_failing_channel_is_counted_and_the_others_still_receive(at_now, channels, webhook_receiver, pagerduty):  # noqa: F811
    pagerduty.status = 500
    inactive = make_channel(NotificationChannel.Kind.SLACK, "off", target=webhook_receiver.url + "off", is_active=False)
    budget = make_budget(warn_at_percent=[10])
    budget.channels.set([*channels, inactive])
    spend(["0.20"])
    call_command("check_alerts")

    warning = BudgetWarning.objects.get()
    assert warning.notifications["pagerduty:oncall"]["status"] == "error"
    assert warning.notifications["webhook:signed"]["status"] == "sent"
    assert "slack:off" not in warning.notifications
    assert not any(request.path == "/hookoff" for request in webhook_receiver.requests)
    oncall = NotificationChannel.objects.get(name="oncall")
    assert oncall.consecutive_failures == 1 and "500" in oncall.last_error
    assert NotificationChannel.objects.get(name="signed").consecutive_failures == 0


def test_budget_api_sets_and_shows_channels(api_client, channels, at_now):  # noqa: F811
    ids = [channel.pk for channel in channels[:2]]
    body = {"name": "Chat", "period": "day", "amount_usd": 2, "channels": ids}
    created = api_client.post("/api/budgets/", body, format="json")
    assert created.status_code == 201, created.content
    assert sorted(created.json()["channels"]) == sorted(ids)
    listed = api_client.get("/api/budgets/").json()
    assert sorted(listed[0]["channels"]) == sorted(ids)
    missing = api_client.patch(f"/api/budgets/{created.json()['id']}/", {"channels": [999999]}, format="json")
    assert missing.status_code == 400
    assert "channels" in missing.json()["fields"]


def test_budget_webhook_url_is_checked_like_a_rules(api_client, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    body = {"name": "Hooked", "period": "day", "amount_usd": 1, "webhook_url": "http://127.0.0.1:9/hook"}
    answer = api_client.post("/api/budgets/", body, format="json")
    assert answer.status_code == 400, answer.content
    message = " ".join(answer.json()["fields"]["webhook_url"])
    assert "a loopback address" in message and "OUTBOUND_ALLOWED_NETWORKS" in message
