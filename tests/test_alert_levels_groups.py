"""The newer alert metric types at the edges of their thresholds (checked against NumPy and plain
Python over the raw rows), warning and critical levels, the no-data policies, grouped rules, and
the API's validation of the new fields and of the preview."""

from __future__ import annotations

import json
import statistics
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from llm import alert_preview, alerts
from llm.models import AlertLog, AlertRule, AlertState, UserFeedback
from tests.factories import make_log, make_logs, make_rule

pytestmark = pytest.mark.django_db

Metric = AlertRule.MetricType
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
RULES_URL = "/api/alerts/rules/"
PREVIEW_URL = "/api/alerts/rules/preview/"


def latencies(count: int, seed: int) -> list[float]:
    return [float(value) for value in np.random.default_rng(seed).uniform(50, 5000, count)]


def spread(count: int, index: int) -> datetime:
    """Row `index` of `count` spread over the 10 minutes before NOW."""
    return NOW - timedelta(seconds=600 * (index + 1) / (count + 1))


def only_just(value: float) -> tuple[float, float]:
    """Two thresholds a hair either side of `value`."""
    return value * (1 - 1e-9), value * (1 + 1e-9)


def verdicts(value: float, **fields) -> list[bool | None]:
    """The verdict (over a level?) of a rule with its threshold just below, at, and just above `value`."""
    below, above = only_just(value)
    answer = []
    for threshold in (below, value, above):
        rule = make_rule(threshold=threshold, time_window_minutes=10, **fields)
        answer.append(alerts.evaluate(rule, NOW).breached)
    return answer


@pytest.mark.parametrize(
    ("metric_type", "column", "fraction"),
    [(Metric.LATENCY_P99, "latency_ms", 0.99), (Metric.TTFT_P95, "ttft_ms", 0.95)],
)
def test_percentile_types_at_the_edges(metric_type, column, fraction):
    values = latencies(40, seed=3)
    make_logs(40, timestamp=lambda i: spread(40, i), latency_ms=lambda i: values[i], ttft_ms=lambda i: values[i] / 2)
    make_log(timestamp=NOW - timedelta(minutes=11), latency_ms=99_999, ttft_ms=99_999)  # outside the window
    scale = 1 if column == "latency_ms" else 0.5
    expected = float(np.percentile([v * scale for v in values], fraction * 100))
    assert alerts.evaluate(
        make_rule(metric_type=metric_type, threshold=1, time_window_minutes=10), NOW
    ).value == pytest.approx(expected, rel=1e-12)
    assert verdicts(expected, metric_type=metric_type) == [True, False, False]


def test_ttft_percentile_ignores_calls_without_a_first_token():
    values = latencies(30, seed=4)
    make_logs(30, timestamp=lambda i: spread(30, i), ttft_ms=lambda i: values[i] if i % 3 else None)
    expected = float(np.percentile([v for i, v in enumerate(values) if i % 3], 95))
    rule = make_rule(metric_type=Metric.TTFT_P95, threshold=expected * 2, time_window_minutes=10)
    assert alerts.evaluate(rule, NOW).value == pytest.approx(expected, rel=1e-12)


def test_error_rate_of_one_error_type_at_the_edges():
    kinds = ["timeout"] * 3 + ["server_error"] * 5 + [""] * 32
    make_logs(
        40,
        timestamp=lambda i: spread(40, i),
        status=lambda i: "error" if kinds[i] else "success",
        error_type=lambda i: kinds[i],
    )
    expected = 100 * sum(kind == "timeout" for kind in kinds) / len(kinds)
    assert expected == 7.5
    assert verdicts(expected, metric_type=Metric.ERROR_RATE, error_type="timeout") == [True, False, False]
    # Blank: every failure.
    rule = make_rule(metric_type=Metric.ERROR_RATE, threshold=1, time_window_minutes=10)
    assert alerts.evaluate(rule, NOW).value == 100 * 8 / 40


def test_feedback_at_the_edges_and_below_the_minimum_of_ratings():
    calls = make_logs(12, timestamp=lambda i: spread(12, i))
    ups = [True] * 8 + [False] * 4
    for call, up in zip(calls, ups, strict=True):
        rating = UserFeedback.Rating.THUMBS_UP if up else UserFeedback.Rating.THUMBS_DOWN
        UserFeedback.objects.create(request=call, rating=rating, rater="r", created_at=call.timestamp)
    expected = 100 * statistics.mean(ups)
    below, above = only_just(expected)
    # Fires *below* its threshold: a threshold just above the satisfaction fires.
    assert verdicts(expected, metric_type=Metric.FEEDBACK, min_ratings=12) == [False, False, True]
    rule = make_rule(metric_type=Metric.FEEDBACK, threshold=above, min_ratings=13, time_window_minutes=10)
    evaluation = alerts.evaluate(rule, NOW)
    assert (evaluation.breached, evaluation.value) == (None, pytest.approx(expected))
    assert "too few ratings to judge: 12, fewer than 13" in evaluation.note


def record(rule: AlertRule, at: datetime) -> AlertLog | None:
    outcome = alerts.check_rule(rule, at)
    return outcome.alert


def spend(amount: str, at: datetime, **fields) -> None:
    make_log(timestamp=at, cost_estimate=Decimal(amount), **fields)


def test_two_levels_fire_escalate_calm_down_and_resolve():
    rule = make_rule(
        metric_type=Metric.COST, threshold=2, warning_threshold=1, time_window_minutes=10, cooldown_minutes=60
    )
    spend("1.5", NOW - timedelta(minutes=5))
    first = record(rule, NOW)
    assert (first.kind, first.level) == ("fired", "warning")
    assert first.message.startswith("WARNING: cost $1.5000")
    spend("1.0", NOW + timedelta(minutes=1))
    escalated = record(rule, NOW + timedelta(minutes=2))  # within the cooldown, but worse: notified
    assert (escalated.kind, escalated.level) == ("fired", "critical")
    assert record(rule, NOW + timedelta(minutes=3)) is None  # still critical, cooldown
    # The first call leaves the window: $1 is exactly the warning level (fires strictly above): ok.
    assert record(rule, NOW + timedelta(minutes=6)).kind == "resolved"
    rule.refresh_from_db()
    assert (rule.is_firing, rule.level) == (False, "")


def test_critical_back_to_warning_changes_the_level_without_a_notice():
    rule = make_rule(metric_type=Metric.COST, threshold=2, warning_threshold=1, time_window_minutes=10)
    spend("1.5", NOW - timedelta(minutes=9))
    spend("1.5", NOW - timedelta(minutes=1))
    assert record(rule, NOW).level == "critical"
    assert record(rule, NOW + timedelta(minutes=2)) is None  # $1.5 left: warning, no notice
    rule.refresh_from_db()
    assert (rule.is_firing, rule.level) == (True, "warning")
    assert record(rule, NOW + timedelta(minutes=15)).kind == "resolved"


@pytest.mark.parametrize(
    ("policy", "starts_firing", "expected_kind", "expected_firing"),
    [
        ("keep", True, None, True),
        ("ok", True, "resolved", False),
        ("alert", False, "fired", True),
        ("keep", False, None, False),
    ],
)
def test_no_data_policies(policy, starts_firing, expected_kind, expected_firing):
    # Five calls: below MIN_REQUESTS_TO_JUDGE, so an error rate has no verdict.
    make_logs(5, timestamp=lambda i: spread(5, i), status="error")
    rule = make_rule(metric_type=Metric.ERROR_RATE, threshold=5, no_data=policy, time_window_minutes=10)
    AlertRule.objects.filter(pk=rule.pk).update(is_firing=starts_firing, level="critical" if starts_firing else "")
    rule.refresh_from_db()
    alert = record(rule, NOW)
    assert (alert.kind if alert else None) == expected_kind
    rule.refresh_from_db()
    assert rule.is_firing is expected_firing
    if alert:
        assert "too little traffic to judge" in alert.message and "no-data policy" in alert.message


def calls_of(user: str, count: int, failures: int, at: datetime) -> None:
    make_logs(count, user_id=user, timestamp=at, status=lambda i: "error" if i < failures else "success")


def test_a_grouped_rule_fires_and_resolves_per_group():
    rule = make_rule(metric_type=Metric.ERROR_RATE, threshold=20, group_by="user", time_window_minutes=10)
    calls_of("alice", 10, 5, NOW - timedelta(minutes=5))
    calls_of("bob", 10, 1, NOW - timedelta(minutes=5))
    calls_of("", 10, 10, NOW - timedelta(minutes=5))  # nobody's calls: in no group
    outcome = alerts.check_rule(rule, NOW)
    assert [(a.group_key, a.kind) for a in outcome.alerts] == [("alice", "fired")]
    assert "error rate 50.00% for user alice" in outcome.alerts[0].message
    assert outcome.evaluation.note.startswith("1 of 2 user groups over a threshold: alice")
    rule.refresh_from_db()
    assert rule.is_firing
    # Bob breaks too, alice recovers (her failures leave the window): one resolve, one fire.
    calls_of("alice", 10, 0, NOW + timedelta(minutes=7))
    calls_of("bob", 10, 9, NOW + timedelta(minutes=7))
    later = alerts.check_rule(rule, NOW + timedelta(minutes=12))
    assert sorted((a.group_key, a.kind) for a in later.alerts) == [("alice", "resolved"), ("bob", "fired")]
    states = dict(AlertState.objects.filter(rule=rule).values_list("group_key", "is_firing"))
    assert states == {"alice": False, "bob": True}
    # Each group keeps its own cooldown: bob is not reminded a minute later.
    assert alerts.check_rule(rule, NOW + timedelta(minutes=13)).alerts == []


def test_groups_beyond_the_cap_are_reported_not_dropped_silently(settings):
    settings.ALERT_MAX_GROUPS = 2
    rule = make_rule(metric_type=Metric.ERROR_RATE, threshold=20, group_by="tag:team", time_window_minutes=10)
    rates = {"a": 9, "b": 5, "c": 7}
    for team, failures in rates.items():
        make_logs(
            10,
            timestamp=NOW - timedelta(minutes=1),
            tags={"team": team},
            status=lambda i, f=failures: "error" if i < f else "success",
        )
    outcome = alerts.check_rule(rule, NOW)
    # The two worst are kept.
    assert sorted(a.group_key for a in outcome.alerts) == ["a", "c"]
    assert "1 more groups not evaluated (ALERT_MAX_GROUPS 2)" in outcome.evaluation.note
    assert "1 more groups not evaluated" in outcome.summary()
    # The preview leaves out the same group: more groups may fire than the cap, so it replays instant
    # by instant, as check_alerts.
    rule.refresh_from_db()
    AlertLog.objects.all().delete()
    AlertState.objects.all().delete()
    result = alert_preview.replay(rule, NOW + timedelta(minutes=1), 1, 5)
    fired_at = {event["group"] for event in result.events if event["time"] == NOW}
    assert (fired_at, result.groups_left_out) == ({"a", "c"}, 1)


def test_rule_api_takes_and_validates_the_new_fields(api_client):
    body = {
        "name": "per user spend",
        "metric_type": "cost",
        "threshold": 5,
        "warning_threshold": 2,
        "group_by": "tag:feature",
        "no_data": "ok",
    }
    response = api_client.post(RULES_URL, body, format="json")
    assert response.status_code == 201, response.content
    answer = response.json()
    assert {key: answer[key] for key in body} == body
    assert (answer["level"], answer["min_ratings"], answer["error_type"]) == ("", 10, "")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"group_by": "team"}, "group_by"),
        ({"group_by": "tag:"}, "group_by"),
        ({"group_by": "tag:a\u0000b"}, "group_by"),
        ({"group_by": "tag:\ud800"}, "group_by"),
        ({"warning_threshold": 5}, "warning_threshold"),
        ({"warning_threshold": 6}, "warning_threshold"),
        ({"warning_threshold": "NaN"}, "warning_threshold"),
        ({"metric_type": "feedback", "threshold": 60, "warning_threshold": 50}, "warning_threshold"),
        ({"metric_type": "feedback", "threshold": 101}, "threshold"),
        ({"metric_type": "cost", "error_type": "timeout"}, "error_type"),
        ({"error_type": "meltdown"}, "error_type"),
        ({"min_ratings": 0}, "min_ratings"),
        ({"min_ratings": 2**31}, "min_ratings"),
        ({"no_data": "maybe"}, "no_data"),
    ],
)
def test_invalid_new_fields_answer_400_naming_the_field(api_client, change, field):
    body = {"name": "r", "metric_type": "error_rate", "threshold": 5, **change}
    # json.dumps escapes a lone surrogate as \ud800, as a hostile client would send it.
    response = api_client.post(RULES_URL, json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert list(response.json()["fields"]) == [field]
    preview = api_client.post(PREVIEW_URL, json.dumps({**body, "days": 1}), content_type="application/json")
    assert preview.status_code == 400
    assert list(preview.json()["fields"]) == [field]


def test_patch_checks_the_warning_level_against_the_stored_threshold(api_client):
    rule = make_rule(metric_type=Metric.LATENCY_P95, threshold=1000)
    response = api_client.patch(f"{RULES_URL}{rule.pk}/", {"warning_threshold": 1500}, format="json")
    assert list(response.json()["fields"]) == ["warning_threshold"]
    assert api_client.patch(f"{RULES_URL}{rule.pk}/", {"warning_threshold": 500}, format="json").status_code == 200


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"days": 0}, "days"),
        ({"days": 31}, "days"),
        ({"days": 30, "step_minutes": 4}, "step_minutes"),
        ({"step_minutes": 0}, "step_minutes"),
        ({"step_minutes": 2**40}, "step_minutes"),
        ({"rule_id": 2**40}, "rule_id"),
        ({"rule_id": 999_999}, "rule_id"),
    ],
)
def test_preview_bounds(api_client, change, field):
    body = {"metric_type": "cost", "threshold": 1, **change}
    response = api_client.post(PREVIEW_URL, body, format="json")
    assert response.status_code == 400
    assert list(response.json()["fields"]) == [field]


def test_preview_of_a_saved_rule_with_a_changed_threshold(api_client, time_machine):
    time_machine.move_to(NOW, tick=False)
    rule = make_rule(metric_type=Metric.COST, threshold=100, time_window_minutes=60, cooldown_minutes=0)
    for hours in (30, 20, 5):
        spend("3", NOW - timedelta(hours=hours, minutes=30))
    saved = api_client.post(PREVIEW_URL, {"rule_id": rule.pk, "days": 2, "step_minutes": 60}, format="json").json()
    assert (saved["threshold"], saved["events"], saved["notifications"], saved["evaluations"]) == (100, [], 0, 48)
    changed = api_client.post(
        PREVIEW_URL, {"rule_id": rule.pk, "threshold": 2, "days": 2, "step_minutes": 60}, format="json"
    )
    answer = changed.json()
    # Each $3 call is in one hourly window: fire at the hour after it, resolve at the next.
    fires = [datetime.fromisoformat(event["time"]) for event in answer["events"] if event["kind"] == "fire"]
    expected = [NOW - timedelta(hours=hours) for hours in (30, 20, 5)]
    assert fires == expected
    assert answer["notifications"] == 6 and answer["breaches"] == 3
    assert len(answer["series"]) == 48 and answer["series"][-1] == {"time": answer["end"], "value": 0.0}
    rule.refresh_from_db()
    assert rule.threshold == 100 and not AlertLog.objects.exists()  # nothing written


def test_the_alerts_page_states_grouping_no_data_policy_levels_and_links_the_form(logged_in_client, time_machine):
    calls_of("alice", 10, 5, NOW - timedelta(minutes=5))
    make_rule(
        name="per user errors",
        metric_type=Metric.ERROR_RATE,
        threshold=60,
        warning_threshold=20,
        group_by="user",
        no_data="ok",
        time_window_minutes=10,
    )
    time_machine.move_to(NOW, tick=False)
    html = logged_in_client.get("/alerts/").content.decode()
    assert "per user · \n            no data: count as ok (resolves)" in html
    assert "warning 20.00%" in html
    assert '<span class="badge badge-error">firing</span>\n            <span class="badge">warning</span>' in html
    assert "1 of 1 user groups over a threshold: alice; worst: alice" in html
    rule = AlertRule.objects.get()
    assert f'href="/alerts/rules/{rule.pk}/edit/"' in html and 'href="/alerts/rules/new/"' in html


def test_the_rule_form_saves_and_names_a_bad_field(logged_in_client):
    body = {
        "name": "slow first tokens",
        "metric_type": "ttft_p95",
        "threshold": "800",
        "warning_threshold": "900",
        "time_window_minutes": "15",
        "min_ratings": "10",
        "no_data": "keep",
        "cooldown_minutes": "60",
        "notify_email": "on",
        "is_active": "on",
    }
    refused = logged_in_client.post("/alerts/rules/new/", body)
    assert refused.status_code == 200
    assert "The warning level must be below the critical threshold." in refused.content.decode()
    assert not AlertRule.objects.exists()
    saved = logged_in_client.post("/alerts/rules/new/", {**body, "warning_threshold": "500", "group_by": "tag:feature"})
    assert saved.status_code == 302
    rule = AlertRule.objects.get()
    assert (rule.metric_type, rule.threshold, rule.warning_threshold, rule.group_by) == (
        "ttft_p95",
        800,
        500,
        "tag:feature",
    )
    edited = logged_in_client.post(
        f"/alerts/rules/{rule.pk}/edit/", {**body, "warning_threshold": "", "threshold": "700", "group_by": ""}
    )
    assert edited.status_code == 302
    rule.refresh_from_db()
    assert (rule.threshold, rule.warning_threshold, rule.group_by) == (700, None, "")
    assert logged_in_client.get("/alerts/rules/999/edit/").status_code == 404


def test_a_quiet_group_is_judged_only_while_it_fires():
    rule = make_rule(metric_type=Metric.COST, threshold=1, group_by="user", time_window_minutes=10, no_data="keep")
    spend("2", NOW - timedelta(minutes=5), user_id="alice")
    spend("0.5", NOW - timedelta(minutes=5), user_id="bob")
    assert [(a.group_key, a.kind) for a in alerts.check_rule(rule, NOW).alerts] == [("alice", "fired")]
    # Both go quiet: alice, firing, is judged with zero spend and resolves; bob is not judged.
    later = alerts.check_rule(rule, NOW + timedelta(minutes=20))
    assert [(a.group_key, a.kind) for a in later.alerts] == [("alice", "resolved")]
    checked = dict(AlertState.objects.filter(rule=rule).values_list("group_key", "last_checked_at"))
    assert checked == {"alice": NOW + timedelta(minutes=20), "bob": NOW}


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_overlapping_runs_of_a_grouped_rule_write_each_group_notice_once(time_machine, settings):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL's concurrent writers (see test_check_alerts' overlapping runs test)")
    settings.ALERT_EMAIL_RECIPIENTS, settings.ALERT_WEBHOOK_URL = [], ""
    time_machine.move_to(NOW, tick=False)
    rule = make_rule(metric_type=Metric.COST, threshold=1, group_by="user", time_window_minutes=10)
    users = [f"user{index}" for index in range(12)]
    for user in users:
        spend("2", NOW - timedelta(minutes=5), user_id=user)
    start = threading.Barrier(4)
    errors = []

    def one_run() -> None:
        try:
            start.wait()
            alerts.check_rules([AlertRule.objects.get(pk=rule.pk)], NOW)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=one_run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(AlertLog.objects.values_list("group_key", flat=True)) == sorted(users)
    assert AlertState.objects.filter(rule=rule, is_firing=True).count() == len(users)
    assert AlertLog.objects.filter(delivery_note="not sent: no channel").count() == len(users)
