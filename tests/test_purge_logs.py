"""purge_logs and llm.retention: what is deleted, in batches, and counters that do not move."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from prometheus_client.exposition import generate_latest

from llm import prometheus, retention
from llm.models import AlertLog, LLMRequestLog, UserFeedback
from tests.factories import make_alert, make_feedback, make_rule
from tests.test_prometheus import parse, record_call, value

pytestmark = pytest.mark.django_db


@pytest.fixture
def history():
    """5 logs 100 days old (3 with feedback), 2 logs 10 days old (1 with feedback); alerts: old
    acknowledged (2), old unacknowledged (1), recent acknowledged (1)."""
    now = timezone.now()
    old = [
        record_call(f"model-{i % 2}", timestamp=now - timedelta(days=100, minutes=i), latency_ms=i) for i in range(5)
    ]
    recent = [record_call("model-0", timestamp=now - timedelta(days=10), latency_ms=1) for _ in range(2)]
    for log in old[:3] + recent[:1]:
        make_feedback(log, "thumbs_up")
    rule = make_rule(name="Errors")

    def alert(days: int, acknowledged: bool) -> AlertLog:
        return make_alert(rule, triggered_at=now - timedelta(days=days), acknowledged=acknowledged)

    alerts = {"old_ack": [alert(100, True), alert(95, True)], "old_open": alert(100, False), "new": alert(1, True)}
    return {"old": old, "recent": recent, "alerts": alerts}


def test_purge_deletes_old_logs_feedback_and_acknowledged_alerts(history):
    result = retention.purge(90)
    assert (result.logs, result.feedback, result.alert_logs) == (5, 3, 2)
    assert set(LLMRequestLog.objects.values_list("id", flat=True)) == {log.id for log in history["recent"]}
    assert UserFeedback.objects.count() == 1
    kept_alerts = {history["alerts"]["old_open"].id, history["alerts"]["new"].id}
    assert set(AlertLog.objects.values_list("id", flat=True)) == kept_alerts


def test_purge_works_in_batches(history):
    result = retention.purge(90, batch_size=2)
    # logs: 2 + 2 + 1; acknowledged alerts: 2
    assert result.batches == 4
    assert (result.logs, result.alert_logs) == (5, 2)
    assert retention.purge(90, batch_size=2).batches == 0


def test_counters_are_unchanged_by_a_purge(history, client):
    # Nothing scraped before: purge rolls the old rows up before deleting them.
    registry = prometheus.build_registry()
    retention.purge(90)
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "llm_requests_total", model="model-0", status="success") == 5
    assert value(samples, "llm_requests_total", model="model-1", status="success") == 2
    assert value(samples, "llm_feedback_total", rating="thumbs_up") == 4
    assert value(samples, "llm_request_duration_seconds_count", model="model-0") == 5
    before = client.get("/metrics").content
    retention.purge(5)
    assert LLMRequestLog.objects.count() == 0
    assert client.get("/metrics").content == before


def test_dry_run_counts_and_deletes_nothing(history):
    result = retention.purge(90, dry_run=True)
    assert (result.logs, result.feedback, result.alert_logs, result.batches) == (5, 3, 2, 0)
    assert (LLMRequestLog.objects.count(), UserFeedback.objects.count(), AlertLog.objects.count()) == (7, 4, 4)


def test_rows_not_yet_counted_are_kept(history):
    # A log the totals have not seen (id above the watermark) is kept until a roll-up counts it.
    prometheus.roll_up()
    late = record_call(timestamp=timezone.now() - timedelta(days=200))
    assert late.id not in set(retention.old_logs(timezone.now() - timedelta(days=90)).values_list("id", flat=True))
    retention.purge(90)  # rolls up first, so now it goes
    assert not LLMRequestLog.objects.filter(id=late.id).exists()


def test_command_prints_what_it_removed(history):
    out = StringIO()
    call_command("purge_logs", "--older-than", "90", "--batch-size", "3", stdout=out)
    assert "Deleted 5 logs, 3 feedback and 2 acknowledged alerts older than 90 days" in out.getvalue()
    assert "in 3 batches" in out.getvalue()


def test_command_dry_run(history):
    out = StringIO()
    call_command("purge_logs", "--older-than", "90", "--dry-run", stdout=out)
    assert out.getvalue().startswith("Would delete 5 logs, 3 feedback and 2 acknowledged alerts")
    assert LLMRequestLog.objects.count() == 7


def test_command_defaults_to_retention_days(history, settings):
    settings.RETENTION_DAYS = 5
    out = StringIO()
    call_command("purge_logs", stdout=out)
    assert "Deleted 7 logs, 4 feedback and 2 acknowledged alerts older than 5 days" in out.getvalue()


@pytest.mark.parametrize("arguments", [["--older-than", "0"], ["--older-than", "-3"], ["--batch-size", "0"]])
def test_command_refuses_bad_options(arguments):
    with pytest.raises(CommandError):
        call_command("purge_logs", *arguments, stdout=StringIO())
