"""Prices: name patterns (longest wins, an exact name beats any), effective dates (a call is priced at
the price in effect at its timestamp, also when reported late), the cached-input rate, and the price
table read once per write. Costs are checked against hand-computed figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from llm import models
from llm.models import LLMRequestLog, ModelPrice, PriceTable

pytestmark = pytest.mark.django_db

CHANGE = datetime(2025, 6, 1, tzinfo=UTC)


@pytest.fixture
def prices():
    ModelPrice.objects.all().delete()
    ModelPrice.objects.bulk_create(
        [
            ModelPrice(provider="openai", model_name="acme*", input_per_million=1, output_per_million=2),
            ModelPrice(provider="openai", model_name="acme-mini*", input_per_million=3, output_per_million=4),
            ModelPrice(provider="openai", model_name="acme-mini", input_per_million=5, output_per_million=6),
            ModelPrice(provider="openai", model_name="*-vision", input_per_million=7, output_per_million=8),
            # A price change on CHANGE: 10/20 before, 30/40 after.
            ModelPrice(provider="groq", model_name="moving", input_per_million=10, output_per_million=20),
            ModelPrice(
                provider="groq", model_name="moving", input_per_million=30, output_per_million=40, effective_from=CHANGE
            ),
            ModelPrice(
                provider="openai",
                model_name="cached",
                input_per_million=Decimal("2.50"),
                output_per_million=10,
                cached_input_per_million=Decimal("1.25"),
            ),
            ModelPrice(provider="openai", model_name="uncached", input_per_million=2, output_per_million=10),
        ]
    )


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("acme-2025", "acme*"),  # the only matching pattern
        ("acme-mini-2025", "acme-mini*"),  # the longer of two matching patterns
        ("acme-mini", "acme-mini"),  # an exact name beats every pattern
        ("acme", "acme*"),  # * matches nothing too
        ("acme-vision", "*-vision"),  # matches acme* (5 characters) and *-vision (8): the longer wins
        ("other-vision", "*-vision"),
        ("not-acme", None),
    ],
)
def test_a_pattern_prices_the_names_it_matches_and_the_longest_wins(prices, model, expected):
    price = ModelPrice.objects.price_table().lookup(model)
    assert (price.model_name if price else None) == expected


@pytest.mark.parametrize(
    ("model", "prompt_tokens", "completion_tokens", "cost"),
    [
        # By hand: tokens × USD per million.
        ("acme-2025-01-01", 1_000_000, 500_000, Decimal("2")),  # 1 + 0.5 × 2
        ("acme-mini-x", 200_000, 100_000, Decimal("1")),  # 0.2 × 3 + 0.1 × 4
        ("acme-mini", 100_000, 100_000, Decimal("1.1")),  # 0.1 × 5 + 0.1 × 6
    ],
)
def test_events_are_priced_by_pattern(prices, api_client, model, prompt_tokens, completion_tokens, cost):
    event = {"model": model, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    assert api_client.post("/api/events/", event, format="json").status_code in (200, 201)
    assert LLMRequestLog.objects.get().cost_estimate == cost


def test_a_price_change_does_not_reprice_earlier_calls_even_reported_late(prices, api_client):
    before, after = CHANGE - timedelta(seconds=1), CHANGE + timedelta(days=1)
    events = [
        {"model": "moving", "prompt_tokens": 1_000_000, "completion_tokens": 1_000_000, "timestamp": moment.isoformat()}
        for moment in (before, CHANGE, after)
    ]
    now = {"model": "moving", "prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}
    # Sent after the change, in one batch: each is priced at its own time.
    assert api_client.post("/api/events/", {"events": [*events, now]}, format="json").status_code in (200, 201)
    costs = list(LLMRequestLog.objects.order_by("timestamp").values_list("cost_estimate", flat=True))
    assert costs == [Decimal(30), Decimal(70), Decimal(70), Decimal(70)]  # 10 + 20, then 30 + 40


def test_a_call_before_every_effective_date_has_no_price(prices):
    ModelPrice.objects.filter(model_name="moving", effective_from__lt=CHANGE).delete()
    log, _ = LLMRequestLog.objects.record(
        model_name="moving", prompt_tokens=10, completion_tokens=10, timestamp=CHANGE - timedelta(days=1)
    )
    assert log.cost_estimate == 0


def test_a_providers_own_price_wins_when_two_price_one_name(prices):
    ModelPrice.objects.create(provider="cerebras", model_name="acme-mini", input_per_million=50, output_per_million=50)
    table = ModelPrice.objects.price_table()
    assert table.lookup("acme-mini", "cerebras").input_per_million == 50
    assert table.lookup("acme-mini", "openai").input_per_million == 5
    assert table.providers("acme-mini") == ["cerebras", "openai"]


@pytest.mark.parametrize(
    ("model", "cost"),
    [
        # 1,000,000 prompt tokens of which 800,000 cached, and 100,000 completion tokens, by hand:
        ("cached", Decimal("2.5")),  # 0.2 × 2.50 + 0.8 × 1.25 + 0.1 × 10
        ("uncached", Decimal("3")),  # no cached rate: 1 × 2 + 0.1 × 10
    ],
)
def test_cached_tokens_are_priced_at_the_cached_rate_when_one_is_set(prices, api_client, model, cost):
    event = {"model": model, "prompt_tokens": 1_000_000, "completion_tokens": 100_000, "cached_tokens": 800_000}
    assert api_client.post("/api/events/", event, format="json").status_code in (200, 201)
    row = LLMRequestLog.objects.get()
    assert (row.cached_tokens, row.cost_estimate) == (800_000, cost)
    listed = api_client.get(f"/api/logs/{row.request_id}/").json()
    assert listed["cached_tokens"] == 800_000 and listed["tokens_estimated"] is False


def test_more_cached_than_prompt_tokens_is_refused_naming_the_field(api_client):
    event = {"model": "m", "prompt_tokens": 10, "cached_tokens": 11}
    response = api_client.post("/api/events/", event, format="json")
    assert response.status_code == 400
    assert "cached_tokens" in str(response.json())


def test_record_many_reads_the_price_table_once_whatever_the_rows(prices, settings):
    models.forget_prices()
    base = timezone.now()
    logs = [
        LLMRequestLog(
            model_name=f"acme-{n % 7}", prompt_tokens=n, completion_tokens=n, timestamp=base, cost_estimate=None
        )
        for n in range(200)
    ]
    with CaptureQueriesContext(connection) as queries:
        LLMRequestLog.objects.record_many(logs)
    price_reads = [query for query in queries if ModelPrice._meta.db_table in query["sql"]]
    assert len(price_reads) == 1
    # By hand at acme*'s 1/2 USD per million: n + 2n micro-dollars.
    assert [log.cost_estimate for log in logs] == [Decimal(3 * n) / 1_000_000 for n in range(200)]


def test_the_pattern_memory_is_bounded():
    table = PriceTable([ModelPrice(model_name="a*", input_per_million=1, output_per_million=1)])
    for n in range(models.MATCH_MEMORY_NAMES + 5):
        assert f"a{n}" in table
    assert len(table._matched) <= models.MATCH_MEMORY_NAMES


def test_admin_adds_a_price_change(admin_client, prices):
    response = admin_client.post(
        "/admin/llm/modelprice/add/",
        {
            "provider": "groq",
            "model_name": "moving",
            "input_per_million": "50",
            "output_per_million": "60",
            "cached_input_per_million": "",
            "effective_from_0": "2026-01-01",
            "effective_from_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    table = ModelPrice.objects.price_table()
    assert table.lookup("moving", at=datetime(2026, 2, 1, tzinfo=UTC)).input_per_million == 50
    assert table.lookup("moving", at=datetime(2025, 12, 1, tzinfo=UTC)).input_per_million == 30
    # The same provider, name and date twice is refused, not a 500.
    again = admin_client.post(
        "/admin/llm/modelprice/add/",
        {
            "provider": "groq",
            "model_name": "moving",
            "input_per_million": "1",
            "output_per_million": "1",
            "effective_from_0": "2026-01-01",
            "effective_from_1": "00:00:00",
        },
    )
    assert again.status_code == 200 and "already exists" in again.content.decode()
