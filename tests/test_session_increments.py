"""Session summaries kept by adding each roll-up's new calls (llm/rollups.py `add_to_sessions`):
after every roll-up, SessionTotals and SessionUser equal a plain-Python summary of the calls at
or below the watermark, whatever the new calls bring (new users, models sorting below and above
the shown one, names that differ in case, blank users); the older calls are not read again; and
summing again (purge_logs, rebuild_rollups) stops at the watermark, so a call above it is not
counted twice once the next roll-up adds it."""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Max

from llm import rollups, watermarks
from llm.models import LLMRequestLog, SessionTotals, SessionUser
from tests.factories import build_log
from tests.read_api_data import NOW

pytestmark = pytest.mark.django_db

SESSIONS = ["s-a", "s-b", "S-a", "s-c"]
USERS = ["u-1", "U-1", "u-2", "", "ü-3"]
MODELS = ["m-b", "M-b", "m-a", "m-c", "z"]


def calls(rng: random.Random, count: int, minutes_ago: float) -> list[LLMRequestLog]:
    return [
        build_log(
            request_id=uuid.uuid4(),
            timestamp=NOW - timedelta(minutes=minutes_ago - index - rng.random()),
            session_id=rng.choice(SESSIONS),
            user_id=rng.choice(USERS),
            model_name=rng.choice(MODELS),
            prompt_tokens=rng.randint(0, 500),
            completion_tokens=rng.randint(0, 200),
            cost_estimate=Decimal(rng.randint(0, 10**6)) / Decimal(10**10),
            status=rng.choice([LLMRequestLog.Status.SUCCESS, LLMRequestLog.Status.ERROR]),
        )
        for index in range(count)
    ]


def summarized(logs: list[LLMRequestLog]) -> tuple[dict, set]:
    """What the summaries must hold: plain Python, but for the shown user and model, the largest
    text as the database orders it (its collation), which its Max() over the same calls says."""
    shown = {
        row["session_id"]: row
        for row in LLMRequestLog.objects.filter(request_id__in=[log.request_id for log in logs])
        .values("session_id")
        .annotate(shown_user=Max("user_id"), shown_model=Max("model_name"))
        .order_by()
    }
    grouped = defaultdict(list)
    for log in logs:
        grouped[log.session_id].append(log)
    totals = {}
    for session_id, members in grouped.items():
        totals[session_id] = {
            "first_call": min(log.timestamp for log in members),
            "last_call": max(log.timestamp for log in members),
            "requests": len(members),
            "errors": sum(log.status == LLMRequestLog.Status.ERROR for log in members),
            "prompt_tokens": sum(log.prompt_tokens for log in members),
            "completion_tokens": sum(log.completion_tokens for log in members),
            "total_tokens": sum(log.total_tokens for log in members),
            "cost": sum(log.cost_estimate for log in members),
            "user_count": len({log.user_id for log in members if log.user_id}),
            "shown_user": shown[session_id]["shown_user"],
            "model_count": len({log.model_name for log in members}),
            "shown_model": shown[session_id]["shown_model"],
        }
    users = {
        (log.session_id, log.user_id, totals[log.session_id]["first_call"], totals[log.session_id]["last_call"])
        for log in logs
        if log.user_id
    }
    return totals, users


def stored() -> tuple[dict, set]:
    totals = {row.pop("session_id"): row for row in SessionTotals.objects.values().order_by()}
    for row in totals.values():
        row.pop("id")
    return totals, set(SessionUser.objects.values_list("session_id", "user_id", "first_call", "last_call"))


def test_each_roll_up_adds_its_calls_and_the_summaries_equal_the_calls():
    rng = random.Random(7)
    summed: list[LLMRequestLog] = []
    for round_number in range(5):
        new = calls(rng, 6 + round_number * 3, minutes_ago=600 - round_number * 60)
        LLMRequestLog.objects.bulk_create(new)
        rollups.roll_up(limit=None)
        summed += new
        assert stored() == summarized(summed), f"after roll-up {round_number + 1}"


def test_a_roll_up_does_not_read_the_sessions_older_calls():
    """The older calls are gone from the table (deleted behind the summaries' back): a roll-up that
    summed sessions again would lose them; adding keeps them."""
    rng = random.Random(8)
    older = calls(rng, 12, minutes_ago=300)
    LLMRequestLog.objects.bulk_create(older)
    rollups.roll_up(limit=None)
    LLMRequestLog.objects.filter(id__in=[log.id for log in older])._raw_delete("default")
    newer = calls(rng, 5, minutes_ago=100)
    LLMRequestLog.objects.bulk_create(newer)
    rollups.roll_up(limit=None)
    totals, _ = stored()
    assert {key: row["requests"] for key, row in totals.items()} == Counter(log.session_id for log in older + newer)


def test_summing_again_stops_at_the_watermark_and_the_next_roll_up_adds_the_rest():
    rng = random.Random(9)
    first = calls(rng, 10, minutes_ago=500)
    LLMRequestLog.objects.bulk_create(first)
    rollups.roll_up(limit=None)
    above = calls(rng, 6, minutes_ago=50)
    LLMRequestLog.objects.bulk_create(above)  # above the watermark
    # What purge_logs does after deleting (nothing older than this cutoff here, every session qualifies).
    rollups.forget_purged_sessions(NOW)
    assert stored() == summarized(first)
    with watermarks.claim(rollups.ROLLUPS, LLMRequestLog) as claim:
        rollups.rebuild_sessions(upto=claim.watermark.last_id)
    assert stored() == summarized(first)
    rollups.roll_up(limit=None)
    assert stored() == summarized(first + above)


def test_greatest_orders_text_as_the_databases_max_does():
    pairs = [("a", "B"), ("B", "a"), ("m-b", "M-b"), ("", "x"), ("ü", "u"), ("same", "same")]
    expected = []
    for first, second in pairs:
        LLMRequestLog.objects.all().delete()
        LLMRequestLog.objects.bulk_create([build_log(model_name=first), build_log(model_name=second)])
        expected.append(LLMRequestLog.objects.aggregate(top=Max("model_name"))["top"])
    assert rollups.greatest(pairs) == expected
