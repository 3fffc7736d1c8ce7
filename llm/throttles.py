"""Rate limits per API key and per logged-in user: prompts per minute on /api/llm/prompt/, events
per minute on /api/events/ and /v1/traces (a batch counts its events, an OTLP export its spans).

The shared count is a row of `RateLimitCounter` per caller and minute, raised by an atomic
`INSERT ... ON CONFLICT DO UPDATE ... RETURNING hits` (SQLite and PostgreSQL alike), so every
gunicorn worker, and every server sharing the database, counts in the same place. DRF's own
throttles keep a list of timestamps per caller in the cache: at 600,000 events a minute that list
could not be stored, and Django's database cache has no atomic increment.

Going to that row on every request cost the proxy a round trip and, with one busy key, made every
worker queue on the same row lock (16 clients: 392 prompts/s without the limit, 231 with it). So
each process also counts on its own (`_Count`) and only contacts the row now and then:

- A request is admitted locally, with no query, when this process asked the database less than
  CONTACT_SECONDS ago, the shared total it heard then + what it admitted since stays within the
  limit, and what it admitted since (not yet in the row) stays within 1 % of the limit
  (`local_allowance`).
- Otherwise the request contacts the database: one upsert adds what this process admitted since
  its last contact together with the request, on condition that the total stays within the limit
  (`WHERE hits + n <= limit`), and reads the shared total back. Refused, it adds the already
  admitted part alone. A process's first request of a minute contacts. One contact at a time per
  caller in a process: a thread that needs one while another is under way waits for its answer
  (the row's condition cannot see what the other carries); the rest go on counting locally.
- A request is refused locally when what this process knows already passes the limit: within a
  minute the shared total only grows, so that refusal is never wrong.
- What is left uncounted in the row is added when the process sees the minute change and at exit.

The bound: a process admits locally with a view of the other processes that is at most
CONTACT_SECONDS old and lacks only what they admitted locally since their own last contact, so the
total admitted in a minute is at most the limit + (worker processes - 1) x 1 % of the limit, and
never more than the limit + what the other processes admitted in their last CONTACT_SECONDS. A
limit under 100 is exact (every admission is a contact); so is a single process. A refused
request adds nothing, so a caller over the limit can come back after Retry-After and be served.

The window is the calendar minute (UTC): simple and exact to count, at the price that a caller can
send up to twice the limit across a minute's boundary.
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, connection
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from llm.models import APIKey, RateLimitCounter

logger = logging.getLogger(__name__)

# How stale this process's view of the shared total may grow before a request contacts the row:
# the other processes' admissions it may miss are theirs of the last CONTACT_SECONDS at most. At
# 16 clients on one key (~400 prompts/s over 2 workers) one prompt in ~40 pays the round trip.
CONTACT_SECONDS = 0.2
# What a process may admit on its own between two contacts, as a share of the limit: the bound on
# what each other process can add past the limit (1 %). Small limits leave no room: exact.
LOCAL_SHARE_DIVISOR = 100


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


def local_allowance(per_minute: int) -> int:
    """How much a process may admit without telling the database (see the module's docstring)."""
    return per_minute // LOCAL_SHARE_DIVISOR


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
    key = (f"{limit.name}:{caller.subject}", int(now // 60))
    if key[1] > _latest_minute[0]:  # (read without the lock: _send_past_minutes looks again)
        _send_past_minutes(key[1])
    decision, count, batch = _decide(key, amount, per_minute, now)
    if decision == ADMIT:
        return None
    if decision == CONTACT and _contact(key, count, batch, amount, per_minute):
        return None
    wait = _seconds_to_next_minute(now)
    return Refusal(
        wait,
        f"Rate limit: {per_minute:,} {limit.unit} a minute for {caller.label} ({limit.setting}); "
        f"try again in {wait} second{'s' if wait != 1 else ''}.",
    )


def admit_locally(limit: RateLimit, caller: Caller, amount: int = 1) -> bool:
    """Count `amount` if this process can admit it on its own, with no query and no wait; False,
    counting nothing, whenever use() would have to contact the row, refuse, or start a new minute.
    A limit of 0 admits everything."""
    return decide_locally(limit, caller, amount) == ADMIT


def decide_locally(limit: RateLimit, caller: Caller, amount: int = 1) -> str:
    """What this process can decide on its own, with no query and no wait (the prompt's fast path
    on the event loop: llm/api/prompt.py): ADMIT (counted), REFUSE (nothing counted: what is known
    already passes the limit), or CONTACT (nothing counted): only use() can decide, in a thread
    (it contacts the row, waits for another thread's contact, or starts a new minute)."""
    per_minute = limit.per_minute
    if per_minute <= 0:
        return ADMIT
    now = time.time()
    key = (f"{limit.name}:{caller.subject}", int(now // 60))
    if key[1] != _latest_minute[0]:
        return CONTACT
    with _lock:
        count = _counts.get(key)
        if count is None:
            return CONTACT
        decision = _choose(count, amount, per_minute, now)
        if decision == ADMIT:
            count.pending += amount
    return decision


# This process's counts.


@dataclass
class _Count:
    """One caller's use of one limit in one minute, as this process knows it."""

    shared: int = 0  # the row's total when this process last heard it (only grows within a minute)
    pending: int = 0  # admitted here since, not yet added to the row
    in_flight: int = 0  # being added to the row by the contact under way (another thread's, maybe)
    contacting: bool = False  # one contact at a time (see _decide)
    contacted_at: float | None = None  # wall time of the last contact; None: none yet this minute

    def known(self, amount: int) -> int:
        """What this process knows the total will be with `amount` more."""
        return self.shared + self.in_flight + self.pending + amount


ADMIT, REFUSE, CONTACT = "admit", "refuse", "contact"
# (subject, minute) -> _Count. Guarded by _lock, which is never held during a query: the pool's
# other threads keep counting while one of them waits on the database.
_counts: dict[tuple[str, int], _Count] = {}
_lock = threading.Lock()
_contact_ended = threading.Condition(_lock)
# How long a thread waits for another's contact before it makes its own (a database that hangs
# fails that contact long before: this only keeps a lost wake-up from stopping a request).
CONTACT_WAIT_SECONDS = 5.0
# The latest minute seen: past minutes' counts are dropped when it changes.
_latest_minute: list[int] = [0]
# The database the counts were made in (its NAME setting): the exit flush goes nowhere else.
_database: list[str] = []


def _decide(key: tuple[str, int], amount: int, per_minute: int, now: float) -> tuple[str, _Count, int]:
    """ADMIT (counted here), REFUSE, or CONTACT with a batch: this process's pending count, taken
    out and reserved as in flight with the request's amount (the caller must call _contact)."""
    batch = 0
    with _lock:
        count = _counts.setdefault(key, _Count())
        decision = _choose(count, amount, per_minute, now)
        if decision == CONTACT and count.contacting:
            # The row's condition sees only what reached it: a second contact under way together
            # with this one could pass the limit with what the first carries. Wait for its answer,
            # then decide again on what it heard.
            _contact_ended.wait_for(lambda: not count.contacting, timeout=CONTACT_WAIT_SECONDS)
            decision = _choose(count, amount, per_minute, now)
        if decision == ADMIT:
            count.pending += amount
        elif decision == CONTACT:
            batch, count.pending = count.pending, 0
            count.in_flight += batch + amount
            count.contacting = True
            # Claimed now: the other threads go on counting here instead of contacting too.
            count.contacted_at = now
    return decision, count, batch


def _choose(count: _Count, amount: int, per_minute: int, now: float) -> str:
    over = count.known(amount) > per_minute
    if over and count.in_flight == 0:
        return REFUSE  # what is known already passes the limit: the true total is no smaller
    fresh = count.contacted_at is not None and 0 <= now - count.contacted_at < CONTACT_SECONDS
    if not over and fresh and count.pending + amount <= local_allowance(per_minute):
        return ADMIT
    # Near the limit with a contact under way, or the view is stale, or the allowance is used up.
    return CONTACT


def _send_past_minutes(minute: int) -> None:
    """A new minute: drop the counts of past ones, adding what they had not yet sent to their rows
    (for the record: nothing is decided on them any more). Before any contact is claimed, so that
    a database error here leaves no contact marked as under way."""
    with _lock:
        if minute <= _latest_minute[0]:
            return  # another thread was first
        _latest_minute[0] = minute
        past = [key for key in _counts if key[1] < minute]
        unsent = [(key, pending) for key in past if (pending := _counts.pop(key).pending)]
    for (subject, past_minute), pending in unsent:
        _add(subject, past_minute, pending, None)


def _contact(key: tuple[str, int], count: _Count, batch: int, amount: int, per_minute: int) -> bool:
    """Add the batch (what this process admitted since its last contact) and the request's amount
    to the row on condition that the total stays within the limit; whether the request was
    admitted. The batch counts whatever the request's fate: it was admitted already."""
    subject, minute = key
    try:
        hits = _add(subject, minute, batch + amount, per_minute)
        admitted = hits is not None
        if not admitted:
            # The row's total is over per_minute - amount: a lower bound is all the refusal needs.
            hits = _add(subject, minute, batch, None) if batch else per_minute - amount + 1
    except BaseException:
        with _lock:  # the database is away: keep the pending part for the next contact
            count.pending += batch
            count.in_flight -= batch + amount
            count.contacting = False
            _contact_ended.notify_all()
        raise
    with _lock:
        count.shared = max(count.shared, hits)
        count.in_flight -= batch + amount
        count.contacting = False
        _contact_ended.notify_all()
    if admitted and hits == batch + amount:
        # The minute's row is new: the rows of past minutes are of no more use.
        RateLimitCounter.objects.filter(minute__lt=minute - 1).delete()
    return admitted


def _add(subject: str, minute: int, amount: int, per_minute: int | None) -> int | None:
    """The caller's count for the minute after adding `amount`, or None when that would pass
    `per_minute` (nothing added then). per_minute None: add whatever the total."""
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
    condition = f" WHERE {table}.hits + excluded.hits <= %s" if per_minute is not None else ""
    parameters = [subject, minute, amount] + ([per_minute] if per_minute is not None else [])
    if not _database:
        _database.append(connection.settings_dict["NAME"])
    with connection.cursor() as cursor:
        cursor.execute(
            f"{prefix}INSERT INTO {table} (subject, minute, hits) {values} "  # noqa: S608 - our own table name
            f"ON CONFLICT (subject, minute) DO UPDATE SET hits = {table}.hits + excluded.hits{condition} "
            "RETURNING hits",
            parameters,
        )
        row = cursor.fetchone()
    return row[0] if row else None


def flush() -> None:
    """Add every count this process admitted and has not yet sent to the rows (at exit)."""
    with _lock:
        batches = [(key, count, count.pending) for key, count in _counts.items() if count.pending]
        for _, count, pending in batches:
            count.pending = 0
            count.in_flight += pending
    for (subject, minute), count, pending in batches:
        hits = _add(subject, minute, pending, None)
        with _lock:
            count.shared = max(count.shared, hits)
            count.in_flight -= pending


def forget_local_counts() -> None:
    """Start from nothing, unsent counts dropped (tests: their database rolls back under them)."""
    with _lock:
        _counts.clear()
        _latest_minute[0] = 0
        _database.clear()


@atexit.register
def flush_at_exit() -> None:
    """flush(), when a process ends: at interpreter exit (atexit), and from the ASGI handler's
    lifespan shutdown, since uvicorn ends a worker by re-raising SIGTERM, past atexit hooks."""
    # Unsent counts would otherwise be missed by the other workers for the rest of the minute (the
    # bound allows it; the row is better right). Only into the database they were made in: at the
    # end of a test run the test database is gone and the setting points to the developer's.
    if not _database or connection.settings_dict["NAME"] != _database[0]:
        return
    try:
        flush()
    except DatabaseError as error:
        logger.warning("Rate limit counts not saved at exit: %s", error)
    finally:
        connection.close()


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
