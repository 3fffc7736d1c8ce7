"""Rate limits per API key and per logged-in user: prompts per minute on /api/llm/prompt/, events
per minute on /api/events/ and /v1/traces (a batch counts its events, an OTLP export its spans).

The counters are rows of `RateLimitCounter`, one per caller and minute, raised by a single
`INSERT ... ON CONFLICT DO UPDATE ... WHERE hits + n <= limit RETURNING hits`: atomic in SQLite and
PostgreSQL alike, so every gunicorn worker (and every server sharing the database) counts in the same
place, and one query per request is the whole cost. A refused request adds nothing (the WHERE stops
the update), so a caller over the limit can come back after Retry-After and be served. DRF's own
throttles keep a list of timestamps per caller in the cache: at 600,000 events a minute that list
could not be stored, and Django's database cache has no atomic increment.

The window is the calendar minute (UTC): simple and exact to count, at the price that a caller can
send up to twice the limit across a minute's boundary.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from llm.models import APIKey, RateLimitCounter


@dataclass(frozen=True)
class RateLimit:
    name: str  # the subject's prefix in the counter table
    setting: str  # the setting holding the number per minute (0: no limit)
    unit: str  # what is counted, in words

    @property
    def per_minute(self) -> int:
        return getattr(settings, self.setting)


PROMPTS = RateLimit("prompt", "PROMPT_RATE_LIMIT", "prompts")
EVENTS = RateLimit("ingest", "INGEST_RATE_LIMIT", "events")


@dataclass(frozen=True)
class Caller:
    """Who is counted: an API key or a logged-in user (never both; a key wins)."""

    subject: str  # "key:12" or "user:3"
    label: str  # for the message: 'API key "billing-app"', 'user "alice"'


@dataclass(frozen=True)
class Refusal:
    wait_seconds: int
    message: str


class RateLimited(exceptions.Throttled):
    """A 429 naming the limit, with Retry-After (DRF's exception handler adds the header)."""

    extra_detail_singular = extra_detail_plural = ""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(wait=refusal.wait_seconds, detail=refusal.message)
        self.detail = refusal.message  # without DRF's appended sentence (the message says when)


def caller_for_key(api_key: APIKey) -> Caller:
    return Caller(subject=f"key:{api_key.pk}", label=f'API key "{api_key.name}"')


def caller_of(request: Request) -> Caller | None:
    """The caller a DRF request is counted against; None when it is neither a key nor a user."""
    if isinstance(request.auth, APIKey):
        return caller_for_key(request.auth)
    if request.user and request.user.is_authenticated:
        return Caller(subject=f"user:{request.user.pk}", label=f'user "{request.user.get_username()}"')
    return None


def _seconds_to_next_minute(now: float) -> int:
    return max(1, math.ceil(60 - now % 60))


def use(limit: RateLimit, caller: Caller | None, amount: int = 1) -> Refusal | None:
    """Count `amount` against the caller's limit for this minute. None when it fits (and is
    counted); a Refusal (nothing counted) when it would go over the limit."""
    per_minute = limit.per_minute
    if caller is None or per_minute <= 0 or amount <= 0:
        return None
    now = time.time()
    if amount > per_minute:
        # Can never fit, whatever the wait: say so rather than let the client retry forever.
        return Refusal(
            60,
            f"Rate limit: {amount:,} {limit.unit} in one request is more than the {per_minute:,} a minute "
            f"allowed for {caller.label} ({limit.setting}); send smaller batches.",
        )
    minute = int(now // 60)
    hits = _add(f"{limit.name}:{caller.subject}", minute, amount, per_minute)
    if hits is None:
        wait = _seconds_to_next_minute(now)
        return Refusal(
            wait,
            f"Rate limit: {per_minute:,} {limit.unit} a minute for {caller.label} ({limit.setting}); "
            f"try again in {wait} second{'s' if wait != 1 else ''}.",
        )
    if hits == amount:
        # The first use of a new minute for this caller: the rows of past minutes are of no more use.
        RateLimitCounter.objects.filter(minute__lt=minute - 1).delete()
    return None


def _add(subject: str, minute: int, amount: int, per_minute: int) -> int | None:
    """The caller's count for the minute after adding `amount`, or None when that would pass the limit."""
    table = connection.ops.quote_name(RateLimitCounter._meta.db_table)
    values = "VALUES (%s, %s, %s)"
    prefix = ""
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        # The statement is its own transaction: let its commit skip the wait for the WAL flush. With
        # PostgreSQL's default durability that wait was 4-8 ms a request on the machine we measured
        # on (/tmp-style disk; 0.2 ms without it); a crash may forget the last moment's counts, which
        # only lets a caller send a little more. Inside someone's transaction the setting would last
        # until its end and cover their writes too: there the plain statement runs.
        prefix = "WITH no_flush_wait AS (SELECT set_config('synchronous_commit', 'off', true)) "
        values = "SELECT %s, %s, %s FROM no_flush_wait"
    with connection.cursor() as cursor:
        cursor.execute(
            f"{prefix}INSERT INTO {table} (subject, minute, hits) {values} "  # noqa: S608 - our own table name
            f"ON CONFLICT (subject, minute) DO UPDATE SET hits = {table}.hits + excluded.hits "
            f"WHERE {table}.hits + excluded.hits <= %s RETURNING hits",
            [subject, minute, amount, per_minute],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def check(limit: RateLimit, caller: Caller | None, amount: int = 1) -> None:
    """use(), raising RateLimited (a 429 with Retry-After) when refused: for DRF views."""
    refusal = use(limit, caller, amount)
    if refusal is not None:
        raise RateLimited(refusal)


def span_count(export) -> int:
    """The spans of an OTLP ExportTraceServiceRequest: what an export counts against INGEST_RATE_LIMIT."""
    return sum(len(scope.spans) for resource in export.resource_spans for scope in resource.scope_spans)


class PromptRateThrottle(BaseThrottle):
    """PROMPT_RATE_LIMIT prompts a minute per API key and per user (DRF runs it after authentication)."""

    def allow_request(self, request: Request, view) -> bool:
        check(PROMPTS, caller_of(request))
        return True
