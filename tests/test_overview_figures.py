"""The overview page's cards (`/`): each card's value and its previous window's value equal the
plain-Python recomputation over the raw rows (counts, tokens and cost exactly, p95 within
rollup_math.ERROR_BOUND of NumPy's), with calls partly rolled up and partly not; and the page's
figures (metrics.overview_figures, no unique users) are overview()'s, key for key."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
import time_machine

from llm import metrics, rollup_math, rollups
from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 31, 10, 17, 23, tzinfo=UTC)
MODELS = ["model-a", "model-b"]
BOUND = rollup_math.ERROR_BOUND


def random_logs(count: int, seed: int) -> None:
    rng = random.Random(seed)
    failed = [rng.random() < 0.15 for _ in range(count)]
    make_logs(
        count,
        timestamp=lambda i: NOW - timedelta(seconds=rng.randint(1, 15 * 86400)),
        model_name=lambda i: rng.choice(MODELS),
        status=lambda i: "error" if failed[i] else "success",
        error_type=lambda i: "timeout" if failed[i] else "",
        prompt_tokens=lambda i: rng.randint(0, 2000),
        completion_tokens=lambda i: rng.randint(0, 800),
        latency_ms=lambda i: rng.lognormvariate(6, 0.8),
        cost_estimate=lambda i: Decimal(rng.randint(0, 5_000_000)) / 10**10,
        user_id=lambda i: rng.choice(["", "ann", "bob"]),
    )


@pytest.fixture
def calls() -> list[LLMRequestLog]:
    """Calls over 15 days, part rolled up, then more above the watermark."""
    random_logs(400, seed=7)
    rollups.roll_up()
    random_logs(120, seed=8)
    return list(LLMRequestLog.objects.all())


def expected(calls: list[LLMRequestLog], start: datetime, end: datetime, model: str) -> dict:
    rows = [log for log in calls if start <= log.timestamp < end and model in ("", log.model_name)]
    failed = sum(log.status == "error" for log in rows)
    latencies = [log.latency_ms for log in rows]
    return {
        "requests": len(rows),
        "error_rate": failed * 100.0 / len(rows) if rows else None,
        "total_tokens": sum(log.total_tokens for log in rows),
        "total_cost": float(sum((log.cost_estimate for log in rows), Decimal(0))),
        "p95_latency_ms": float(np.percentile(latencies, 95)) if latencies else None,
    }


def assert_card(found, wanted, key: str) -> None:
    if key == "p95_latency_ms" and wanted is not None:
        assert found == pytest.approx(wanted, rel=BOUND), key
    elif isinstance(wanted, float):
        assert found == pytest.approx(wanted, rel=1e-12), key
    else:
        assert found == wanted, key


# One set of calls for every case (rolling them up is the test's cost).
CARD_CASES = [("24h", ""), ("24h", "model-b"), ("7d", ""), ("7d", "model-b")]


def test_cards_and_their_previous_window_equal_the_raw_rows(client, admin_user, calls):
    client.force_login(admin_user)
    for key, model in CARD_CASES:
        with time_machine.travel(NOW, tick=False):
            response = client.get("/", {"range": key, **({"model": model} if model else {})})
        check_cards(response, calls, key, model)


def check_cards(response, calls: list[LLMRequestLog], key: str, model: str) -> None:
    assert response.status_code == 200
    length = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}[key]
    current = expected(calls, NOW - length, NOW, model)
    previous = expected(calls, NOW - 2 * length, NOW - length, model)
    assert current["requests"] and previous["requests"]  # both windows have calls: a change to show
    cards = {card["key"]: card for card in response.context["cards"]}
    for name in ("requests", "error_rate", "p95_latency_ms", "total_tokens", "total_cost"):
        assert_card(cards[name]["value"], current[name], name)
        assert_card(cards[name]["previous"], previous[name], name)


SPANS = [(timedelta(hours=1), "minute"), (timedelta(hours=30), "hour"), (timedelta(days=9), "day")]


def test_the_pages_figures_are_overviews_without_unique_users(calls):
    for length, period in SPANS:
        for model in ("", "model-a"):
            check_figures(length, period, model)


def check_figures(length: timedelta, period: str, model: str) -> None:
    start, end = NOW - length - timedelta(minutes=13), NOW - timedelta(minutes=2)
    rows = LLMRequestLog.objects.in_window(start, end).for_model(model)
    alone = metrics.Selection(rows, start, end, model, rollups_apply=True)
    shared = metrics.share(alone, period)
    assert (shared.shared is None) == (period == "minute")
    wanted = metrics.overview(alone)
    assert wanted.pop("unique_users") == len({log.user_id for log in rows if log.user_id})
    for selection in (alone, shared):
        found = metrics.overview_figures(selection)
        assert found.keys() == wanted.keys()
        for name, value in wanted.items():
            assert found[name] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), name
