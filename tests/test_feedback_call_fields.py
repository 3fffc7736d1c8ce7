"""The rated call's time and model copied onto each rating (UserFeedback.call_timestamp and
model_name, issue 14): filled by every way a rating is written, kept when a rating is replaced,
filled for older rows by the migration, and the figures read from them equal the join's."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.utils import timezone

from llm import dashboard, metrics
from llm.models import LLMRequestLog, UserFeedback
from tests.factories import make_feedback, make_logs

pytestmark = pytest.mark.django_db


def copies() -> list[tuple]:
    """Each rating's copies next to its call's own values, read with a join."""
    return list(
        UserFeedback.objects.order_by("id").values_list(
            "call_timestamp", "request__timestamp", "model_name", "request__model_name"
        )
    )


def assert_copies_follow_the_calls() -> None:
    rows = copies()
    assert rows
    for call_timestamp, timestamp, model_name, call_model in rows:
        assert (call_timestamp, model_name) == (timestamp, call_model)


def test_every_write_path_copies_the_calls_time_and_model(api_client, staff_user):
    now = timezone.now()
    logs = make_logs(
        5, timestamp=lambda i: now - timedelta(days=i, minutes=7 * i), model_name=lambda i: f"model-{i % 3}"
    )
    # The API, twice by the same rater: one row, replaced.
    for rating in ("thumbs_up", "thumbs_down"):
        answer = api_client.post(
            "/api/feedback/", {"request_id": str(logs[0].request_id), "rating": rating, "rater": "ann"}, format="json"
        )
        assert answer.status_code in (200, 201)
    # The call's page, twice by the same user.
    browser = Client()
    browser.force_login(staff_user)
    for rating in ("thumbs_down", "thumbs_up"):
        browser.post(f"/logs/{logs[1].request_id}/", {"rating": rating, "comment": ""})
    # The queryset's rate(), objects.create (the factory) and bulk_create (the sample data's way).
    UserFeedback.objects.rate(logs[2], "bob", UserFeedback.Rating.THUMBS_UP)
    UserFeedback.objects.rate(logs[2], "bob", UserFeedback.Rating.THUMBS_DOWN, "changed my mind")
    make_feedback(logs[3], rater="carol")
    UserFeedback.objects.bulk_create([UserFeedback(request=logs[4], rating="thumbs_up", rater="dan")])
    # save() with update_fields that leave the copies out still writes them.
    feedback = UserFeedback.objects.get(request=logs[3])
    feedback.comment = "later"
    feedback.save(update_fields=["comment"])

    assert_copies_follow_the_calls()
    assert Counter(UserFeedback.objects.values_list("request_id", flat=True)) == {log.id: 1 for log in logs}
    assert UserFeedback.objects.get(request=logs[0]).rating == "thumbs_down"
    assert UserFeedback.objects.get(request=logs[1]).rating == "thumbs_up"
    # Exactly the call's values (a DateTimeField round trip keeps microseconds on both databases).
    stored = dict(UserFeedback.objects.values_list("request_id", "call_timestamp"))
    assert stored == {log.id: log.timestamp for log in logs}


def test_analytics_api_reads_the_copies_and_agrees_with_the_join(api_client):
    rng = random.Random(14)
    now = timezone.now()
    logs = make_logs(
        60,
        timestamp=lambda i: now - timedelta(hours=rng.uniform(0, 72)),
        model_name=lambda i: rng.choice(["model-a", "model-b"]),
        user_id=lambda i: rng.choice(["u1", "u2"]),
    )
    for log in logs:
        for rater in range(rng.randint(0, 2)):
            make_feedback(log, rng.choice(["thumbs_up", "thumbs_down"]), rater=f"r{rater}")
    start, end = now - timedelta(hours=49, minutes=13), now - timedelta(hours=3, minutes=31)
    for params in ({}, {"model": "model-b"}, {"model": "model-a", "user_id": "u2"}, {"status": "success"}):
        answer = api_client.get(
            "/api/feedback/analytics/", {"start_date": start.isoformat(), "end_date": end.isoformat(), **params}
        )
        assert answer.status_code == 200
        # Independently: plain Python over the ratings and their calls.
        chosen = [
            rating
            for rating in UserFeedback.objects.select_related("request")
            if start <= rating.request.timestamp < end
            and rating.request.model_name == params.get("model", rating.request.model_name)
            and rating.request.user_id == params.get("user_id", rating.request.user_id)
            and rating.request.status == params.get("status", rating.request.status)
        ]
        up = sum(rating.rating == "thumbs_up" for rating in chosen)
        body = answer.json()
        assert chosen
        assert (body["thumbs_up"], body["thumbs_down"], body["total"]) == (up, len(chosen) - up, len(chosen))
        per_model = Counter((rating.request.model_name, rating.rating) for rating in chosen)
        assert {row["model"]: (row["thumbs_up"], row["thumbs_down"]) for row in body["by_model"]} == {
            model: (per_model[(model, "thumbs_up")], per_model[(model, "thumbs_down")])
            for model in {model for model, _ in per_model}
        }


def test_feedback_alert_figures_group_by_the_copied_model():
    now = timezone.now()
    logs = make_logs(8, timestamp=lambda i: now - timedelta(hours=i), model_name=lambda i: "ab"[i % 2])
    for index, log in enumerate(logs):
        make_feedback(log, "thumbs_up" if index % 3 else "thumbs_down", rater="r")
    scope = metrics.AlertScope(group_by="model", feedback=True)
    found = metrics.group_totals(scope, now - timedelta(days=1), now + timedelta(minutes=1))
    expected = Counter((log.model_name, "thumbs_up" if index % 3 else "thumbs_down") for index, log in enumerate(logs))
    assert {key: (totals.thumbs_up, totals.thumbs_down) for key, totals in found.items()} == {
        model: (expected[(model, "thumbs_up")], expected[(model, "thumbs_down")]) for model in "ab"
    }
    one_model = metrics.AlertScope(model="b", feedback=True)
    (totals,) = metrics.group_totals(one_model, now - timedelta(days=1), now + timedelta(minutes=1)).values()
    assert (totals.thumbs_up, totals.thumbs_down) == (expected[("b", "thumbs_up")], expected[("b", "thumbs_down")])
    window = metrics.Window(now - timedelta(days=1), now + timedelta(minutes=1), model="a", feedback=True)
    totals = metrics.window_totals([window])[window]
    assert (totals.thumbs_up, totals.thumbs_down) == (expected[("a", "thumbs_up")], expected[("a", "thumbs_down")])


def test_page_without_ratings_in_the_window_shows_none():
    now = timezone.now()
    (log,) = make_logs(1, timestamp=lambda i: now - timedelta(days=5))
    make_feedback(log)
    summary, by_day = metrics.feedback_figures(
        dashboard.rated_feedback(dashboard.TimeRange("24h", now - timedelta(days=1), now))
    )
    assert (summary["total"], summary["satisfaction_rate"], by_day) == (0, None, [])


def migration_named(executor: MigrationExecutor, suffix: str) -> tuple[str, str]:
    # By name, not number: migrations are renumbered when branches merge.
    (key,) = [key for key in executor.loader.graph.nodes if key[0] == "llm" and key[1].endswith(suffix)]
    return key


@pytest.mark.django_db(transaction=True)
def test_the_migration_fills_the_copies_of_older_ratings():
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    after = migration_named(executor, "_feedback_call_fields")
    (before,) = [parent.key for parent in executor.loader.graph.node_map[after].parents if parent.key[0] == "llm"]
    executor.migrate([before])
    try:
        old = executor.loader.project_state([before]).apps
        Log, Feedback = old.get_model("llm", "LLMRequestLog"), old.get_model("llm", "UserFeedback")
        now = timezone.now().replace(microsecond=123456)
        calls = [
            Log.objects.create(model_name=f"m{index % 2}", timestamp=now - timedelta(hours=index)) for index in range(3)
        ]
        for index, call in enumerate(calls):
            for rater in range(index + 1):
                Feedback.objects.create(request=call, rating="thumbs_up", rater=f"r{rater}")
        executor = MigrationExecutor(connection)
        executor.migrate([after])
        new = executor.loader.project_state([after]).apps.get_model("llm", "UserFeedback")
        rows = new.objects.values_list("request_id", "call_timestamp", "model_name")
        assert sorted(rows) == sorted(
            (call.id, call.timestamp, call.model_name) for index, call in enumerate(calls) for _ in range(index + 1)
        )
    finally:
        MigrationExecutor(connection).migrate(latest)
        LLMRequestLog.objects.all().delete()
