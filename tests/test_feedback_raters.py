"""One rating per call and rater: on POST /api/feedback/, on the call's page, in the figures, and
in the migration that brought the rule in (duplicates before it: the newest is kept)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.utils import timezone

from llm import metrics
from llm.models import LLMRequestLog, UserFeedback

URL = "/api/feedback/"


@pytest.fixture
def call(db) -> LLMRequestLog:
    log, _ = LLMRequestLog.objects.record(model_name="llama-3.1-8b-instant", latency_ms=120)
    return log


def rate(client, log: LLMRequestLog, rating: str, **extra):
    return client.post(URL, {"request_id": str(log.request_id), "rating": rating, **extra}, format="json")


@pytest.mark.django_db
def test_rating_again_replaces_the_first_rating(api_client, call):
    first = rate(api_client, call, "thumbs_up", comment="great")
    assert first.status_code == 201
    second = rate(api_client, call, "thumbs_down", comment="actually wrong")
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert (second.json()["rating"], second.json()["comment"], second.json()["rater"]) == (
        "thumbs_down",
        "actually wrong",
        "key:tests",
    )
    (feedback,) = UserFeedback.objects.all()
    assert (feedback.rating, feedback.comment, feedback.rater) == ("thumbs_down", "actually wrong", "key:tests")
    summary = api_client.get("/api/feedback/analytics/").json()
    assert (summary["thumbs_up"], summary["thumbs_down"], summary["total"]) == (0, 1, 1)


@pytest.mark.django_db
def test_a_replaced_rating_moves_to_the_day_it_was_given(api_client, call):
    rate(api_client, call, "thumbs_up")
    UserFeedback.objects.update(created_at=timezone.now() - timedelta(days=3))
    rate(api_client, call, "thumbs_down")
    days = metrics.feedback_by_day(UserFeedback.objects.all())
    assert [(row["thumbs_up"], row["thumbs_down"]) for row in days] == [(0, 1)]
    assert days[0]["day"] == timezone.localdate().isoformat()


@pytest.mark.django_db
def test_an_app_names_its_own_raters(api_client, call):
    for rater, rating in [("end-user-1", "thumbs_up"), ("end-user-2", "thumbs_down"), ("end-user-1", "thumbs_up")]:
        assert rate(api_client, call, rating, rater=rater).status_code in (200, 201)
    assert rate(api_client, call, "thumbs_up", rater="end-user-3").status_code == 201
    assert rate(api_client, call, "thumbs_up", rater="end-user-3").status_code == 200
    assert sorted(UserFeedback.objects.values_list("rater", "rating")) == [
        ("end-user-1", "thumbs_up"),
        ("end-user-2", "thumbs_down"),
        ("end-user-3", "thumbs_up"),
    ]
    summary = api_client.get("/api/feedback/analytics/").json()
    assert (summary["thumbs_up"], summary["thumbs_down"], summary["total"]) == (2, 1, 3)
    assert summary["by_model"][0]["total"] == 3
    listing = api_client.get(URL).json()
    assert {row["rater"] for row in listing["results"]} == {"end-user-1", "end-user-2", "end-user-3"}


@pytest.mark.django_db
def test_a_blank_rater_means_the_caller(api_client, logged_in_client, call):
    assert rate(api_client, call, "thumbs_up", rater="  ").status_code == 201
    assert rate(logged_in_client, call, "thumbs_down").status_code == 201  # alice, logged in
    assert rate(logged_in_client, call, "thumbs_up").status_code == 200
    assert sorted(UserFeedback.objects.values_list("rater", "rating")) == [
        ("alice", "thumbs_up"),
        ("key:tests", "thumbs_up"),
    ]


@pytest.mark.django_db
def test_a_too_long_rater_is_a_400_naming_it(api_client, call):
    response = rate(api_client, call, "thumbs_up", rater="r" * 201)
    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["rater"]
    assert UserFeedback.objects.count() == 0


@pytest.mark.django_db
def test_the_calls_page_keeps_one_rating_per_user(staff_user, call):
    browser = Client()
    browser.force_login(staff_user)
    path = f"/logs/{call.request_id}/"
    assert "Rate this answer" in browser.get(path).content.decode()
    browser.post(path, {"rating": "thumbs_up", "comment": "good"})
    response = browser.post(path, {"rating": "thumbs_down", "comment": "on second thought, no"}, follow=True)
    html = response.content.decode()
    assert "your rating is updated" in html
    (feedback,) = UserFeedback.objects.all()
    assert (feedback.rater, feedback.rating, feedback.comment) == ("alice", "thumbs_down", "on second thought, no")
    # The form comes back with the user's rating, ready to change.
    form = response.context["form"]
    assert form.initial == {"rating": "thumbs_down", "comment": "on second thought, no"}
    assert "Change your rating" in html
    checked = re.findall(r'<input type="radio" name="rating" value="(\w+)"[^>]* checked', html)
    assert checked == ["thumbs_down"]


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_the_newest_rating_of_each_call():
    before, after = ("llm", "0005_dashboard_settings"), ("llm", "0006_one_rating_per_rater")
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate([before])
    try:
        old = executor.loader.project_state([before]).apps
        Log, Feedback = old.get_model("llm", "LLMRequestLog"), old.get_model("llm", "UserFeedback")
        now = timezone.now()
        twice, once = Log.objects.create(model_name="m"), Log.objects.create(model_name="m")
        Feedback.objects.create(request=twice, rating="thumbs_up", comment="first", created_at=now - timedelta(hours=2))
        newest = Feedback.objects.create(request=twice, rating="thumbs_down", comment="newest", created_at=now)
        Feedback.objects.create(
            request=twice, rating="thumbs_up", comment="middle", created_at=now - timedelta(hours=1)
        )
        # Same time: the later row wins.
        Feedback.objects.create(request=once, rating="thumbs_up", comment="tie 1", created_at=now)
        tie = Feedback.objects.create(request=once, rating="thumbs_down", comment="tie 2", created_at=now)

        executor = MigrationExecutor(connection)
        executor.migrate([after])
        new = executor.loader.project_state([after]).apps.get_model("llm", "UserFeedback")
        assert sorted(new.objects.values_list("id", "comment", "rater")) == sorted(
            [(newest.id, "newest", ""), (tie.id, "tie 2", "")]
        )
    finally:
        MigrationExecutor(connection).migrate(latest)
