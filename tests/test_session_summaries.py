"""The sessions and users lists from the summaries (SessionTotals, SessionUser and the user
totals' columns): every row equals a plain-Python recomputation over the window's calls, with
windows whose edges cut sessions, calls above the roll-up watermark, sessions of two users and
several models, incremental roll-ups against a rebuild, and purge_logs."""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import pytest

from llm import metrics, retention, rollups
from llm.filters import filter_logs
from llm.models import DailyUserTotals, HourlyUserTotals, LLMRequestLog, MetricWatermark, SessionTotals, SessionUser
from tests.breakdown_data import make_session_logs
from tests.factories import build_log
from tests.read_api_data import NOW
from tests.test_breakdowns import check_breakdown

pytestmark = pytest.mark.django_db

# Windows of more than two hours (the summaries answer): one holding every call, and ones whose
# edges fall inside sessions.
WINDOWS = [
    (NOW - timedelta(days=10), NOW + timedelta(hours=3)),
    (NOW - timedelta(days=3, minutes=17), NOW - timedelta(days=1, minutes=-7)),
    (NOW - timedelta(days=5, hours=2, minutes=3), NOW - timedelta(hours=1, minutes=31)),
]


def extra_call(session_id: str, user_id: str, minutes: float, model: str = "llama-3.1-8b-instant") -> LLMRequestLog:
    return build_log(
        request_id=uuid.uuid4(),
        timestamp=NOW - timedelta(minutes=minutes),
        model_name=model,
        user_id=user_id,
        session_id=session_id,
        prompt_tokens=int(minutes) % 97,
        completion_tokens=int(minutes) % 13,
        latency_ms=100 + minutes,
        cost_estimate=Decimal(int(minutes * 1000)) / Decimal(10**10),
        status=LLMRequestLog.Status.ERROR if int(minutes) % 3 == 0 else LLMRequestLog.Status.SUCCESS,
        error_type="timeout" if int(minutes) % 3 == 0 else "",
    )


@pytest.fixture(scope="module")
def calls(module_transaction, django_db_blocker) -> list[LLMRequestLog]:
    """Two roll-ups (the second adds calls to sessions the first summed), then calls above the
    watermark: in a summed session, in a new session and a session of two users across a day."""
    with django_db_blocker.unblock():  # written once for the module: tests/conftest.py's module_transaction
        MetricWatermark.objects.get_or_create(name=rollups.SESSIONS_READY)
        logs = make_session_logs(160, seed=5, days=6)
        rollups.roll_up(limit=None)
        shared = [
            extra_call("s-two", "u-1", 60 * 30),
            extra_call("s-two", "u-2", 60 * 20, "openai/gpt-oss-20b"),
            extra_call("s-two", "u-2", 60 * 2),
        ]
        later = [extra_call(logs[3].session_id, logs[3].user_id, 60 * 24 * 2.5), *shared]
        later += make_session_logs(40, seed=6, days=4)  # their ids s-001.. again: sessions grow
        LLMRequestLog.objects.bulk_create(later[:4])
        rollups.roll_up(limit=None)
        above = [
            extra_call(logs[0].session_id, logs[0].user_id, 90),
            extra_call("s-new", "u-4", 200),
            extra_call("s-two", "u-3", 150, "openai/gpt-oss-120b"),
        ]
        LLMRequestLog.objects.bulk_create(above)
        return [*logs, *later, *above]


def in_window(logs: list[LLMRequestLog], start, end) -> list[LLMRequestLog]:
    return [log for log in logs if start <= log.timestamp < end]


def read(selection: metrics.Selection, kind: str, order_by: str) -> list[dict]:
    return list(metrics.sessions(selection, order_by) if kind == "sessions" else metrics.users(selection, order_by))


def chosen(start, end, **params) -> metrics.Selection:
    return metrics.Selection.of(filter_logs({"start_date": start.isoformat(), "end_date": end.isoformat(), **params}))


def expected_sessions(logs: list[LLMRequestLog]) -> dict[str, dict]:
    grouped = defaultdict(list)
    for log in logs:
        if log.session_id:
            grouped[log.session_id].append(log)
    return {key: usage(members) | shape_session(members) for key, members in grouped.items()}


def usage(members: list[LLMRequestLog]) -> dict:
    return {
        "requests": len(members),
        "errors": sum(log.is_error for log in members),
        "prompt_tokens": sum(log.prompt_tokens for log in members),
        "completion_tokens": sum(log.completion_tokens for log in members),
        "total_tokens": sum(log.total_tokens for log in members),
        "cost": sum(log.cost_estimate for log in members),
    }


def shape_session(members: list[LLMRequestLog]) -> dict:
    users = {log.user_id for log in members if log.user_id}
    return {
        "first_call": min(log.timestamp for log in members),
        "last_call": max(log.timestamp for log in members),
        "users": len(users),
        "shown_user": max(log.user_id for log in members),
        "models": len({log.model_name for log in members}),
        "shown_model": max(log.model_name for log in members),
    }


def expected_users(logs: list[LLMRequestLog]) -> dict[str, dict]:
    grouped = defaultdict(list)
    for log in logs:
        if log.user_id:
            grouped[log.user_id].append(log)
    return {
        key: usage(members)
        | {
            "sessions": len({log.session_id for log in members if log.session_id}),
            "first_seen": min(log.timestamp for log in members),
            "last_seen": max(log.timestamp for log in members),
        }
        for key, members in grouped.items()
    }


def comparable(row: dict) -> dict:
    return {**row, "cost": round(Decimal(str(row["cost"])), 10)}


def test_sessions_from_the_summaries_equal_the_calls(calls, subtests):
    for window in WINDOWS:
        with subtests.test(window=window):
            check_sessions_from_the_summaries(calls, window)


def check_sessions_from_the_summaries(calls, window):
    start, end = window
    selection = chosen(start, end)
    assert metrics.summaries_plan(selection) is not None
    answer = metrics.sessions(selection)
    assert answer.query.combinator == "union"  # the summaries answered
    rows = list(answer)
    expected = expected_sessions(in_window(calls, start, end))
    assert len(rows) == len(expected) > 5
    assert {row["session_id"]: comparable(row) for row in rows} == {
        key: {"session_id": key, **comparable(value)} for key, value in expected.items()
    }
    assert [row["last_call"] for row in rows] == sorted((value["last_call"] for value in expected.values()), reverse=1)
    by_cost = read(selection, "sessions", "cost")
    order = sorted(expected, key=lambda key: (-expected[key]["cost"], key))
    assert [row["session_id"] for row in by_cost] == order
    # The summaries were used for most of them: only sessions the edges cut were read raw.
    whole = SessionTotals.objects.filter(first_call__gte=start, last_call__lt=end).count()
    assert whole > len(expected) // 2


def test_users_from_the_summaries_equal_the_calls(calls, subtests):
    for window, order_by in itertools.product(WINDOWS, ["cost", "requests", "last_seen"]):
        with subtests.test(window=window, order_by=order_by):
            check_users_from_the_summaries(calls, window, order_by)


def check_users_from_the_summaries(calls, window, order_by):
    start, end = window
    selection = chosen(start, end)
    rows = metrics.users(selection, order_by)
    assert isinstance(rows, metrics.Rows)
    expected = expected_users(in_window(calls, start, end))
    assert {row["user_id"]: comparable(row) for row in rows} == {
        key: {"user_id": key, **comparable(value)} for key, value in expected.items()
    }
    field = {"cost": "cost", "requests": "requests", "last_seen": "last_seen"}[order_by]
    assert [row["user_id"] for row in rows] == sorted(expected, key=lambda key: (_negate(expected[key][field]), key))


def _negate(value):
    return -value.timestamp() if hasattr(value, "timestamp") else -value


def test_the_api_and_the_page_answer_the_summed_rows(api_client, client, admin_user, calls):
    start, end = WINDOWS[1]
    params = {"start_date": start.isoformat(), "end_date": end.isoformat(), "page_size": 500}
    window_calls = in_window(calls, start, end)
    sessions = api_client.get("/api/sessions/", {**params, "order_by": "cost"}).json()
    expected = expected_sessions(window_calls)
    assert sessions["count"] == len(expected)
    assert {row["session_id"]: (row["requests"], row["users"], row["model"]) for row in sessions["results"]} == {
        key: (value["requests"], value["users"], value["shown_model"]) for key, value in expected.items()
    }
    users = api_client.get("/api/users/", {**params, "order_by": "requests"}).json()
    expected_rows = expected_users(window_calls)
    assert users["count"] == len(expected_rows)
    assert {row["user_id"]: (row["requests"], row["sessions"], row["cost"]) for row in users["results"]} == {
        key: (value["requests"], value["sessions"], pytest.approx(float(value["cost"]), abs=1e-9))
        for key, value in expected_rows.items()
    }
    client.force_login(admin_user)
    page = client.get("/sessions/", {"range": "custom", **params})
    assert page.status_code == 200
    top = max(expected, key=lambda key: expected[key]["last_call"])
    assert f"/sessions/{top}/" in page.content.decode()


def plain(row: tuple) -> tuple:
    """A stored row comparable across the order of additions (float latency sums) and drivers."""
    return tuple(
        bytes(value) if isinstance(value, memoryview) else round(value, 6) if isinstance(value, float) else value
        for value in row
    )


def test_rebuild_equals_the_incremental_summaries_and_purge_keeps_them_right(calls):
    rollups.roll_up(limit=None)

    def contents():
        totals = {row.pop("session_id"): row for row in SessionTotals.objects.values().order_by()}
        for row in totals.values():
            row.pop("id")
        members = set(SessionUser.objects.values_list("session_id", "user_id", "first_call", "last_call"))
        columns = ("user_id", "prompt_tokens", "completion_tokens", "latency_sum_ms", "first_call", "last_call")
        users = {
            model: sorted(model.objects.values_list(*columns, "latency_histogram"), key=str)
            for model in (DailyUserTotals, HourlyUserTotals)
        }
        return totals, members, users

    incremental = contents()
    expected = expected_sessions(calls)
    assert set(incremental[0]) == set(expected)
    for key, row in incremental[0].items():
        assert row["requests"] == expected[key]["requests"] and row["user_count"] == expected[key]["users"]
        assert row["cost"] == expected[key]["cost"] and row["model_count"] == expected[key]["models"]
    rollups.rebuild()
    assert contents()[:2] == incremental[:2]
    users_rebuilt = contents()[2]
    for model, rows in incremental[2].items():
        assert [plain(row) for row in users_rebuilt[model]] == [plain(row) for row in rows]

    cutoff = NOW - timedelta(days=3)
    retention.purge(older_than_days=1, now=cutoff + timedelta(days=1))
    kept = [log for log in calls if log.timestamp >= cutoff]
    after = {row.session_id: row for row in SessionTotals.objects.all()}
    assert set(after) == set(expected_sessions(kept))
    for key, value in expected_sessions(kept).items():
        assert (after[key].requests, after[key].first_call, after[key].cost) == (
            value["requests"],
            value["first_call"],
            value["cost"],
        )


def test_without_the_ready_mark_the_lists_read_the_calls(calls):
    MetricWatermark.objects.filter(name=rollups.SESSIONS_READY).delete()
    start, end = WINDOWS[0]
    selection = chosen(start, end)
    assert metrics.summaries_plan(selection) is None
    assert metrics.sessions(selection).query.combinator is None
    rows = list(metrics.users(selection))
    assert not isinstance(metrics.users(selection), metrics.Rows)
    assert {row["user_id"]: row["requests"] for row in rows} == {
        key: value["requests"] for key, value in expected_users(in_window(calls, start, end)).items()
    }


def test_breakdown_by_user_from_the_user_totals_equals_the_calls(api_client, calls, subtests):
    for window, (order_by, limit) in itertools.product(WINDOWS, [("cost", 3), ("p95", 2), ("requests", 100)]):
        with subtests.test(window=window, order_by=order_by, limit=limit):
            check_breakdown_by_user(api_client, calls, window, order_by, limit)


def check_breakdown_by_user(api_client, calls, window, order_by, limit):
    start, end = window
    selection = chosen(start, end)
    assert metrics._user_breakdown_from_rollups(selection, order_by, limit) is not None  # the totals answer
    params = {"by": "user", "order_by": order_by, "limit": limit}
    answer = api_client.get(
        "/api/metrics/breakdown/", {"start_date": start.isoformat(), "end_date": end.isoformat(), **params}
    ).json()
    assert answer["percentiles"] == metrics.PERCENTILES_APPROXIMATE
    rows = in_window(calls, start, end)
    assert any(not log.user_id for log in rows)  # the "" group is the totals less the users'
    check_breakdown(answer, rows, "user", order_by, limit)


def test_breakdown_by_session_from_the_summaries_equals_the_calls(api_client, calls, subtests):
    orders = [("cost", 4), ("requests", 1), ("errors", 3), ("tokens", 100)]
    for window, (order_by, limit) in itertools.product(WINDOWS, orders):
        with subtests.test(window=window, order_by=order_by, limit=limit):
            check_breakdown_by_session(api_client, calls, window, order_by, limit)


def check_breakdown_by_session(api_client, calls, window, order_by, limit):
    start, end = window
    assert metrics._session_breakdown_from_summaries(chosen(start, end), order_by, limit) is not None
    params = {"by": "session", "order_by": order_by, "limit": limit}
    answer = api_client.get(
        "/api/metrics/breakdown/", {"start_date": start.isoformat(), "end_date": end.isoformat(), **params}
    ).json()
    rows = in_window(calls, start, end)
    assert any(not log.session_id for log in rows)  # the "" group: the totals less the sessions'
    check_breakdown(answer, rows, "session", order_by, limit)
    # Largest first, as the calls say (the sums are exact, so the order is too).
    sums = defaultdict(float)
    for log in rows:
        sums[log.session_id] += {"cost": float(log.cost_estimate), "requests": 1, "errors": log.is_error}.get(
            order_by, log.total_tokens
        )
    shown = [row["key"] for row in answer["groups"]]
    assert shown == sorted(sums, key=lambda key: (-round(sums[key], 9), key))[:limit]
