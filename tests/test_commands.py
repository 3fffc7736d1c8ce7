from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db.models import Count, F, Sum

from llm.models import AlertLog, APIKey, LLMRequestLog, ModelPrice, UserFeedback
from llm.privacy import TRUNCATION_MARKER

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def snapshot() -> list[tuple]:
    rows = LLMRequestLog.objects.order_by("request_id").values_list(
        "request_id", "model_name", "user_id", "status", "error_type", "prompt_tokens",
        "completion_tokens", "latency_ms", "cost_estimate", "timestamp",
    )  # fmt: skip
    rows = list(rows)
    latest = max(row[-1] for row in rows)
    # Timestamps are relative to the time of the run, so compare offsets.
    return [(*row[:-1], latest - row[-1]) for row in rows]


def test_generate_sample_data_is_deterministic_with_a_seed():
    run("generate_sample_data", "--count", "400", "--seed", "7", "--days", "3")
    first = snapshot()
    first_feedback = UserFeedback.objects.count()
    run("generate_sample_data", "--count", "400", "--seed", "7", "--days", "3", "--clear")
    assert snapshot() == first
    assert UserFeedback.objects.count() == first_feedback
    run("generate_sample_data", "--count", "400", "--seed", "8", "--days", "3", "--clear")
    assert snapshot() != first


def test_generate_sample_data_is_realistic():
    output = run("generate_sample_data", "--count", "3000", "--seed", "1", "--days", "7")
    assert "Created 3000 calls" in output
    logs = LLMRequestLog.objects.all()
    assert logs.count() == 3000
    assert logs.values("model_name").distinct().count() >= 5
    assert logs.exclude(user_id="").values("user_id").distinct().count() >= 24
    error_share = logs.failed().count() / 3000
    assert 0.02 <= error_share <= 0.08
    assert logs.failed().values("error_type").distinct().count() >= 4
    assert not logs.failed().filter(error_type="").exists()
    totals = logs.aggregate(cost=Sum("cost_estimate"), tokens=Sum("total_tokens"))
    assert totals["cost"] > 0 and totals["tokens"] > 0
    by_status = dict(logs.values_list("status").annotate(n=Count("id")))
    assert set(by_status) == {"success", "error"}
    assert UserFeedback.objects.exists()
    assert AlertLog.objects.exists()
    # Daily rhythm: working hours are busier than the small hours.
    busy = logs.filter(timestamp__hour__in=[10, 11, 14]).count()
    quiet = logs.filter(timestamp__hour__in=[2, 3, 4]).count()
    assert busy > 3 * quiet


def test_generate_sample_data_if_empty_adds_nothing_twice():
    run("generate_sample_data", "--count", "50", "--seed", "1", "--days", "1", "--if-empty")
    output = run("generate_sample_data", "--count", "50", "--seed", "1", "--days", "1", "--if-empty")
    assert "already exist" in output
    assert LLMRequestLog.objects.count() == 50


def test_generate_sample_data_follows_the_privacy_settings(settings):
    # Sample data is written through the same path as real calls, so every privacy rule applies.
    settings.STORE_PROMPTS = False
    run("generate_sample_data", "--count", "300", "--seed", "3", "--days", "2")
    logs = LLMRequestLog.objects.all()
    assert logs.count() == 300
    assert not logs.exclude(prompt_text="").exists() and not logs.exclude(response_text="").exists()
    # Operators need error messages even when prompts are not kept.
    assert logs.failed().exists() and not logs.failed().filter(error_message="").exists()

    settings.STORE_PROMPTS = True
    settings.MAX_STORED_TEXT_CHARS = 15  # every sample prompt is longer
    run("generate_sample_data", "--count", "300", "--seed", "3", "--days", "2", "--clear")
    prompts = set(LLMRequestLog.objects.values_list("prompt_text", flat=True))
    assert prompts and all(len(text) == 15 and text.endswith(TRUNCATION_MARKER) for text in prompts)


def test_generate_sample_data_derives_totals_and_cost_from_model_prices():
    ModelPrice.objects.update_or_create(
        model_name="llama-3.1-8b-instant",
        defaults={"input_per_million": Decimal(100_000), "output_per_million": Decimal(200_000)},
    )
    run("generate_sample_data", "--count", "400", "--seed", "5", "--days", "2")
    logs = LLMRequestLog.objects.all()
    assert not logs.exclude(total_tokens=F("prompt_tokens") + F("completion_tokens")).exists()
    rows = logs.filter(model_name="llama-3.1-8b-instant").values_list(
        "prompt_tokens", "completion_tokens", "cost_estimate"
    )
    assert len(rows) > 50
    # Ten cents a token in, twenty out: the price table, not a figure of the command's own.
    assert all(cost == Decimal("0.1") * prompt + Decimal("0.2") * completion for prompt, completion, cost in rows)


def test_generate_sample_data_with_a_seed_already_used_adds_no_duplicates():
    run("generate_sample_data", "--count", "200", "--seed", "9", "--days", "1")
    calls, feedback = LLMRequestLog.objects.count(), UserFeedback.objects.count()
    output = run("generate_sample_data", "--count", "200", "--seed", "9", "--days", "1")
    assert "Created 0 calls, 0 feedback entries" in output
    assert (LLMRequestLog.objects.count(), UserFeedback.objects.count()) == (calls, feedback)


def test_create_api_key_prints_a_working_key():
    raw_key = run("create_api_key", "billing").strip()
    assert APIKey.authenticate(raw_key).name == "billing"


def test_ensure_admin_creates_the_admin_once(monkeypatch, django_user_model, tmp_path):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "correct horse battery")
    assert "Created admin login" in run("ensure_admin")
    assert "Admin login" in run("ensure_admin")
    admin = django_user_model.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("correct horse battery")
    assert django_user_model.objects.count() == 1
