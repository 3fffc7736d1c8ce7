"""Silences: a muted rule is still evaluated and shown, its notices settled as "muted" and not
sent (API `POST/DELETE /api/alerts/rules/<id>/silence/`, the alerts page's form, admin)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.utils import timezone

from llm import alerts
from llm.models import AlertLog, AlertRule, AlertSilence
from tests.factories import make_log, make_rule

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def dead_mans_switch(webhook_url: str, **fields) -> AlertRule:
    """Fires whenever nothing was logged in the last 10 minutes."""
    return make_rule(
        name="No traffic",
        metric_type=AlertRule.MetricType.NO_TRAFFIC,
        threshold=1,
        time_window_minutes=10,
        cooldown_minutes=0,
        notify_email=False,
        webhook_url=webhook_url,
        **fields,
    )


def silence_url(rule: AlertRule) -> str:
    return f"/api/alerts/rules/{rule.pk}/silence/"


def test_api_mutes_with_who_and_why_and_unmutes(api_client, webhook_receiver):
    rule = dead_mans_switch(webhook_receiver.url)
    before = timezone.now()
    answer = api_client.post(silence_url(rule), {"minutes": 90, "reason": "deploy"}, format="json")
    assert answer.status_code == 201, answer.content
    silence = answer.json()
    assert set(silence) == {"id", "rule_id", "starts_at", "ends_at", "reason", "created_by", "ended_at", "ended_by"}
    assert (silence["rule_id"], silence["reason"], silence["created_by"]) == (rule.pk, "deploy", "API key tests")
    ends_at = datetime.fromisoformat(silence["ends_at"])
    assert before + timedelta(minutes=90) <= ends_at <= timezone.now() + timedelta(minutes=90)
    assert api_client.get(f"/api/alerts/rules/{rule.pk}/").json()["silence"]["id"] == silence["id"]

    unmuted = api_client.delete(silence_url(rule))
    assert unmuted.status_code == 200 and unmuted.json() == {"rule_id": rule.pk, "unmuted": 1}
    assert api_client.get(f"/api/alerts/rules/{rule.pk}/").json()["silence"] is None
    stored = AlertSilence.objects.get()
    assert stored.ended_at is not None and stored.ended_by_name == "API key tests"
    assert api_client.delete(silence_url(rule)).json()["unmuted"] == 0


def test_api_mutes_until_a_time_by_a_logged_in_user(logged_in_client, webhook_receiver):
    rule = dead_mans_switch(webhook_receiver.url)
    until = (timezone.now() + timedelta(days=2)).replace(microsecond=0)
    answer = logged_in_client.post(
        silence_url(rule), {"until": until.isoformat(), "reason": "maintenance"}, format="json"
    )
    assert answer.status_code == 201
    assert datetime.fromisoformat(answer.json()["ends_at"]) == until
    assert answer.json()["created_by"] == "alice"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"minutes": 60}, "reason"),
        ({"minutes": 60, "reason": ""}, "reason"),
        ({"minutes": 60, "reason": "x" * 501}, "reason"),
        ({"minutes": 60, "reason": "a\x00b"}, "reason"),
        ({"minutes": 60, "reason": "\ud800"}, "reason"),
        ({"reason": "why"}, "until"),
        ({"minutes": 60, "until": "2030-01-01T00:00:00Z", "reason": "why"}, "until"),
        ({"until": "2020-01-01T00:00:00Z", "reason": "why"}, "until"),
        ({"until": "3000-01-01T00:00:00Z", "reason": "why"}, "until"),
        ({"until": "tomorrow", "reason": "why"}, "until"),
        ({"until": "99999-01-01T00:00:00Z", "reason": "why"}, "until"),
        ({"minutes": 0, "reason": "why"}, "minutes"),
        ({"minutes": 2**31, "reason": "why"}, "minutes"),
        ({"minutes": 366 * 24 * 60 + 1, "reason": "why"}, "minutes"),
        ({"minutes": "many", "reason": "why"}, "minutes"),
        # NaN is not JSON: the parser refuses the whole body before any field is read.
        ({"minutes": float("nan"), "reason": "why"}, None),
    ],
)
def test_bad_silences_get_a_400_naming_the_field(body, field, api_client, webhook_receiver):
    rule = dead_mans_switch(webhook_receiver.url)
    # json.dumps writes NaN and escapes a lone surrogate, as a hostile client could send them.
    answer = api_client.post(silence_url(rule), json.dumps(body), content_type="application/json")
    assert answer.status_code == 400, answer.content
    if field is None:
        assert "NaN" in answer.json()["error"]
    else:
        assert field in answer.json()["fields"]
    assert AlertSilence.objects.count() == 0


def test_unknown_rule_is_a_404(api_client):
    assert api_client.post(silence_url(AlertRule(pk=999)), {"minutes": 5, "reason": "x"}).status_code == 404
    assert api_client.delete(silence_url(AlertRule(pk=999))).status_code == 404


def test_a_muted_rule_is_evaluated_and_recorded_but_not_notified(webhook_receiver):
    rule = dead_mans_switch(webhook_receiver.url)
    with time_machine.travel(NOW, tick=False):
        rule.silence(NOW + timedelta(hours=1), "deploy", by_name="bob")
        run = alerts.check_rules([rule], NOW)
    rule.refresh_from_db()
    assert rule.is_firing and rule.last_checked_at == NOW  # state updated as usual
    (notice,) = run.deliveries
    notice.refresh_from_db()
    assert notice.kind == "fired" and notice.is_muted
    assert notice.delivery_note == "muted: silenced until 2026-03-10 13:00 UTC by bob"
    assert notice.delivery_summary == notice.delivery_note and notice.notifications == {}
    assert webhook_receiver.requests == []

    # After the silence ran out, the next notice is sent.
    later = NOW + timedelta(hours=2)
    make_log(timestamp=later - timedelta(minutes=1))
    with time_machine.travel(later, tick=False):
        run = alerts.check_rules([rule], later)
    (resolved,) = run.deliveries
    assert resolved.kind == "resolved" and not resolved.is_muted
    assert resolved.notifications["webhook"]["status"] == "sent"
    assert len(webhook_receiver.requests) == 1


def test_unmuting_sends_the_next_notice(webhook_receiver):
    rule = dead_mans_switch(webhook_receiver.url)
    with time_machine.travel(NOW, tick=False):
        rule.silence(NOW + timedelta(days=1), "noisy", by_name="bob")
        alerts.check_rules([rule], NOW)
        assert rule.unsilence(by_name="carol") == 1
        again = NOW + timedelta(minutes=1)
        run = alerts.check_rules([rule], again)  # cooldown 0: a reminder is due
    assert [alert.is_muted for alert in AlertLog.objects.order_by("triggered_at")] == [True, False]
    assert run.deliveries[0].notifications["webhook"]["status"] == "sent"
    assert AlertSilence.objects.get().ended_by_name == "carol"


def test_a_silence_not_yet_started_or_already_ended_does_not_mute(webhook_receiver):
    rule = dead_mans_switch(webhook_receiver.url)
    AlertSilence.objects.create(alert_rule=rule, starts_at=NOW - timedelta(hours=2), ends_at=NOW, reason="over")
    AlertSilence.objects.create(
        alert_rule=rule, starts_at=NOW + timedelta(minutes=1), ends_at=NOW + timedelta(hours=1), reason="later"
    )
    assert rule.active_silence(NOW) is None
    run = alerts.check_rules([rule], NOW)
    assert run.deliveries[0].notifications["webhook"]["status"] == "sent"


def test_page_form_mutes_and_unmutes_and_the_page_says_so(logged_in_client, webhook_receiver):
    rule = dead_mans_switch(webhook_receiver.url)
    answer = logged_in_client.post(f"/alerts/rules/{rule.pk}/silence/", {"minutes": 240, "reason": "deploy at 3"})
    assert answer.status_code == 302 and answer["Location"] == "/alerts/"
    silence = rule.active_silence()
    assert (silence.created_by_name, silence.reason) == ("alice", "deploy at 3")
    assert silence.ends_at - silence.starts_at == pytest.approx(timedelta(minutes=240), abs=timedelta(seconds=5))
    page = logged_in_client.get("/alerts/").content.decode()
    assert 'class="badge badge-warn muted-badge">muted</span>' in page
    assert "deploy at 3" in page and f'action="/alerts/rules/{rule.pk}/unsilence/"' in page

    back = logged_in_client.post(f"/alerts/rules/{rule.pk}/unsilence/", {"next": "history"})
    assert back["Location"] == f"/alerts/{rule.pk}/"
    assert rule.active_silence() is None
    assert f'action="/alerts/rules/{rule.pk}/silence/"' in logged_in_client.get("/alerts/").content.decode()


@pytest.mark.parametrize("form", [{"minutes": 240}, {"minutes": 7, "reason": "x"}, {"minutes": 60, "reason": "\x00"}])
def test_page_form_refuses_bad_input_with_a_message(form, logged_in_client, webhook_receiver):
    rule = dead_mans_switch(webhook_receiver.url)
    answer = logged_in_client.post(f"/alerts/rules/{rule.pk}/silence/", form, follow=True)
    assert answer.status_code == 200
    assert "not muted" in answer.content.decode()
    assert AlertSilence.objects.count() == 0


def test_page_forms_need_login_and_post(client, logged_in_client, webhook_receiver):
    rule = dead_mans_switch(webhook_receiver.url)
    assert client.post(f"/alerts/rules/{rule.pk}/silence/", {"minutes": 60, "reason": "x"}).status_code == 302
    assert AlertSilence.objects.count() == 0
    assert logged_in_client.get(f"/alerts/rules/{rule.pk}/silence/").status_code == 405


def test_admin_records_who_muted(admin_client, webhook_receiver):
    rule = dead_mans_switch(webhook_receiver.url)
    ends = timezone.localtime(timezone.now() + timedelta(hours=3))
    answer = admin_client.post(
        "/admin/llm/alertsilence/add/",
        {
            "alert_rule": rule.pk,
            "starts_at_0": timezone.localtime().strftime("%Y-%m-%d"),
            "starts_at_1": timezone.localtime().strftime("%H:%M:%S"),
            "ends_at_0": ends.strftime("%Y-%m-%d"),
            "ends_at_1": ends.strftime("%H:%M:%S"),
            "reason": "from admin",
        },
    )
    assert answer.status_code == 302, answer.content.decode()[:2000]
    silence = AlertSilence.objects.get()
    assert (silence.created_by_name, silence.reason) == ("admin", "from admin")
    assert rule.active_silence() == silence
