"""The forecast's scenario terms (llm.forecast._terms, built in NumPy over all of a period's hours
at once) equal the hours walked one by one in plain Python, part for part: for periods and
instants on and off the hour, before, inside and after the period."""

from __future__ import annotations

import math
import random

import pytest

from llm import forecast

HOUR_S = 3600
WEEK_S = 7 * 24 * HOUR_S


def walked(start: float, end: float, now: float, j: int) -> tuple[list, list, list, list, float]:
    """Scenario j hour by hour, as the module's docstring says."""
    now_terms, then_terms, before, within = [], [], [], []
    first_hour = int(start // HOUR_S) * HOUR_S
    oldest = first_hour - j * WEEK_S if first_hour < end else now
    for hour in range(first_hour, math.ceil(end / HOUR_S) * HOUR_S, HOUR_S):
        back = hour - j * WEEK_S
        part = (min(hour + HOUR_S, now) - max(hour, start)) / HOUR_S
        if part > 0 and back < start:
            now_terms.append((hour, part))
            then_terms.append((back, part))
        part = (min(hour + HOUR_S, end) - max(hour, now)) / HOUR_S
        if part > 0:
            source = hour - (max(1, math.ceil((hour + HOUR_S - now) / WEEK_S)) + j - 1) * WEEK_S
            oldest = min(oldest, source)
            (before if source < start else within).append((source, part))
    return now_terms, then_terms, before, within, oldest


BASE = 1_780_000_000.0  # 2026


def cases() -> list[tuple[float, float, float, int]]:
    rng = random.Random(11)
    found = [
        (BASE, BASE + 30 * 86400, BASE + 10 * 86400, 1),  # on the hour
        (BASE, BASE + 86400, BASE - 3600, 2),  # now before the period
        (BASE, BASE + 7 * 86400, BASE + 9 * 86400, 4),  # now after it
        (BASE + 1800.5, BASE + 1800.5, BASE + 1900, 1),  # an empty period
    ]
    for _ in range(40):
        start = BASE + rng.randint(0, 10**6) + rng.random()
        end = start + rng.choice([86400, 7 * 86400, 31 * 86400]) + rng.choice([0, rng.random() * 5000])
        now = start + rng.uniform(-2 * 86400, (end - start) + 86400)
        found.append((start, end, now, rng.randint(1, 4)))
    return found


@pytest.mark.parametrize(("start", "end", "now", "j"), cases())
def test_terms_equal_the_hours_walked_one_by_one(start, end, now, j):
    terms = forecast._terms(start, end, now, j)
    now_terms, then_terms, before, within, oldest = walked(start, end, now, j)
    assert pairs(terms.now) == now_terms
    assert pairs(terms.then) == then_terms
    assert pairs(terms.before) == before
    assert pairs(terms.within) == within
    assert terms.oldest == oldest
    # Integer hours: the keys of the hourly costs they are looked up in.
    assert all(type(hour) is int for found in terms.sums() for hour, _ in pairs(found))


def pairs(terms: forecast.Terms) -> list[tuple[int, float]]:
    """A sum's (hours, parts) arrays as the (hour, part) pairs walked one by one."""
    hours, parts = terms
    return list(zip(hours.tolist(), parts.tolist(), strict=True))
