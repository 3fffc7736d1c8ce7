"""GET /api/metrics/breakdown/: every figure of every group, and of `other`, against a plain
Python / NumPy / statistics recomputation over the same rows, for each `by`, with and without
filters, for each `order_by`."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import timedelta

import numpy as np
import pytest

from llm import metrics, rollup_math
from tests.breakdown_data import group_key, make_session_logs, pick
from tests.read_api_data import NOW

pytestmark = pytest.mark.django_db

WINDOW = {"start_date": (NOW - timedelta(days=10)).isoformat(), "end_date": (NOW + timedelta(seconds=1)).isoformat()}
BYS = ["model", "user", "session", "source", "error_type", "tag:feature", "tag:a.b__c"]
ORDER_FIGURE = {"cost": "cost", "requests": "requests", "tokens": "total_tokens", "errors": "errors", "p95": "p95"}


@pytest.fixture
def logs(db):
    return make_session_logs()


def figures_of(rows) -> dict:
    """A group's figures, recomputed in Python."""
    latencies = [log.latency_ms for log in rows]
    errors = sum(log.is_error for log in rows)
    cost = float(sum(log.cost_estimate for log in rows))
    tokens = sum(log.total_tokens for log in rows)
    return {
        "requests": len(rows),
        "errors": errors,
        "error_rate": 100 * errors / len(rows),
        "prompt_tokens": sum(log.prompt_tokens for log in rows),
        "completion_tokens": sum(log.completion_tokens for log in rows),
        "total_tokens": tokens,
        "cost": cost,
        "cost_per_1k_tokens": cost * 1000 / tokens if tokens else None,
        "avg_latency_ms": statistics.fmean(latencies),
        "p50": float(np.percentile(latencies, 50)),
        "p95": float(np.percentile(latencies, 95)),
    }


def assert_figures(answer_row: dict, expected: dict, relative: float) -> None:
    for name in ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens"):
        assert answer_row[name] == expected[name], name
    assert answer_row["error_rate"] == pytest.approx(expected["error_rate"])
    assert answer_row["cost"] == pytest.approx(expected["cost"], abs=1e-9)
    if expected["cost_per_1k_tokens"] is None:
        assert answer_row["cost_per_1k_tokens"] is None
    else:
        assert answer_row["cost_per_1k_tokens"] == pytest.approx(expected["cost_per_1k_tokens"], rel=1e-9)
    assert answer_row["avg_latency_ms"] == pytest.approx(expected["avg_latency_ms"], rel=1e-9)
    assert answer_row["p50_latency_ms"] == pytest.approx(expected["p50"], rel=relative)
    assert answer_row["p95_latency_ms"] == pytest.approx(expected["p95"], rel=relative)


def check_breakdown(answer: dict, rows: list, by: str, order_by: str, limit: int) -> None:
    relative = 1e-9 if answer["percentiles"] == metrics.PERCENTILES_EXACT else rollup_math.ERROR_BOUND
    groups = defaultdict(list)
    for log in rows:
        groups[group_key(log, by)].append(log)
    expected = {key: figures_of(members) for key, members in groups.items()}
    shown = [row["key"] for row in answer["groups"]]
    assert len(shown) == min(limit, len(groups)) and len(set(shown)) == len(shown)
    for row in answer["groups"]:
        assert_figures(row, expected[row["key"]], relative)
    # Largest first; nothing left out is larger than the smallest shown (ties may go either way).
    figure = ORDER_FIGURE[order_by]
    values = [expected[key][figure] for key in shown]
    assert values == sorted(values, reverse=True) or relative != 1e-9
    left_out = [key for key in groups if key not in shown]
    if relative == 1e-9:
        assert all(expected[key][figure] <= values[-1] for key in left_out)
    if not left_out:
        assert answer["other"] is None
        return
    rest = [log for key in left_out for log in groups[key]]
    assert answer["other"]["groups"] == len(left_out)
    assert answer["other"]["key"] is None
    assert_figures(answer["other"], figures_of(rest), relative)
    # Every call is in one group or in `other`.
    assert sum(row["requests"] for row in answer["groups"]) + answer["other"]["requests"] == len(rows)


FILTERS = {
    "all": {},
    "model": {"model": "llama-3.1-8b-instant"},
    "tag": {"tag": "env:prod"},
    "source+status": {"source": "api", "status": "error"},
}
# Every `by` without a filter and with a tag filter; the other filters with a few.
CASES = [
    *((by, name) for by in BYS for name in ("all", "tag")),
    *((by, name) for by in ("user", "session", "tag:feature") for name in ("model", "source+status")),
]


@pytest.mark.parametrize(("by", "filter_name"), CASES)
def test_each_group_and_other_equal_a_recomputation(api_client, logs, by, filter_name):
    filters = FILTERS[filter_name]
    response = api_client.get("/api/metrics/breakdown/", {**WINDOW, **filters, "by": by, "limit": 3})
    assert response.status_code == 200, response.content
    answer = response.json()
    assert (answer["by"], answer["order_by"], answer["limit"]) == (by, "cost", 3)
    expected_rows = pick(logs, tags=tuple(filter(None, [filters.get("tag")])), **_fields(filters))
    assert expected_rows
    check_breakdown(answer, expected_rows, by, "cost", 3)


def _fields(filters: dict) -> dict:
    names = {"model": "model_name", "source": "source", "status": "status"}
    return {names[name]: value for name, value in filters.items() if name in names}


@pytest.mark.parametrize("order_by", list(ORDER_FIGURE))
@pytest.mark.parametrize("by", ["user", "tag:env"])
def test_each_order(api_client, logs, by, order_by):
    answer = api_client.get("/api/metrics/breakdown/", {**WINDOW, "by": by, "order_by": order_by, "limit": 2}).json()
    check_breakdown(answer, logs, by, order_by, 2)


# Two hours ending at NOW: the breakdown sorts the calls for exact percentiles.
SHORT_WINDOW = {"start_date": (NOW - timedelta(hours=2)).isoformat(), "end_date": NOW.isoformat()}


@pytest.mark.parametrize(("by", "order_by"), [(by, "cost") for by in BYS] + [("user", "p95"), ("session", "errors")])
def test_a_short_window_is_exact(api_client, db, by, order_by):
    logs = make_session_logs(150, seed=5, days=5400 / 86400)  # all in the last 90 minutes
    answer = api_client.get("/api/metrics/breakdown/", {**SHORT_WINDOW, "by": by, "order_by": order_by, "limit": 3})
    assert answer.json()["percentiles"] == metrics.PERCENTILES_EXACT
    check_breakdown(answer.json(), logs, by, order_by, 3)


def test_long_windows_say_their_percentiles_are_approximate(api_client, logs):
    for by in ("model", "user", "tag:feature"):
        answer = api_client.get("/api/metrics/breakdown/", {**WINDOW, "by": by}).json()
        assert answer["percentiles"] == metrics.PERCENTILES_APPROXIMATE


def test_all_groups_shown_means_no_other(api_client, logs):
    answer = api_client.get("/api/metrics/breakdown/", {**WINDOW, "by": "source", "limit": 100}).json()
    assert answer["other"] is None
    assert {row["key"] for row in answer["groups"]} == {"proxy", "api", "otlp"}


def test_an_empty_window_has_no_groups(api_client, logs):
    answer = api_client.get(
        "/api/metrics/breakdown/", {"start_date": "2001-01-01", "end_date": "2001-01-02", "by": "user"}
    ).json()
    assert answer["groups"] == [] and answer["other"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"by": "colour"}, "by"),
        ({"by": "tag:"}, "by"),
        ({"by": "tag:a\x00b"}, "by"),
        ({"by": "tag:" + "k" * 101}, "by"),
        ({"by": "user", "order_by": "latency"}, "order_by"),
        ({"by": "user", "limit": "0"}, "limit"),
        ({"by": "user", "limit": "101"}, "limit"),
        ({"by": "user", "limit": "1.5"}, "limit"),
        ({"by": "user", "limit": "99999999999999999999"}, "limit"),
        ({"by": "user", "tag": "feature:"}, "tag"),
    ],
)
def test_bad_choices_are_a_400_naming_the_parameter(api_client, db, params, field):
    response = api_client.get("/api/metrics/breakdown/", params)
    assert response.status_code == 400
    assert field in response.json()["fields"], response.json()


def test_the_pages_and_the_api_call_the_same_function(logs):
    """metrics.breakdown over a bare queryset (what a page passes when it narrows the rows)."""
    from llm.models import LLMRequestLog

    answer = metrics.breakdown(LLMRequestLog.objects.filter(user_id="u-2"), "tag:feature", "requests", 2)
    assert answer["percentiles"] == metrics.PERCENTILES_APPROXIMATE  # no window: not known to be short
    check_breakdown(answer, pick(logs, user_id="u-2"), "tag:feature", "requests", 2)
