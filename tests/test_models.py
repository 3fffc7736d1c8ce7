from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from llm.models import APIKey, LLMRequestLog, ModelPrice

pytestmark = pytest.mark.django_db

# Hand-computed: tokens × USD per million, from SPEC's price table.
COST_CASES = [
    ("llama-3.1-8b-instant", 1_000_000, 1_000_000, Decimal("0.13")),
    ("llama-3.1-8b-instant", 100, 50, Decimal("0.000009")),
    ("llama-3.3-70b-versatile", 2_000, 1_000, Decimal("0.00197")),
    ("openai/gpt-oss-120b", 10_000, 10_000, Decimal("0.0075")),
    ("openai/gpt-oss-20b", 1, 1, Decimal("0.000000375")),
    ("meta-llama/llama-4-scout-17b-16e-instruct", 500_000, 0, Decimal("0.055")),
    ("qwen/qwen3-32b", 0, 3_000, Decimal("0.00177")),
    ("not-a-priced-model", 5_000, 5_000, Decimal("0")),
]


@pytest.mark.parametrize(("model", "prompt_tokens", "completion_tokens", "cost"), COST_CASES)
def test_cost_matches_hand_computed_value(model, prompt_tokens, completion_tokens, cost):
    assert ModelPrice.cost_for(model, prompt_tokens, completion_tokens) == cost
    prices = ModelPrice.objects.price_table()
    assert ModelPrice.cost_for(model, prompt_tokens, completion_tokens, prices) == cost


def test_migration_seeds_every_groq_price():
    groq = ModelPrice.objects.filter(provider="groq")
    prices = {p.model_name: (p.input_per_million, p.output_per_million) for p in groq}
    assert prices == {
        "llama-3.1-8b-instant": (Decimal("0.05"), Decimal("0.08")),
        "llama-3.3-70b-versatile": (Decimal("0.59"), Decimal("0.79")),
        "openai/gpt-oss-120b": (Decimal("0.15"), Decimal("0.60")),
        "openai/gpt-oss-20b": (Decimal("0.075"), Decimal("0.30")),
        "meta-llama/llama-4-scout-17b-16e-instruct": (Decimal("0.11"), Decimal("0.34")),
        "qwen/qwen3-32b": (Decimal("0.29"), Decimal("0.59")),
    }


def test_record_derives_total_and_cost():
    log, created = LLMRequestLog.objects.record(
        model_name="llama-3.3-70b-versatile", prompt_tokens=2_000, completion_tokens=1_000, latency_ms=5
    )
    assert created
    log.refresh_from_db()
    assert log.total_tokens == 3_000
    assert log.cost_estimate == Decimal("0.00197")


def test_record_keeps_a_supplied_cost():
    log, _ = LLMRequestLog.objects.record(
        model_name="llama-3.3-70b-versatile", prompt_tokens=10, completion_tokens=10, cost_estimate=Decimal("1.5")
    )
    log.refresh_from_db()
    assert log.cost_estimate == Decimal("1.5")


def test_repeated_request_id_is_stored_once():
    request_id = uuid.uuid4()
    first, created_first = LLMRequestLog.objects.record(request_id=request_id, model_name="m", prompt_tokens=1)
    second, created_second = LLMRequestLog.objects.record(request_id=request_id, model_name="m", prompt_tokens=99)
    assert (created_first, created_second) == (True, False)
    assert second.pk == first.pk and second.prompt_tokens == 1
    assert LLMRequestLog.objects.filter(request_id=request_id).count() == 1


def test_record_many_skips_duplicates_within_and_across_batches():
    known = uuid.uuid4()
    LLMRequestLog.objects.record(request_id=known, model_name="m")
    fresh = uuid.uuid4()
    logs = [
        LLMRequestLog(request_id=known, model_name="m", cost_estimate=None),
        LLMRequestLog(request_id=fresh, model_name="qwen/qwen3-32b", prompt_tokens=1000, cost_estimate=None),
        LLMRequestLog(request_id=fresh, model_name="qwen/qwen3-32b", prompt_tokens=1000, cost_estimate=None),
    ]
    assert LLMRequestLog.objects.record_many(logs) == (1, 2)
    assert LLMRequestLog.objects.count() == 2
    assert LLMRequestLog.objects.get(request_id=fresh).cost_estimate == Decimal("0.00029")


def test_store_prompts_false_keeps_no_text_but_keeps_errors(settings):
    settings.STORE_PROMPTS = False
    log, _ = LLMRequestLog.objects.record(
        model_name="m", prompt_text="secret", response_text="answer", error_message="boom"
    )
    log.refresh_from_db()
    assert (log.prompt_text, log.response_text, log.error_message) == ("", "", "boom")


def test_long_text_is_truncated_with_a_marker(settings):
    settings.MAX_STORED_TEXT_CHARS = 50
    log, _ = LLMRequestLog.objects.record(model_name="m", prompt_text="x" * 500)
    log.refresh_from_db()
    assert len(log.prompt_text) == 50
    assert log.prompt_text.endswith("[truncated]")


def test_api_key_is_stored_hashed_and_can_be_revoked():
    api_key, raw_key = APIKey.generate("ci")
    assert raw_key.startswith("llmo_") and len(raw_key) > 40
    assert raw_key not in (api_key.key_hash, api_key.key_prefix)
    assert APIKey.authenticate(raw_key) == api_key
    assert APIKey.authenticate(raw_key + "x") is None
    api_key.revoke()
    assert APIKey.authenticate(raw_key) is None
