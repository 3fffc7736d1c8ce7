"""The feedback page's figures in one query (metrics.feedback_figures over dashboard.rated_feedback)
against plain Python over the ratings and their calls."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from llm import dashboard, metrics
from llm.models import UserFeedback
from tests.factories import make_feedback, make_logs

pytestmark = pytest.mark.django_db


def test_feedback_page_figures_equal_the_ratings_of_the_window():
    rng = random.Random(7)
    now = timezone.now()
    logs = make_logs(
        120,
        timestamp=lambda i: now - timedelta(hours=rng.uniform(0, 24 * 6)),
        model_name=lambda i: rng.choice(["model-a", "model-b", "model-c"]),
    )
    for log in logs:
        for rater in range(rng.randint(0, 2)):
            feedback = make_feedback(
                log, rng.choice([UserFeedback.Rating.THUMBS_UP, UserFeedback.Rating.THUMBS_DOWN]), rater=f"r{rater}"
            )
            UserFeedback.objects.filter(pk=feedback.pk).update(created_at=log.timestamp + timedelta(hours=1))
    ratings = list(UserFeedback.objects.select_related("request"))
    for model in ("", "model-b"):
        window = dashboard.TimeRange("custom", now - timedelta(days=3, hours=5), now - timedelta(hours=7), model)
        chosen = [
            rating
            for rating in ratings
            if window.start <= rating.request.timestamp < window.end
            and (not model or rating.request.model_name == model)
        ]
        assert chosen and len(chosen) < len(ratings)
        summary, by_day = metrics.feedback_figures(dashboard.rated_feedback(window))
        up = sum(rating.rating == UserFeedback.Rating.THUMBS_UP for rating in chosen)
        assert (summary["thumbs_up"], summary["thumbs_down"], summary["total"]) == (up, len(chosen) - up, len(chosen))
        assert summary["satisfaction_rate"] == pytest.approx(up * 100 / len(chosen))
        per_model = Counter((rating.request.model_name, rating.rating) for rating in chosen)
        assert {row["model"]: (row["thumbs_up"], row["thumbs_down"]) for row in summary["by_model"]} == {
            name: (per_model[(name, "thumbs_up")], per_model[(name, "thumbs_down")])
            for name in {name for name, _ in per_model}
        }
        per_day = Counter((timezone.localdate(rating.created_at).isoformat(), rating.rating) for rating in chosen)
        assert [(row["day"], row["thumbs_up"], row["thumbs_down"]) for row in by_day] == [
            (day, per_day[(day, "thumbs_up")], per_day[(day, "thumbs_down")])
            for day in sorted({day for day, _ in per_day})
        ]
        # The same as the API's two functions over `IN (the window's calls)`.
        rated_in = UserFeedback.objects.filter(request__in=window.logs().values("id"))
        assert summary == metrics.feedback_summary(rated_in)
        assert by_day == metrics.feedback_by_day(rated_in)
