"""`manage.py check_alerts` end to end: rules in the database, a real SMTP server and webhook receiver."""

from __future__ import annotations

import io
import logging
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from llm import alerts
from llm.models import AlertLog, AlertRule, LLMRequestLog

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock(time_machine):
    """The wall clock, frozen at NOW; `clock.move_to(...)` moves it."""
    time_machine.move_to(NOW, tick=False)
    return time_machine


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("check_alerts", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def make_rule(**fields) -> AlertRule:
    fields.setdefault("name", "Dead man's switch")
    fields.setdefault("metric_type", AlertRule.MetricType.NO_TRAFFIC)
    fields.setdefault("threshold", 1)
    fields.setdefault("time_window_minutes", 10)
    fields.setdefault("cooldown_minutes", 30)
    fields.setdefault("email_recipients", "oncall@example.com")
    return AlertRule.objects.create(**fields)


def add_traffic(count: int, at: datetime, **fields) -> None:
    LLMRequestLog.objects.bulk_create(
        LLMRequestLog(timestamp=at, model_name="llama-3.1-8b-instant", total_tokens=10, **fields) for _ in range(count)
    )


def test_firing_rule_is_printed_recorded_and_notified(clock, smtp_server, webhook_receiver):
    rule = make_rule(webhook_url=webhook_receiver.url)
    output = run()

    assert f"#{rule.pk} Dead man's switch [no_traffic]: value 0, threshold 1, 0 requests in 10 min: FIRING" in output
    alert = AlertLog.objects.get()
    assert f"alert #{alert.pk} (fired, Dead man's switch): email sent, webhook sent" in output
    assert (alert.kind, alert.metric_value, alert.triggered_at) == ("fired", 0.0, NOW)
    assert alert.delivery_claimed_at == NOW
    assert alert.notifications["email"]["status"] == alert.notifications["webhook"]["status"] == "sent"
    assert len(smtp_server.messages) == 1
    assert smtp_server.messages[0]["Subject"].startswith("[FIRING] Dead man's switch")
    assert webhook_receiver.requests[0].json()["alert_id"] == alert.pk


def test_one_line_per_rule_with_value_and_threshold(clock):
    add_traffic(20, NOW - timedelta(minutes=5), latency_ms=250.0)
    make_rule(name="quiet", notify_email=False)
    make_rule(name="slow", metric_type=AlertRule.MetricType.LATENCY_P95, threshold=1000, notify_email=False)
    make_rule(name="off", is_active=False)
    lines = run().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("quiet [no_traffic]: value 20, threshold 1, 20 requests in 10 min: OK")
    assert lines[1].endswith("slow [latency_p95]: value 250 ms, threshold 1,000 ms, 20 requests in 10 min: OK")


def test_cooldown_then_resolve_through_the_command(clock, smtp_server, webhook_receiver):
    make_rule(webhook_url=webhook_receiver.url, cooldown_minutes=30)
    run()
    assert len(smtp_server.messages) == 1

    clock.move_to(NOW + timedelta(minutes=10), tick=False)
    assert "FIRING" in run()
    assert len(smtp_server.messages) == 1  # still firing, within the cooldown: nothing new

    clock.move_to(NOW + timedelta(minutes=31), tick=False)
    run()
    assert len(smtp_server.messages) == 2  # the reminder
    assert [m["Subject"].split("]")[0] for m in smtp_server.messages] == ["[FIRING", "[FIRING"]

    add_traffic(3, NOW + timedelta(minutes=35))
    clock.move_to(NOW + timedelta(minutes=40), tick=False)
    output = run()
    assert ": OK; notice: resolved" in output
    assert smtp_server.messages[-1]["Subject"].startswith("[RESOLVED] Dead man's switch")
    assert [r.json()["status"] for r in webhook_receiver.requests] == ["firing", "firing", "resolved"]

    clock.move_to(NOW + timedelta(minutes=41), tick=False)
    run()
    assert len(smtp_server.messages) == 3
    assert list(AlertLog.objects.order_by("id").values_list("kind", flat=True)) == ["fired", "fired", "resolved"]


def test_dry_run_writes_and_sends_nothing(clock, smtp_server, webhook_receiver):
    rule = make_rule(webhook_url=webhook_receiver.url)
    output = run("--dry-run", "--create-defaults")
    assert "FIRING; would notify: fired" in output
    assert "Would create 5 default rule(s)" in output
    assert AlertRule.objects.count() == 1
    assert not AlertLog.objects.exists()
    rule.refresh_from_db()
    assert (rule.is_firing, rule.last_checked_at, rule.last_value) == (False, None, None)
    assert smtp_server.messages == []
    assert webhook_receiver.requests == []


def test_dry_run_does_not_deliver_pending_notices(clock, smtp_server):
    rule = make_rule()
    rule.record_check(value=0, level="critical", window_start=NOW, window_end=NOW, message="m", now=NOW)
    run("--dry-run")
    assert smtp_server.messages == []
    assert AlertLog.objects.undelivered().count() == 1


def test_create_defaults_twice_creates_them_once(clock, settings):
    settings.ALERT_EMAIL_RECIPIENTS, settings.ALERT_WEBHOOK_URL = [], ""
    output = run("--create-defaults")
    assert "Created 5 default rule(s)" in output
    assert "5 active rule(s) reach no one (No channel: add e-mail recipients or a webhook" in output
    assert "Created 0 default rule(s): none." in run("--create-defaults")
    settings.ALERT_WEBHOOK_URL = "https://hooks.example/alerts"
    assert "reach no one" not in run("--create-defaults", "--dry-run")  # dry: nothing is sent there
    assert AlertRule.objects.count() == len(alerts.DEFAULT_RULES) == 5
    assert sorted(AlertRule.objects.values_list("metric_type", flat=True)) == sorted(alerts.FIRST_TYPES)


def test_default_rules_without_channel_are_evaluated_and_log_no_error_run_after_run(clock, settings, caplog):
    settings.ALERT_EMAIL_RECIPIENTS, settings.ALERT_WEBHOOK_URL = [], ""
    errors = io.StringIO()
    with caplog.at_level("WARNING"):
        call_command("check_alerts", "--create-defaults", stdout=io.StringIO(), stderr=errors)
        clock.move_to(NOW + timedelta(hours=5))  # past every default cooldown: the dead man's switch reminds
        output = run()
    # No traffic: the dead man's switch fires (then reminds), and says once per notice that nobody was told.
    alerts_written = list(AlertLog.objects.order_by("id"))
    assert [alert.alert_rule.name for alert in alerts_written] == ["No traffic for an hour"] * 2
    assert {alert.delivery_note for alert in alerts_written} == {"not sent: no channel"}
    assert all(alert.delivered_at is not None and alert.notifications == {} for alert in alerts_written)
    assert f"alert #{alerts_written[1].pk} (fired, No traffic for an hour): not sent: no channel" in output
    assert errors.getvalue() == ""
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_rule_option_evaluates_only_that_rule(clock):
    first, second = make_rule(name="first"), make_rule(name="second")
    output = run("--rule", str(second.pk))
    assert "second" in output and "first" not in output
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.last_checked_at, second.last_checked_at) == (None, NOW)


@pytest.mark.parametrize("rule_id", ["999", "inactive"])
def test_unknown_or_inactive_rule_is_an_error(clock, rule_id):
    inactive = make_rule(is_active=False)
    rule_id = str(inactive.pk) if rule_id == "inactive" else rule_id
    with pytest.raises(CommandError, match=f"No active alert rule with id {rule_id}"):
        run("--rule", rule_id)


def test_time_window_option_overrides_every_rules_window(clock):
    add_traffic(4, NOW - timedelta(minutes=50))
    rule = make_rule(time_window_minutes=10)
    assert "FIRING" in run("--dry-run")
    output = run("--time-window", "60")
    assert "value 4, threshold 1, 4 requests in 60 min: OK" in output
    rule.refresh_from_db()
    assert rule.last_value == 4


@pytest.mark.parametrize("minutes", ["0", "-5", "10081", "abc"])
def test_time_window_out_of_bounds_is_refused(minutes):
    with pytest.raises(CommandError, match="--time-window"):
        run("--time-window", minutes)


def test_no_active_rule_says_what_to_do(clock):
    assert "check_alerts --create-defaults" in run()


def test_broken_rule_does_not_stop_the_others_and_fails_the_run(clock, smtp_server):
    broken = make_rule(name="broken")
    AlertRule.objects.filter(pk=broken.pk).update(metric_type="not_a_metric")  # as a bad manual edit would
    make_rule(name="fine")
    with pytest.raises(CommandError, match=f"1 rule\\(s\\) could not be evaluated: {broken.pk}"):
        run()
    assert AlertLog.objects.get().alert_rule.name == "fine"
    assert len(smtp_server.messages) == 1


def test_failing_channel_still_exits_zero_and_other_rules_are_notified(clock, smtp_server, webhook_receiver):
    webhook_receiver.status = 500
    make_rule(name="a", webhook_url=webhook_receiver.url)
    make_rule(name="b", webhook_url=webhook_receiver.url)
    output = run()  # no CommandError: the failure is recorded on each AlertLog
    assert output.count("email sent, webhook error (HTTP 500") == 2
    assert len(smtp_server.messages) == 2
    assert all(alert.notifications["webhook"]["status"] == "error" for alert in AlertLog.objects.all())


def test_notice_left_by_an_interrupted_run_is_sent_by_the_next(clock, smtp_server):
    rule = make_rule()
    # An earlier run wrote the notice and died before delivering it.
    rule.record_check(value=0, level="critical", window_start=NOW, window_end=NOW, message="m", now=NOW)
    clock.move_to(NOW + timedelta(minutes=1), tick=False)
    run()
    assert len(smtp_server.messages) == 1
    assert AlertLog.objects.get().delivered_at == NOW + timedelta(minutes=1)


def test_sample_alerts_are_history_and_are_not_sent(clock, smtp_server):
    call_command("generate_sample_data", "--count", "50", "--days", "2", "--seed", "1", stdout=io.StringIO())
    assert AlertLog.objects.exists()
    assert not AlertLog.objects.undelivered().exists()
    run()
    assert all(message["Subject"].startswith("[FIRING]") for message in smtp_server.messages)
    assert AlertLog.objects.filter(delivered_at__gte=NOW).count() == len(smtp_server.messages)


def test_rule_created_in_admin_fires_and_reaches_smtp_and_webhook(clock, admin_client, smtp_server, webhook_receiver):
    add_traffic(19, NOW - timedelta(minutes=5), cost_estimate=Decimal("0.5"))
    response = admin_client.post(
        "/admin/llm/alertrule/add/",
        {
            "name": "Spend above $5 per hour",
            "description": "",
            "is_active": "on",
            "metric_type": "cost",
            "threshold": "5",
            "time_window_minutes": "60",
            "model_name": "",
            "cooldown_minutes": "60",
            # What the admin form sends for the fields left at their defaults.
            "min_ratings": "10",
            "no_data": "keep",
            "notify_email": "on",
            "email_recipients": "finance@example.com",
            "webhook_url": webhook_receiver.url,
        },
    )
    assert response.status_code == 302, response.content
    output = run()
    assert "value $9.5000, threshold $5.0000, 19 requests in 60 min: FIRING" in output
    assert smtp_server.envelopes[0][1] == ["finance@example.com"]
    payload = webhook_receiver.requests[0].json()
    assert (payload["rule"], payload["metric"], payload["value"], payload["threshold"]) == (
        "Spend above $5 per hour",
        "cost",
        9.5,
        5.0,
    )
    page = admin_client.get("/alerts/")
    rule_row = next(item for item in page.context["rules"] if item["rule"].name == "Spend above $5 per hour")
    assert rule_row["evaluation"].breached is True
    assert [alert.alert_rule.name for alert in page.context["triggered"]] == ["Spend above $5 per hour"]
    assert 'class="badge badge-error">1 unacknowledged' in page.content.decode()


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_overlapping_runs_send_each_notice_once(smtp_server, webhook_receiver, time_machine):
    if connection.vendor != "postgresql":
        pytest.skip(
            "needs PostgreSQL: SQLite's in-memory test database is shared-cache, where concurrent writers "
            "fail with 'table is locked' instead of waiting, and SQLite serializes writers anyway; the race "
            "this test guards against is PostgreSQL's (READ COMMITTED, row locks, re-checked WHERE)."
        )
    time_machine.move_to(NOW, tick=False)
    rule_count, run_count = 20, 4
    for index in range(rule_count):
        make_rule(name=f"rule {index}", webhook_url=webhook_receiver.url)
    start = threading.Barrier(run_count)
    outputs, errors = [], []

    def one_run() -> None:
        try:
            start.wait()
            outputs.append(run())
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=one_run) for _ in range(run_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len(outputs) == run_count
    assert AlertLog.objects.count() == rule_count
    assert sorted(r.json()["alert_id"] for r in webhook_receiver.requests) == sorted(
        AlertLog.objects.values_list("id", flat=True)
    )
    assert len(smtp_server.messages) == rule_count
    assert sum(output.count("notice: fired") for output in outputs) == rule_count
    assert sum(output.count("email sent, webhook sent") for output in outputs) == rule_count
