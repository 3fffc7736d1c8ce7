"""A rule's history page, /alerts/<rule id>/ (llm/alert_history.py, views.alert_history): fired,
resolved, acknowledged, muted and unmuted, each notice and what every channel did with it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from llm import alert_history
from llm.models import AlertLog, AlertSilence
from tests.factories import make_alert, make_rule

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def build_history():
    """Fired (sent by e-mail, webhook failed), acknowledged, muted, fired while muted, unmuted,
    resolved (sent); a second silence that ran out; and another rule's notice, not shown."""
    rule = make_rule(name="Errors above 5%")
    fired = make_alert(rule, triggered_at=T0, kind=AlertLog.Kind.FIRED, message="error rate 12.00%")
    fired.record_delivery(
        {
            "email": {"status": "sent", "recipients": ["oncall@example.com"]},
            "webhook": {"status": "error", "error": "HTTP 500 Internal Server Error", "attempts": 2},
        }
    )
    AlertLog.objects.filter(pk=fired.pk).update(
        acknowledged=True, acknowledged_at=T0 + timedelta(minutes=5), acknowledged_by_name="alice"
    )
    silence = AlertSilence.objects.create(
        alert_rule=rule,
        starts_at=T0 + timedelta(minutes=10),
        ends_at=T0 + timedelta(hours=2),
        reason="deploy",
        created_by_name="bob",
        ended_at=T0 + timedelta(minutes=40),
        ended_by_name="carol",
    )
    muted = make_alert(rule, triggered_at=T0 + timedelta(minutes=20), message="still 11.00%")
    muted.record_muted(silence)
    resolved = make_alert(rule, triggered_at=T0 + timedelta(minutes=50), kind=AlertLog.Kind.RESOLVED, message="ok")
    resolved.record_delivery({"pagerduty:oncall": {"status": "sent", "http_status": 202}})
    AlertSilence.objects.create(
        alert_rule=rule, starts_at=T0 + timedelta(hours=1), ends_at=T0 + timedelta(hours=1, minutes=30), reason="x"
    )
    make_alert(make_rule(name="Other"), triggered_at=T0 + timedelta(minutes=30), message="not this rule")
    return rule


EXPECTED = [
    # (minutes after T0, kind), newest first
    (90, "silence ended"),
    (60, "muted"),
    (50, "resolved"),
    (40, "unmuted"),
    (20, "fired"),
    (10, "muted"),
    (5, "acknowledged"),
    (0, "fired"),
]


def test_timeline_lists_every_event_newest_first():
    rule = build_history()
    events = alert_history.timeline(rule, now=T0 + timedelta(days=1))
    assert [(round((e.time - T0).total_seconds() / 60), e.kind) for e in events] == EXPECTED
    first = events[-1]
    assert [(r.channel, r.status, r.detail) for r in first.deliveries] == [
        ("email", "sent", "oncall@example.com"),
        ("webhook", "error", "HTTP 500 Internal Server Error"),
    ]
    muted_notice = events[4]
    assert muted_notice.deliveries == []
    assert muted_notice.delivery_note == "muted: silenced until 2026-03-10 14:00 UTC by bob"
    assert events[5].text.startswith("Muted by bob until ") and events[5].text.endswith(": deploy")
    assert events[3].text == "Unmuted by carol" and events[6].text == "Acknowledged by alice"


def test_page_shows_the_timeline_with_each_channels_result(logged_in_client):
    rule = build_history()
    page = logged_in_client.get(f"/alerts/{rule.pk}/").content.decode()
    assert "<h1>Errors above 5%</h1>" in page
    kinds = re.findall(r'<tr class="event [^"]*" data-kind="([^"]+)">', page)
    assert kinds == [kind for _, kind in EXPECTED]
    assert "not this rule" not in page
    assert '<li data-channel="webhook">webhook:' in page and "HTTP 500 Internal Server Error" in page
    assert '<li data-channel="pagerduty:oncall">' in page
    assert "muted: silenced until 2026-03-10 14:00 UTC by bob" in page


def test_alerts_page_links_each_rule_to_its_history(logged_in_client):
    rule = make_rule(name="Linked")
    assert f'<a href="/alerts/{rule.pk}/">Linked</a>' in logged_in_client.get("/alerts/").content.decode()


def test_history_of_a_quiet_rule_says_so(logged_in_client):
    rule = make_rule(name="Quiet")
    page = logged_in_client.get(f"/alerts/{rule.pk}/").content.decode()
    assert "Nothing yet: this rule has not fired" in page


def test_unknown_rule_is_a_404_and_the_page_needs_login(client, logged_in_client):
    assert logged_in_client.get("/alerts/999999/").status_code == 404
    rule = make_rule()
    answer = client.get(f"/alerts/{rule.pk}/")
    assert answer.status_code == 302 and "login" in answer["Location"]


def test_history_queries_do_not_grow_with_notices(logged_in_client):
    rule = make_rule(email_recipients="a@example.com")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert logged_in_client.get(f"/alerts/{rule.pk}/").status_code == 200
        return len(captured)

    for minute in range(3):
        make_alert(rule, triggered_at=T0 + timedelta(minutes=minute), acknowledged=True, acknowledged_at=T0)
    queries()
    at_three = queries()
    for minute in range(3, 12):
        make_alert(rule, triggered_at=T0 + timedelta(minutes=minute), acknowledged=True, acknowledged_at=T0)
    assert queries() == at_three
