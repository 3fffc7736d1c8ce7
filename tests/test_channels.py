"""Named notification channels (llm/notifiers.py, NotificationChannel): a signed webhook and
PagerDuty's Events API v2 against real receivers on 127.0.0.1, failing-channel marking on the
alerts page and in /metrics, and the rule API's `channels`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError

from llm import alerts, notifiers
from llm.models import AlertLog, AlertRule, LLMRequestLog, NotificationChannel
from tests.alert_receivers import RECEIVER_BODY, WebhookReceiver, free_port, verify_signature
from tests.factories import make_alert, make_log, make_rule
from tests.test_prometheus import parse, value

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
SECRET = "s3cret-for-the-signed-webhook"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefabcdef"


@pytest.fixture(scope="module")
def pagerduty_session():
    receiver = WebhookReceiver(status=202).start()
    yield receiver
    receiver.stop()


@pytest.fixture
def pagerduty(pagerduty_session, webhook_receiver, settings):
    """PagerDuty's Events API on 127.0.0.1: it answers 202, as the real one does."""
    pagerduty_session.reset()
    pagerduty_session.status = 202
    port = pagerduty_session.server.server_port
    settings.PAGERDUTY_EVENTS_URL = f"http://127.0.0.1:{port}/v2/enqueue"
    yield pagerduty_session
    pagerduty_session.reset()


def make_channel(kind: str, name: str | None = None, **fields) -> NotificationChannel:
    channel = NotificationChannel(kind=kind, name=name or f"{kind} channel", **fields)
    channel.full_clean()
    channel.save()
    return channel


def quiet_rule(*channels: NotificationChannel, **fields) -> AlertRule:
    """A rule whose only channels are the named ones (no e-mail, no default webhook)."""
    rule = make_rule(notify_email=False, email_recipients="", **fields)
    rule.channels.set(channels)
    return rule


def delivered(alert: AlertLog) -> AlertLog:
    assert alerts.deliver(alert, NOW)
    alert.refresh_from_db()
    return alert


def test_signed_webhook_carries_a_signature_the_receiver_can_verify(webhook_receiver, settings):
    settings.ALERT_WEBHOOK_URL = ""
    channel = make_channel(NotificationChannel.Kind.WEBHOOK, target=webhook_receiver.url, secret=SECRET)
    rule = quiet_rule(channel, name="Errors")
    alert = delivered(make_alert(rule, triggered_at=NOW))

    (request,) = webhook_receiver.requests
    assert verify_signature(SECRET, request.headers, request.body)
    # A receiver holding another secret, or a body changed on the way, fails verification.
    assert not verify_signature(SECRET + "x", request.headers, request.body)
    assert not verify_signature(SECRET, request.headers, request.body.replace(b"Errors", b"Errorz"))
    # The signature is HMAC-SHA256 over "<timestamp>.<body>", recomputed here independently.
    import hashlib
    import hmac

    timestamp = request.headers["X-Observatory-Timestamp"]
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Observatory-Signature"] == f"v1={expected}"
    payload = request.json()
    assert payload["rule"] == "Errors" and payload["alert_id"] == alert.pk and payload["status"] == "firing"
    assert alert.notifications["webhook:webhook channel"]["status"] == "sent"
    assert alert.notifications["webhook:webhook channel"]["signed"] is True
    channel.refresh_from_db()
    assert channel.consecutive_failures == 0 and channel.last_success_at is not None


def test_slack_channel_posts_the_same_text_unsigned(webhook_receiver):
    channel = make_channel(NotificationChannel.Kind.SLACK, target=webhook_receiver.url)
    rule = quiet_rule(channel)
    delivered(make_alert(rule, triggered_at=NOW))
    (request,) = webhook_receiver.requests
    assert "X-Observatory-Signature" not in request.headers
    assert request.json()["text"].startswith(f"[FIRING] {rule.name}: ")


def test_pagerduty_trigger_then_resolve_share_one_dedup_key(pagerduty):
    channel = make_channel(NotificationChannel.Kind.PAGERDUTY, name="oncall", routing_key=ROUTING_KEY)
    rule = quiet_rule(channel, name="No traffic", metric_type=AlertRule.MetricType.NO_TRAFFIC, threshold=1)

    # Nothing logged: the dead man's switch fires; then one call: it resolves.
    fired = alerts.check_rules([rule], NOW)
    make_log(timestamp=NOW + timedelta(minutes=1) - timedelta(seconds=30))
    resolved = alerts.check_rules([rule], NOW + timedelta(minutes=1))
    assert [alert.kind for alert in fired.deliveries + resolved.deliveries] == ["fired", "resolved"]

    trigger, resolve = (request.json() for request in pagerduty.requests)
    assert [request.path for request in pagerduty.requests] == ["/v2/enqueue", "/v2/enqueue"]
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] == f"llm-observatory/rule-{rule.pk}"
    assert trigger["routing_key"] == resolve["routing_key"] == ROUTING_KEY
    # A resolve carries nothing else; a trigger says what fired, how badly, and where to look.
    assert set(resolve) == {"routing_key", "event_action", "dedup_key"}
    assert trigger["payload"]["severity"] == "critical"  # a one-level rule fires at its critical level
    assert trigger["payload"]["summary"].startswith("[FIRING] No traffic: ")
    assert trigger["payload"]["custom_details"]["rule_id"] == rule.pk
    assert trigger["payload"]["custom_details"]["threshold"] == 1.0
    assert trigger["payload"]["timestamp"] == NOW.isoformat()
    notice = AlertLog.objects.get(kind="fired")
    assert notice.notifications["pagerduty:oncall"] == {
        "status": "sent",
        "event_action": "trigger",
        "dedup_key": f"llm-observatory/rule-{rule.pk}",
        "http_status": 202,
        "attempts": 1,
        "at": notice.notifications["pagerduty:oncall"]["at"],
    }


def test_pagerduty_severity_follows_the_level_and_the_group_gets_its_own_incident(pagerduty):
    channel = make_channel(NotificationChannel.Kind.PAGERDUTY, routing_key=ROUTING_KEY)
    rule = quiet_rule(channel)
    alert = make_alert(rule, triggered_at=NOW)
    # Grouped rules and levels come with another change: the notifier reads them when present.
    alert.level, alert.group_key = "critical", "user=alice"
    event = notifiers.pagerduty_event(alert, ROUTING_KEY, "https://observatory.test")
    assert event["payload"]["severity"] == "critical"
    assert event["dedup_key"] == f"llm-observatory/rule-{rule.pk}/user=alice"
    alert.level = "warning"
    assert notifiers.pagerduty_event(alert, ROUTING_KEY, "https://observatory.test")["payload"]["severity"] == "warning"
    test_notice = alerts.build_test_notice(rule, NOW)
    test_event = notifiers.pagerduty_event(test_notice, ROUTING_KEY, "https://observatory.test")
    assert test_event["payload"]["severity"] == "info"
    assert test_event["dedup_key"].endswith("/test")  # a test never touches the real incident


def test_a_failing_channel_is_marked_after_n_failures_and_the_others_are_still_tried(
    webhook_receiver, client, logged_in_client, settings
):
    settings.ALERT_CHANNEL_FAILING_AFTER = 2
    dead = make_channel(NotificationChannel.Kind.SLACK, name="dead", target=f"http://127.0.0.1:{free_port()}/hook")
    alive = make_channel(NotificationChannel.Kind.WEBHOOK, name="alive", target=webhook_receiver.url, secret=SECRET)
    rule = quiet_rule(dead, alive)

    first = delivered(make_alert(rule, triggered_at=NOW))
    dead.refresh_from_db()
    assert dead.consecutive_failures == 1 and not dead.is_failing
    second = delivered(make_alert(rule, triggered_at=NOW + timedelta(minutes=1)))
    dead.refresh_from_db()
    alive.refresh_from_db()
    assert dead.consecutive_failures == 2 and dead.is_failing
    assert "ConnectError" in dead.last_error
    assert alive.consecutive_failures == 0 and not alive.is_failing
    for alert in (first, second):
        assert alert.notifications["slack:dead"]["status"] == "error"
        assert alert.notifications["webhook:alive"]["status"] == "sent"
    assert len(webhook_receiver.requests) == 2  # the live channel got every notice

    page = logged_in_client.get("/alerts/").content.decode()
    assert 'class="card failing-channels"' in page and "<strong>dead</strong>" in page
    assert "2 failures in a row" in page
    samples = parse(client.get("/metrics").content.decode())
    assert value(samples, "llm_alert_channel_failing", channel="dead", kind="slack") == 1
    assert value(samples, "llm_alert_channel_failing", channel="alive", kind="webhook") == 0

    # One success ends the run of failures.
    dead.target = webhook_receiver.url
    dead.save()
    delivered(make_alert(rule, triggered_at=NOW + timedelta(minutes=2)))
    dead.refresh_from_db()
    assert dead.consecutive_failures == 0 and not dead.is_failing
    samples = parse(client.get("/metrics").content.decode())
    assert value(samples, "llm_alert_channel_failing", channel="dead", kind="slack") == 0
    assert "failing-channels" not in logged_in_client.get("/alerts/").content.decode()


def test_an_inactive_channel_is_not_tried(webhook_receiver):
    channel = make_channel(NotificationChannel.Kind.SLACK, target=webhook_receiver.url, is_active=False)
    rule = quiet_rule(channel)
    assert notifiers.channel_names(rule) == []
    alert = delivered(make_alert(rule, triggered_at=NOW))
    assert webhook_receiver.requests == [] and alert.delivery_note == "not sent: no channel"


def test_email_channel_sends_to_its_own_list(smtp_server):
    channel = make_channel(NotificationChannel.Kind.EMAIL, target="a@example.com; b@example.com")
    alert = delivered(make_alert(quiet_rule(channel), triggered_at=NOW))
    assert smtp_server.envelopes[0][1] == ["a@example.com", "b@example.com"]
    assert alert.notifications["email:email channel"]["recipients"] == ["a@example.com", "b@example.com"]


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"kind": "webhook", "target": "https://hooks.example.com/x", "secret": ""}, "secret", "at least 16"),
        ({"kind": "webhook", "target": "https://hooks.example.com/x", "secret": "short"}, "secret", "at least 16"),
        ({"kind": "pagerduty"}, "routing_key", "routing key"),
        ({"kind": "email", "target": ""}, "target", "at least one"),
        ({"kind": "email", "target": "oncall@example.com, not-an-address"}, "target", "not-an-address"),
        ({"kind": "slack", "target": "ftp://hooks.example.com/x"}, "target", "http"),
        ({"kind": "slack", "target": "http://10.0.0.8/hook"}, "target", "private address"),
        ({"kind": "slack", "target": "http://localhost/hook"}, "target", "localhost resolves to 127.0.0.1"),
        ({"kind": "slack", "target": "https://hooks.example.com/x\nHost: evil"}, "target", "one line"),
    ],
)
def test_channel_validation_names_the_field(fields, field, message, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    channel = NotificationChannel(name="c", **fields)
    with pytest.raises(ValidationError) as error:
        channel.full_clean()
    assert field in error.value.message_dict
    assert message in " ".join(error.value.message_dict[field])


def test_rule_api_sets_and_shows_channels(api_client, webhook_receiver):
    slack = make_channel(NotificationChannel.Kind.SLACK, target=webhook_receiver.url)
    pager = make_channel(NotificationChannel.Kind.PAGERDUTY, routing_key=ROUTING_KEY)
    body = {"name": "API rule", "metric_type": "cost", "threshold": 3, "channels": [slack.pk, pager.pk]}
    created = api_client.post("/api/alerts/rules/", body, format="json")
    assert created.status_code == 201, created.content
    assert sorted(created.json()["channels"]) == sorted([slack.pk, pager.pk])
    rule = AlertRule.objects.get(name="API rule")
    assert set(rule.channels.values_list("pk", flat=True)) == {slack.pk, pager.pk}
    listed = {item["name"]: item for item in api_client.get("/api/alerts/rules/").json()}
    assert sorted(listed["API rule"]["channels"]) == sorted([slack.pk, pager.pk])
    assert listed["API rule"]["silence"] is None

    unknown = api_client.patch(f"/api/alerts/rules/{rule.pk}/", {"channels": [999_999]}, format="json")
    assert unknown.status_code == 400 and "channels" in unknown.json()["fields"]
    for bad in [[2**63], ["x"], [True], "1", [1.5], [None]]:
        refused = api_client.patch(f"/api/alerts/rules/{rule.pk}/", {"channels": bad}, format="json")
        assert refused.status_code == 400 and "channels" in refused.json()["fields"], bad
    cleared = api_client.patch(f"/api/alerts/rules/{rule.pk}/", {"channels": []}, format="json")
    assert cleared.status_code == 200 and cleared.json()["channels"] == []


def test_rule_list_does_not_query_per_rule(api_client, webhook_receiver):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    channel = make_channel(NotificationChannel.Kind.SLACK, target=webhook_receiver.url)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert api_client.get("/api/alerts/rules/").status_code == 200
        return len(captured)

    for _ in range(2):
        quiet_rule(channel)
    queries()  # the first request also stamps the API key's last use
    at_two = queries()
    for _ in range(6):
        quiet_rule(channel)
    assert queries() == at_two


def test_model_info_names_each_model_with_its_provider_and_survives_a_purge(client):
    calls = [
        ("llama-3.1-8b-instant", "groq", NOW - timedelta(hours=3)),
        ("llama-3.1-8b-instant", "groq", NOW - timedelta(hours=2)),
        ("qwen-3-235b", "cerebras", NOW - timedelta(hours=2)),
        ("gpt-4o-mini", "openai", NOW - timedelta(hours=1)),
    ]
    for model, provider, timestamp in calls:
        LLMRequestLog.objects.record(model_name=model, provider=provider, timestamp=timestamp)
    expected = sorted({(model, provider) for model, provider, _ in calls})
    samples = parse(client.get("/metrics").content.decode())
    assert sorted((labels["model"], labels["provider"]) for labels, _ in samples["llm_model_info"]) == expected
    assert all(sample_value == 1 for _, sample_value in samples["llm_model_info"])
    # The totals keep the provider: deleting every log (purge_logs) changes nothing.
    LLMRequestLog.objects.all().delete()
    after = parse(client.get("/metrics").content.decode())
    assert after["llm_model_info"] == samples["llm_model_info"]


def test_the_migration_fills_the_provider_of_totals_kept_before(client):
    from importlib import import_module

    from django.apps import apps

    from llm.models import RequestTotal

    migration = import_module("llm.migrations.0016_request_total_provider")
    LLMRequestLog.objects.record(model_name="gpt-4o-mini", provider="cerebras", timestamp=NOW - timedelta(hours=2))
    LLMRequestLog.objects.record(model_name="gpt-4o-mini", provider="openai", timestamp=NOW - timedelta(hours=1))
    client.get("/metrics")  # rolls the calls into the totals
    RequestTotal.objects.update(provider="")  # as before the migration
    migration.fill_providers(apps, None)
    assert list(RequestTotal.objects.values_list("model_name", "provider")) == [("gpt-4o-mini", "openai")]


def test_receiver_answer_body_is_never_stored(webhook_receiver):
    webhook_receiver.status = 500
    channel = make_channel(NotificationChannel.Kind.SLACK, target=webhook_receiver.url)
    alert = delivered(make_alert(quiet_rule(channel), triggered_at=NOW))
    result = alert.notifications["slack:slack channel"]
    assert result["error"] == "HTTP 500 Internal Server Error"
    assert RECEIVER_BODY.decode() not in json.dumps(alert.notifications)
    channel.refresh_from_db()
    assert RECEIVER_BODY.decode() not in channel.last_error


def test_a_test_notice_to_pagerduty_opens_and_closes_its_own_incident(pagerduty, api_client):
    channel = make_channel(NotificationChannel.Kind.PAGERDUTY, name="oncall", routing_key=ROUTING_KEY)
    rule = quiet_rule(channel)
    answer = api_client.post(f"/api/alerts/rules/{rule.pk}/test/")
    assert answer.status_code == 200 and answer.json()["sent"] is True
    trigger, resolve = (request.json() for request in pagerduty.requests)
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"] == f"llm-observatory/rule-{rule.pk}/test"
    assert trigger["payload"]["summary"].startswith(f"[TEST] {rule.name}")
    assert AlertLog.objects.count() == 0
