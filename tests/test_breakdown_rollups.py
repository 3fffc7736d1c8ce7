"""The breakdown roll-ups (HourlyBreakdownRollup, DailyBreakdownRollup): breakdowns by source and by
a ROLLUP_TAG_KEYS tag, and figures under one `source=` or `tag=key:value` filter, read from them
equal a plain Python / NumPy recomputation over the raw rows (percentiles within the histograms'
bound), with late events and rows not rolled up yet; a key not in ROLLUP_TAG_KEYS is read raw; a
rebuild equals the incremental roll-ups; purge_logs keeps the history. The sessions list under one
such filter reads SessionGroupTotals."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import override_settings

from llm import metrics, retention, rollup_math, rollups
from llm.filters import filter_logs
from llm.models import DailyBreakdownRollup, HourlyBreakdownRollup, LLMRequestLog, MetricWatermark, SessionGroupTotals
from tests import test_session_summaries as summaries
from tests.breakdown_data import make_session_logs, pick
from tests.read_api_data import NOW
from tests.test_breakdowns import check_breakdown, figures_of

pytestmark = pytest.mark.django_db

START = NOW - timedelta(days=10, minutes=17)  # not on a whole hour: raw rows at the edge
WINDOW = {"start_date": START.isoformat(), "end_date": (NOW + timedelta(seconds=1)).isoformat()}


@pytest.fixture
def half_rolled(db) -> list[LLMRequestLog]:
    """Calls rolled up, then late ones (old timestamps) rolled up, then more not rolled up yet."""
    logs = make_session_logs(160, seed=11, days=3)
    rollups.roll_up()
    logs += make_session_logs(40, seed=12, days=3)  # timestamps over the last 3 days: late for most hours
    rollups.roll_up()
    logs += make_session_logs(40, seed=13, days=3)  # above the watermark
    return logs


def in_window(logs: list[LLMRequestLog], start=START) -> list[LLMRequestLog]:
    return [log for log in logs if start <= log.timestamp <= NOW]


def selection(params: dict) -> metrics.Selection:
    return metrics.Selection.of(filter_logs({**WINDOW, **params}))


# One data set per test function (a roll-up of scattered calls costs a second or two on SQLite):
# the cases of a kind are checked in a loop over it.


def test_breakdowns_by_source_and_tag_read_the_rollups_and_equal_a_recomputation(api_client, half_rolled):
    for by in ("source", "tag:feature", "tag:env"):
        assert metrics.breakdown_plan(selection({}), by) is not None
        for order_by in ("cost", "requests", "p95"):
            answer = api_client.get("/api/metrics/breakdown/", {**WINDOW, "by": by, "order_by": order_by, "limit": 2})
            assert answer.status_code == 200, answer.content
            assert answer.json()["percentiles"] == metrics.PERCENTILES_APPROXIMATE
            check_breakdown(answer.json(), in_window(half_rolled), by, order_by, 2)


NARROWED = [
    ({"tag": "feature:chat"}, {}, ("feature:chat",)),
    ({"tag": "env:staging", "model": "llama-3.1-8b-instant"}, {"model_name": "llama-3.1-8b-instant"}, ("env:staging",)),
    ({"source": "api"}, {"source": "api"}, ()),
    ({"source": "otlp", "status": "error"}, {"source": "otlp", "status": "error"}, ()),
]


def test_figures_under_one_source_or_tag_filter_read_the_rollups(api_client, half_rolled):
    for filters, fields, tags in NARROWED:
        assert metrics.breakdown_plan(selection(filters)) is not None, filters
        expected = pick(in_window(half_rolled), tags=tags, **fields)
        assert expected
        for by in ("model", "error_type"):
            answer = api_client.get("/api/metrics/breakdown/", {**WINDOW, **filters, "by": by, "limit": 2})
            assert answer.status_code == 200, answer.content
            assert answer.json()["percentiles"] == metrics.PERCENTILES_APPROXIMATE
            check_breakdown(answer.json(), expected, by, "cost", 2)
        overview = api_client.get("/api/metrics/overview/", {**WINDOW, **filters}).json()
        assert overview["percentiles"] == metrics.PERCENTILES_APPROXIMATE
        figures = figures_of(expected)
        assert overview["total_requests"] == figures["requests"]
        assert overview["failed_requests"] == figures["errors"]
        assert overview["total_tokens"] == figures["total_tokens"]
        assert overview["total_cost"] == pytest.approx(figures["cost"], abs=1e-9)
        assert overview["p95_latency_ms"] == pytest.approx(figures["p95"], rel=rollup_math.ERROR_BOUND)
        assert overview["unique_users"] == len({log.user_id for log in expected if log.user_id})


RAW = [
    ("tag:a.b__c", {}, ()),  # not in ROLLUP_TAG_KEYS
    ("model", {"tag": "a.b__c:odd key"}, ("a.b__c:odd key",)),
    ("model", {"tag": "feature"}, ("feature",)),  # any value: not one group
    ("model", {"tag": ["feature:chat", "env:prod"]}, ("feature:chat", "env:prod")),  # two groups
    ("tag:feature", {"tag": "env:prod"}, ("env:prod",)),  # grouped by one, narrowed by another
]


def test_what_the_breakdown_rollups_do_not_hold_is_read_raw(api_client, half_rolled):
    for by, filters, tags in RAW:
        assert metrics.breakdown_plan(selection(filters), None if by == "model" else by) is None, (by, filters)
        answer = api_client.get("/api/metrics/breakdown/", {**WINDOW, **filters, "by": by, "limit": 3})
        assert answer.status_code == 200, answer.content
        check_breakdown(answer.json(), pick(in_window(half_rolled), tags=tags), by, "cost", 3)


def breakdown_contents() -> dict:
    return {
        table.__name__: sorted(
            (
                str(getattr(row, period)),
                row.by,
                row.key,
                row.model_name,
                row.status,
                row.error_type,
                row.requests,
                row.prompt_tokens,
                row.completion_tokens,
                row.total_tokens,
                row.cost_units,
                round(row.latency_sum_ms, 6),
                row.ttft_count,
                bytes(row.latency_histogram),
            )
            for row in table.objects.all()
        )
        for table, period in ((HourlyBreakdownRollup, "hour"), (DailyBreakdownRollup, "day"))
    }


def test_rebuild_equals_the_incremental_rollups(half_rolled):
    rollups.roll_up()
    incremental = breakdown_contents()
    # Every call is in exactly one group of each `by`.
    per_by = defaultdict(int)
    for by, requests in HourlyBreakdownRollup.objects.values_list("by", "requests"):
        per_by[by] += requests
    assert dict(per_by) == {by: len(half_rolled) for by in ("source", "tag:feature", "tag:env")}
    call_command("rebuild_rollups", verbosity=0)
    assert breakdown_contents() == incremental
    call_command("rebuild_rollups", "--since", (NOW - timedelta(days=3)).date().isoformat(), verbosity=0)
    assert breakdown_contents() == incremental


def assert_same_groups(answer: dict, expected: dict) -> None:
    """The same groups and figures (sums added in another order: floats within rounding)."""
    assert [row["key"] for row in answer["groups"]] == [row["key"] for row in expected["groups"]]
    for row, before in zip(answer["groups"], expected["groups"], strict=True):
        for name, value in before.items():
            assert row[name] == (value if value is None or isinstance(value, str) else pytest.approx(value, rel=1e-12))


def test_purge_keeps_the_history(api_client, half_rolled):
    start = rollup_math.floor_hour(START)  # beyond retention only whole hours remain
    params = {"start_date": start.isoformat(), "end_date": WINDOW["end_date"], "by": "tag:feature", "limit": 10}
    before = api_client.get("/api/metrics/breakdown/", params).json()
    narrowed = {**params, "by": "model", "tag": "feature:chat"}
    before_narrowed = api_client.get("/api/metrics/breakdown/", narrowed).json()
    assert retention.purge(2, now=NOW).logs > 0
    assert_same_groups(api_client.get("/api/metrics/breakdown/", params).json(), before)
    assert_same_groups(api_client.get("/api/metrics/breakdown/", narrowed).json(), before_narrowed)
    check_breakdown(before, in_window(half_rolled, start), "tag:feature", "cost", 10)


def test_a_key_added_to_rollup_tag_keys_is_read_raw_until_a_rebuild(api_client, half_rolled):
    by = "tag:a.b__c"
    with override_settings(ROLLUP_TAG_KEYS=["feature", "env", "a.b__c"]):
        rollups.roll_up()  # adds the new calls' groups, but the older ones are missing
        assert metrics.breakdown_plan(selection({}), by) is None
        call_command("rebuild_rollups", verbosity=0)
        assert MetricWatermark.objects.get(name=rollups.ROLLUPS).breakdowns == dict.fromkeys(
            ["source", "tag:feature", "tag:env", by]
        )
        assert metrics.breakdown_plan(selection({}), by) is not None
        answer = api_client.get("/api/metrics/breakdown/", {**WINDOW, "by": by}).json()
        check_breakdown(answer, in_window(half_rolled), by, "cost", 10)
    # Dropped from the list: no longer kept up, so no longer read.
    rollups.roll_up()
    assert by not in MetricWatermark.objects.get(name=rollups.ROLLUPS).breakdowns
    assert metrics.breakdown_plan(selection({}), by) is None


def test_the_overview_and_the_breakdown_agree_under_a_tag_filter(api_client, half_rolled):
    """The breakdown read from the roll-ups sums to what the overview reads from the calls."""
    params = {**WINDOW, "tag": "feature:summarize"}
    overview = api_client.get("/api/metrics/overview/", params).json()
    answer = api_client.get("/api/metrics/breakdown/", {**params, "by": "model", "limit": 100}).json()
    assert sum(row["requests"] for row in answer["groups"]) == overview["total_requests"]
    assert sum(row["total_tokens"] for row in answer["groups"]) == overview["total_tokens"]
    assert sum(row["cost"] for row in answer["groups"]) == pytest.approx(overview["total_cost"], abs=1e-9)


# The sessions list under one source or tag value, from SessionGroupTotals (the calls of the
# summary tests: sessions grown by a later roll-up, sessions of two users, calls above the watermark).
calls = summaries.calls


@pytest.mark.parametrize("window", summaries.WINDOWS)
def test_sessions_under_one_source_or_tag_filter_read_the_group_summaries(calls, window):
    start, end = window
    for filters, fields, tags, (by, key) in [
        ({"tag": "feature:chat"}, {}, ("feature:chat",), ("tag:feature", "chat")),
        ({"tag": "env:prod"}, {}, ("env:prod",), ("tag:env", "prod")),
        ({"source": "proxy"}, {"source": "proxy"}, (), ("source", "proxy")),
    ]:
        selection = summaries.chosen(start, end, **filters)
        assert metrics.group_summaries_plan(selection) is not None
        answer = metrics.sessions(selection)
        assert answer.query.combinator == "union"  # the summaries answered
        expected = summaries.expected_sessions(summaries.in_window(pick(calls, tags=tags, **fields), start, end))
        rows = list(answer)
        assert len(rows) == len(expected) > 3
        assert {row["session_id"]: summaries.comparable(row) for row in rows} == {
            key: {"session_id": key, **summaries.comparable(value)} for key, value in expected.items()
        }
        by_cost = [row["session_id"] for row in metrics.sessions(selection, "cost")]
        assert by_cost == sorted(expected, key=lambda key: (-expected[key]["cost"], key))
        # Most came from the summaries: only sessions the edges cut were read raw.
        whole = SessionGroupTotals.objects.filter(by=by, key=key, first_call__gte=start, last_call__lt=end)
        assert whole.count() > len(expected) // 2
    # Two tags: not one group, read from the calls.
    assert metrics.group_summaries_plan(summaries.chosen(start, end, tag=["feature:chat", "env:prod"])) is None


def test_session_group_summaries_follow_rebuild_and_purge(calls):
    rollups.roll_up(limit=None)

    def contents() -> list[tuple]:
        return sorted(
            SessionGroupTotals.objects.values_list(
                "session_id", "by", "key", "requests", "cost", "first_call", "user_count"
            )
        )

    incremental = contents()
    assert {row[1] for row in incremental} == {"source", "tag:feature", "tag:env"}
    call_command("rebuild_rollups", verbosity=0)
    assert contents() == incremental
    # After a purge the sessions that had old calls are summed from what is left.
    retention.purge(3, now=NOW)
    left = LLMRequestLog.objects.all()
    start, end = summaries.WINDOWS[0]
    expected = summaries.expected_sessions([log for log in left if log.tags.get("feature") == "chat"])
    rows = list(metrics.sessions(summaries.chosen(start, end, tag="feature:chat")))
    assert {row["session_id"]: row["requests"] for row in rows} == {
        key: value["requests"] for key, value in expected.items()
    }
