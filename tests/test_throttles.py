"""Rate limits (llm/throttles.py): prompts a minute on /api/llm/prompt/, events a minute on
/api/events/ and spans a minute on /v1/traces, per API key and per user, counted in the database."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
import time_machine
from django.db import connection
from django.db.models import F
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from rest_framework.test import APIClient

from llm import throttles
from llm.models import LLMRequestLog, RateLimitCounter
from tests import throttle_worker
from tests.factories import make_api_key
from tests.fake_groq import Behaviour

PROMPT = "/api/llm/prompt/"
EVENTS = "/api/events/"
TRACES = "/v1/traces"
ROOT = Path(__file__).resolve().parent.parent
# 12:00:15 UTC: 45 seconds left in the minute.
NOW = datetime(2026, 3, 2, 12, 0, 15, tzinfo=UTC)


@pytest.fixture(autouse=True)
def local_counts():
    """Each test starts with no count in this process: the last test's rows were rolled back."""
    throttles.forget_local_counts()
    yield
    throttles.forget_local_counts()


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def key_client(name: str) -> APIClient:
    _, raw_key = make_api_key(name)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def prompt(client: APIClient):
    return client.post(PROMPT, {"prompt": "Hi", "model": "llama-3.1-8b-instant"}, format="json")


def event(timestamp: datetime) -> dict:
    return {"request_id": str(uuid.uuid4()), "timestamp": timestamp.isoformat(), "model": "m", "latency_ms": 5}


def post_events(client: APIClient, count: int):
    return client.post(EVENTS, {"events": [event(NOW - timedelta(minutes=1)) for _ in range(count)]}, format="json")


def span(index: int) -> dict:
    start = int((NOW - timedelta(minutes=1)).timestamp() * 1e9)
    return {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": f"{index + 1:016x}",
        "name": "chat m",
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 5_000_000),
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "m"}},
        ],
    }


def export(count: int, first: int = 0) -> str:
    spans = [span(first + index) for index in range(count)]
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})


@pytest.mark.django_db
def test_prompts_over_the_limit_are_429_with_retry_after_and_the_limit_named(fake_groq, settings, clock):
    settings.PROMPT_RATE_LIMIT = 3
    fake_groq.will(Behaviour(text="Hello."))
    billing = key_client("billing-app")
    assert [prompt(billing).status_code for _ in range(3)] == [200, 200, 200]
    refused = prompt(billing)
    assert refused.status_code == 429
    assert refused["Retry-After"] == "45"  # to the end of the minute
    assert refused.json() == {
        "error": 'Rate limit: 3 prompts a minute for API key "billing-app" (PROMPT_RATE_LIMIT); '
        "try again in 45 seconds."
    }
    # A refused prompt reaches no provider and stores no row; another key has its own count.
    assert LLMRequestLog.objects.count() == 3
    assert prompt(key_client("other-app")).status_code == 200
    # The next minute starts a new count.
    clock.move_to(NOW + timedelta(seconds=45))
    assert prompt(billing).status_code == 200


@pytest.mark.django_db
def test_a_logged_in_user_is_counted_apart_from_keys(fake_groq, settings, clock, logged_in_client):
    settings.PROMPT_RATE_LIMIT = 1
    fake_groq.will(Behaviour(text="Hello."))
    assert prompt(logged_in_client).status_code == 200
    refused = prompt(logged_in_client)
    assert refused.status_code == 429
    assert 'for user "alice"' in refused.json()["error"]
    assert prompt(key_client("app")).status_code == 200


@pytest.mark.django_db
def test_a_refused_request_is_not_counted(settings, clock, staff_user):
    settings.PROMPT_RATE_LIMIT = 2
    caller = throttles.Caller(subject=f"user:{staff_user.pk}", label="user")
    results = [throttles.use(throttles.PROMPTS, caller) for _ in range(5)]
    assert [result is None for result in results] == [True, True, False, False, False]
    assert list(RateLimitCounter.objects.values_list("hits", flat=True)) == [2]


@pytest.mark.django_db
def test_zero_turns_a_limit_off(fake_groq, settings, clock, django_assert_num_queries):
    settings.INGEST_RATE_LIMIT = 0
    caller = throttles.Caller(subject="key:1", label="key")
    with django_assert_num_queries(0):
        assert throttles.use(throttles.EVENTS, caller, 10**9) is None


@pytest.mark.django_db
def test_events_count_each_event_of_a_batch(api_client, settings, clock):
    settings.INGEST_RATE_LIMIT = 5
    assert post_events(api_client, 3).status_code == 201
    refused = post_events(api_client, 3)  # 3 + 3 > 5
    assert refused.status_code == 429
    assert refused["Retry-After"] == "45"
    assert "5 events a minute" in refused.json()["error"]
    assert "INGEST_RATE_LIMIT" in refused.json()["error"]
    assert post_events(api_client, 2).status_code == 201  # exactly 5
    assert post_events(api_client, 1).status_code == 429
    assert LLMRequestLog.objects.count() == 5


@pytest.mark.django_db
def test_a_batch_larger_than_the_whole_limit_says_to_send_smaller_batches(api_client, settings, clock):
    settings.INGEST_RATE_LIMIT = 5
    refused = post_events(api_client, 6)
    assert refused.status_code == 429
    assert "send smaller batches" in refused.json()["error"]
    assert not RateLimitCounter.objects.exists()


@pytest.mark.django_db
def test_an_invalid_batch_is_400_and_not_counted(api_client, settings, clock):
    settings.INGEST_RATE_LIMIT = 5
    bad = api_client.post(EVENTS, {"events": [event(NOW), {"model": ""}]}, format="json")
    assert bad.status_code == 400
    assert not RateLimitCounter.objects.exists()


@pytest.mark.django_db
def test_otlp_counts_spans_and_answers_429_in_its_encoding(client, settings, clock):
    settings.INGEST_RATE_LIMIT = 3
    _, raw_key = make_api_key("collector")
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {raw_key}"}
    accepted = client.post(TRACES, export(2), content_type="application/json", **bearer)
    assert accepted.status_code == 200, accepted.content
    refused = client.post(TRACES, export(2, first=2), content_type="application/json", **bearer)
    assert refused.status_code == 429
    assert refused["Retry-After"] == "45"
    body = refused.json()
    assert body["code"] == code_pb2.RESOURCE_EXHAUSTED
    assert "3 events a minute" in body["message"] and 'API key "collector"' in body["message"]
    # An empty export counts nothing.
    assert client.post(TRACES, export(0), content_type="application/json", **bearer).status_code == 200
    assert LLMRequestLog.objects.count() == 2
    clock.move_to(NOW + timedelta(minutes=1))
    assert client.post(TRACES, export(3, first=4), content_type="application/json", **bearer).status_code == 200


@pytest.mark.django_db
def test_otlp_429_in_protobuf(client, settings, clock):
    settings.INGEST_RATE_LIMIT = 1
    _, raw_key = make_api_key("collector")
    message = json_format.ParseDict(json.loads(export(2)), ExportTraceServiceRequest())
    response = client.post(
        TRACES,
        message.SerializeToString(),
        content_type="application/x-protobuf",
        HTTP_AUTHORIZATION=f"Bearer {raw_key}",
    )
    assert response.status_code == 429
    status = status_pb2.Status.FromString(response.content)
    assert status.code == code_pb2.RESOURCE_EXHAUSTED and "send smaller batches" in status.message


@pytest.mark.django_db
def test_rows_of_past_minutes_are_deleted_when_a_new_minute_starts(settings, clock):
    settings.INGEST_RATE_LIMIT = 100
    for index in range(3):
        caller = throttles.Caller(subject=f"key:{index}", label="key")
        throttles.use(throttles.EVENTS, caller, 1)
    clock.move_to(NOW + timedelta(minutes=2))
    throttles.use(throttles.EVENTS, throttles.Caller(subject="key:9", label="key"), 1)
    minute = int(time.time() // 60)
    assert list(RateLimitCounter.objects.values_list("subject", "minute")) == [("ingest:key:9", minute)]


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_callers_at_once_never_pass_the_limit_together(settings, clock):
    """Threads with their own database connections, as separate workers would be: the count is
    shared and exact."""
    if connection.vendor != "postgresql":
        pytest.skip(
            "needs PostgreSQL: SQLite's in-memory test database is shared-cache, where concurrent writers fail "
            "with 'table is locked' instead of waiting (a file database waits: busy_timeout), and SQLite has "
            "one writer at a time anyway; the race this guards against is PostgreSQL's."
        )
    settings.INGEST_RATE_LIMIT = 50
    caller = throttles.Caller(subject="key:1", label="key")
    accepted: list[int] = []
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait()
        try:
            for _ in range(20):
                if throttles.use(throttles.EVENTS, caller, 1) is None:
                    accepted.append(1)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == 50
    assert RateLimitCounter.objects.get().hits == 50


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_counter_commit_skips_the_flush_wait_without_changing_the_connection(settings, clock):
    """`synchronous_commit = off` for the counter's own statement only (llm/throttles.py `_add`)."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's synchronous_commit")
    settings.PROMPT_RATE_LIMIT = 2
    caller = throttles.Caller(subject="key:1", label="key")
    assert not connection.in_atomic_block
    with connection.cursor() as cursor:
        # As in production (the throwaway test cluster turns it off for the whole server).
        cursor.execute("SET synchronous_commit = on")
        try:
            assert [throttles.use(throttles.PROMPTS, caller) is None for _ in range(3)] == [True, True, False]
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "on"
        finally:
            cursor.execute("RESET synchronous_commit")
    assert RateLimitCounter.objects.get().hits == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("second", "wait", "words"), [(0.0, 60, "60 seconds"), (59.5, 1, "1 second."), (30.2, 30, "30 seconds")]
)
def test_the_wait_is_to_the_end_of_the_minute(settings, second, wait, words):
    settings.PROMPT_RATE_LIMIT = 1
    caller = throttles.Caller(subject="key:1", label="key")
    with time_machine.travel(datetime(2026, 3, 2, 12, 0, tzinfo=UTC) + timedelta(seconds=second), tick=False):
        assert throttles.use(throttles.PROMPTS, caller) is None
        refusal = throttles.use(throttles.PROMPTS, caller)
    assert refusal.wait_seconds == wait
    assert refusal.message.endswith(f"try again in {words}" + ("" if words.endswith(".") else "."))


# Counting in each process (llm/throttles.py): the database is asked only now and then.


def row_hits(subject: str) -> int:
    """The shared row's count for the clock's minute (0: no row)."""
    minute = int(time.time() // 60)
    return RateLimitCounter.objects.filter(subject=subject, minute=minute).values_list("hits", flat=True).first() or 0


def another_worker_admits(subject: str, amount: int) -> None:
    """What another worker process's contact does to the shared row."""
    RateLimitCounter.objects.filter(subject=subject, minute=int(time.time() // 60)).update(hits=F("hits") + amount)


KEY = throttles.Caller(subject="key:1", label='API key "shared"')


@pytest.mark.django_db
def test_far_from_the_limit_a_process_counts_without_a_query(settings, clock, django_assert_num_queries):
    settings.PROMPT_RATE_LIMIT = 10_000  # 1 %: 100 prompts admitted between two contacts
    assert throttles.use(throttles.PROMPTS, KEY) is None  # the minute's first: asks the database
    assert row_hits("prompt:key:1") == 1
    with django_assert_num_queries(0):
        assert all(throttles.use(throttles.PROMPTS, KEY) is None for _ in range(100))
    assert row_hits("prompt:key:1") == 1
    with django_assert_num_queries(1):  # the allowance is used up: the 100 go to the row with this one
        assert throttles.use(throttles.PROMPTS, KEY) is None
    assert row_hits("prompt:key:1") == 1 + 100 + 1


@pytest.mark.django_db
def test_the_shared_total_is_heard_again_after_contact_seconds(settings, clock, django_assert_num_queries):
    settings.PROMPT_RATE_LIMIT = 1_000
    assert throttles.use(throttles.PROMPTS, KEY) is None
    another_worker_admits("prompt:key:1", 995)
    with django_assert_num_queries(0):  # not heard of yet: counted here
        assert [throttles.use(throttles.PROMPTS, KEY) is None for _ in range(3)] == [True] * 3
    clock.shift(timedelta(seconds=throttles.CONTACT_SECONDS))
    assert throttles.use(throttles.PROMPTS, KEY) is None  # a contact: 1 + 995 + 3 + 1, exactly the limit
    assert row_hits("prompt:key:1") == 1_000
    with django_assert_num_queries(0):  # known to be over: refused here, no query however often asked
        refusals = [throttles.use(throttles.PROMPTS, KEY) for _ in range(50)]
    assert all(refusal is not None and "1,000 prompts a minute" in refusal.message for refusal in refusals)
    assert row_hits("prompt:key:1") == 1_000


@pytest.mark.django_db
def test_what_a_process_admits_unseen_passes_the_limit_by_its_allowance_at_most(settings, clock):
    """The documented bound, from one process's side: it admits up to 1 % of the limit on a view
    of the others that lacks their last admissions, and its next contact adds them all the same."""
    settings.PROMPT_RATE_LIMIT = 1_000  # 1 %: 10
    assert throttles.use(throttles.PROMPTS, KEY) is None
    another_worker_admits("prompt:key:1", 995)  # 996 in all: room for 4 more
    admitted = [throttles.use(throttles.PROMPTS, KEY) is None for _ in range(20)]
    assert admitted == [True] * 10 + [False] * 10
    assert row_hits("prompt:key:1") == 996 + 10
    assert 0 < row_hits("prompt:key:1") - 1_000 <= 10


@pytest.mark.django_db
def test_a_batch_over_the_allowance_is_decided_by_the_database(settings, clock):
    settings.INGEST_RATE_LIMIT = 1_000  # 1 %: 10 events
    assert throttles.use(throttles.EVENTS, KEY, 50) is None
    another_worker_admits("ingest:key:1", 910)  # 960: this process still believes 50
    assert throttles.use(throttles.EVENTS, KEY, 50) is not None  # 1,010 would pass: refused all the same
    assert throttles.use(throttles.EVENTS, KEY, 40) is None
    assert row_hits("ingest:key:1") == 1_000


@pytest.mark.django_db
def test_a_new_minute_sends_what_the_past_one_had_not(settings, clock):
    settings.PROMPT_RATE_LIMIT = 10_000
    for _ in range(5):
        assert throttles.use(throttles.PROMPTS, KEY) is None
    assert row_hits("prompt:key:1") == 1  # 4 counted here only
    clock.move_to(NOW + timedelta(minutes=1))
    assert throttles.use(throttles.PROMPTS, KEY) is None
    minute = int(NOW.timestamp() // 60)
    rows = dict(RateLimitCounter.objects.filter(subject="prompt:key:1").values_list("minute", "hits"))
    assert rows == {minute: 5, minute + 1: 1}


@pytest.mark.django_db
def test_flush_sends_what_is_pending_once(settings, clock, django_assert_num_queries):
    settings.PROMPT_RATE_LIMIT = 10_000
    for _ in range(7):
        assert throttles.use(throttles.PROMPTS, KEY) is None
    throttles.flush()
    assert row_hits("prompt:key:1") == 7
    with django_assert_num_queries(0):
        throttles.flush()
    assert row_hits("prompt:key:1") == 7


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_threads_of_one_process_counting_locally_admit_exactly_the_limit(settings, clock):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: see test_callers_at_once_never_pass_the_limit_together")
    settings.PROMPT_RATE_LIMIT = 1_000  # 10 a contact
    accepted: list[int] = []
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait()
        try:
            accepted.extend(1 for _ in range(400) if throttles.use(throttles.PROMPTS, KEY) is None)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == 1_000
    throttles.flush()
    assert RateLimitCounter.objects.get().hits == 1_000


def database_url(settings_dict: dict) -> str:
    credentials = quote(settings_dict["USER"]) + (
        f":{quote(settings_dict['PASSWORD'])}" if settings_dict["PASSWORD"] else ""
    )
    return f"postgres://{credentials}@{settings_dict['HOST']}:{settings_dict['PORT']}/{settings_dict['NAME']}"


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_worker_processes_share_the_limit_within_the_documented_bound():
    """Four worker processes forked from this one, as gunicorn forks its workers, counting against
    the same PostgreSQL (tests/throttle_worker.py): together they admit the limit and at most
    (workers - 1) x 1 % of it more, and the shared row ends with every admission."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite's test database is in this process's memory")
    limit, attempts, processes = 5_000, 2_500, 4  # alone, each would admit all its 2,500: 10,000
    context = multiprocessing.get_context("fork")
    go, results = context.Event(), context.Queue()
    connection.close()  # a forked worker must not share this process's connection
    workers = [
        context.Process(target=throttle_worker.forked, args=(limit, attempts, NOW, go, results))
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            worker.start()
        go.set()
        admitted = [results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    assert [worker.exitcode for worker in workers] == [0] * processes
    total = sum(admitted)
    assert limit <= total <= limit + (processes - 1) * limit // 100, admitted
    row = RateLimitCounter.objects.get(subject="prompt:key:1", minute=int(NOW.timestamp() // 60))
    assert row.hits == total


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_process_sends_what_it_counted_alone_when_it_exits():
    """A fresh interpreter (tests/throttle_worker.py) admits 150 prompts under a limit of 5,000:
    contacts at the 1st, 52nd and 103rd (50 admitted alone in between), the last 47 counted only
    in the process until its exit hook sends them."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite's test database is in this process's memory")
    environment = {**os.environ, "DATABASE_URL": database_url(connection.settings_dict)}
    command = [sys.executable, "-m", "tests.throttle_worker", "5000", "150", NOW.isoformat(), "key:2"]
    finished = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert int(finished.stdout) == 150
    row = RateLimitCounter.objects.get(subject="prompt:key:2", minute=int(NOW.timestamp() // 60))
    assert row.hits == 150
