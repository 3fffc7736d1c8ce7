"""The prompt's fast path (llm.api.prompt.fast_prompt, core/asgi.py): a prompt this process can
admit from memory alone is served on the event loop, without the sync stack, and answers what the
ordinary path answers: the same status, body, headers and log line, and exactly one row however
the call ends. Anything the fast path cannot decide alone (a key not cached, a revoked key, a rate
limit or a budget to ask the database about) takes the ordinary path.

Through the real ASGI handler, in this process, against the fake Groq on 127.0.0.1. Which path
served a request is told by Django's `request_started` signal: the ordinary path sends it, the
fast path does not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from django.core import signals
from django.db import connection
from django.db.models import F
from django.utils import timezone

from core.asgi import ObservatoryASGIHandler
from llm import auth, budgets, models, throttles
from llm.api.prompt import FAST_PATHS
from llm.logging import JSONFormatter
from llm.models import APIKey, Budget, LLMRequestLog, RateLimitCounter
from llm.providers.chat_completions import close_async_clients
from tests.factories import make_api_key, make_log
from tests.fake_groq import Behaviour
from tests.test_serving_hot_path import close_connections

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/api/llm/prompt/"


@pytest.fixture
def handler(fake_groq, settings):
    """One handler (its thread pool, its writer) per test; no rate limit unless a test sets one."""
    settings.PROMPT_RATE_LIMIT = 0
    forget_caches()
    application = ObservatoryASGIHandler()
    yield application
    close_connections(application)
    forget_caches()


def forget_caches() -> None:
    """This process's caches of rows a transactional test flushes without signals: the budget
    list (a test's spent budget would refuse the next test's prompts), keys, rate-limit counts."""
    budgets.forget_spent()
    auth.forget_keys()
    throttles.forget_local_counts()


@pytest.fixture
def key() -> tuple[APIKey, str]:
    return make_api_key("fast")


@contextmanager
def ordinary_requests():
    """How many requests took the ordinary path (Django's request_started) inside the block."""
    seen: list[int] = []

    def count(**kwargs) -> None:
        seen.append(1)

    signals.request_started.connect(count, dispatch_uid="test_prompt_fast_path")
    try:
        yield seen
    finally:
        signals.request_started.disconnect(dispatch_uid="test_prompt_fast_path")


async def exchange(application, body: dict, raw_key: str, headers=(), leave_after_chunks: int | None = None) -> dict:
    """One POST through the handler: status, headers (a dict of str) and body. With
    `leave_after_chunks`, the client disconnects once that many body parts have arrived."""
    payload = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"authorization", f"Bearer {raw_key}".encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    messages = [{"type": "http.request", "body": payload, "more_body": False}]
    answer: dict = {"body": b"", "parts": 0}
    gone = asyncio.Event()

    async def receive():
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {name.decode(): value.decode() for name, value in message["headers"]}
            return
        answer["body"] += message.get("body", b"")
        answer["parts"] += 1
        if leave_after_chunks is not None and answer["parts"] >= leave_after_chunks:
            gone.set()

    await application(scope, receive, send)
    gone.set()
    return answer


def on_a_loop(make: Callable[[], Awaitable[Any]]) -> Any:
    """`await make()` on a new event loop, closing the vendor clients made on it after."""

    async def main() -> Any:
        try:
            return await make()
        finally:
            await close_async_clients()

    return asyncio.run(main())


def run(application, *calls: tuple) -> list[dict]:
    """Requests one after the other on one event loop."""

    async def all_of_them() -> list[dict]:
        return [await exchange(application, *arguments) for arguments in calls]

    return on_a_loop(all_of_them)


def rows(request_id: str) -> list[LLMRequestLog]:
    return list(LLMRequestLog.objects.filter(request_id=request_id))


def test_the_fast_paths_are_the_views_urls():
    from django.urls import reverse

    canonical = reverse("api-prompt")
    assert {canonical, canonical.rstrip("/")} == FAST_PATHS


def test_a_cached_key_is_served_on_the_loop_with_the_same_answer_headers_and_log_line(handler, key, fake_groq, caplog):
    api_key, raw_key = key
    fake_groq.will(*[Behaviour(text="Paris.", prompt_tokens=14, completion_tokens=2)] * 2)
    body = {"prompt": "capital?", "tags": {"app": "t"}}
    caplog.set_level(logging.INFO, logger="llm.requests")
    with ordinary_requests() as ordinary:
        slow, fast = run(handler, (body, raw_key), (body, raw_key, [(b"x-request-id", b"client-id-1")]))
    assert len(ordinary) == 1  # the first: the key was not cached yet
    assert slow["status"] == fast["status"] == 200
    # Header by header: the same names and values, but for the request's own id and the length of
    # its answer (whose request_id and latency differ), given on both paths.
    assert slow["headers"].keys() == fast["headers"].keys()
    differing = {name for name in slow["headers"] if slow["headers"][name] != fast["headers"][name]}
    assert differing <= {"X-Request-ID", "Content-Length"} and "X-Request-ID" in differing
    for answer in (slow, fast):
        assert int(answer["headers"]["Content-Length"]) == len(answer["body"])
    assert fast["headers"]["X-Request-ID"] == "client-id-1"
    assert fast["headers"]["Vary"] == "Accept" and fast["headers"]["Allow"] == "POST, OPTIONS"
    slow_answer, fast_answer = json.loads(slow["body"]), json.loads(fast["body"])
    assert slow_answer.keys() == fast_answer.keys()
    assert fast_answer["response"] == "Paris." and fast_answer["total_tokens"] == 16
    [row] = rows(fast_answer["request_id"])
    assert (row.prompt_tokens, row.completion_tokens, row.response_text) == (14, 2, "Paris.")
    assert row.api_key_name == "fast" and row.tags == {"app": "t"} and row.source == "proxy"
    assert float(row.cost_estimate) == fast_answer["cost_estimate"]
    # One request line each, in the same form, naming the key.
    lines = [record.getMessage() for record in caplog.records if record.name == "llm.requests"]
    assert len(lines) == 2
    for line in lines:
        method, path, status, duration, unit, caller = line.split(" ")
        assert (method, path, status, unit, caller) == ("POST", PATH, "200", "ms", "api_key=fast")
        assert float(duration) >= 0


def test_a_host_not_allowed_takes_the_ordinary_path_and_is_refused(handler, key, fake_groq):
    _, raw_key = key
    fake_groq.will(*[Behaviour(text="Paris.")] * 2)
    body = {"prompt": "capital?"}
    with ordinary_requests() as ordinary:
        warm, refused = run(handler, (body, raw_key), (body, raw_key, [(b"host", b"evil.example")]))
    assert warm["status"] == 200  # the key is cached now: only the Host keeps the second off the loop
    assert len(ordinary) == 2
    assert refused["status"] == 400
    assert len(fake_groq.requests) == 1


def test_a_stream_on_the_fast_path(handler, key, fake_groq):
    _, raw_key = key
    fake_groq.will(Behaviour(text="warm"), Behaviour(chunks=["Bon", "jour"], prompt_tokens=5, completion_tokens=2))
    with ordinary_requests() as ordinary:
        _, streamed = run(handler, ({"prompt": "warm up"}, raw_key), ({"prompt": "greet", "stream": True}, raw_key))
    assert len(ordinary) == 1
    assert streamed["headers"]["Content-Type"].startswith("text/event-stream")
    assert streamed["headers"]["Cache-Control"] == "no-cache"
    events = [block.split("\n") for block in streamed["body"].decode().strip().split("\n\n")]
    assert [lines[0] for lines in events] == ["event: start", "event: chunk", "event: chunk", "event: done"]
    done = json.loads(events[-1][1].removeprefix("data: "))
    [row] = rows(done["request_id"])
    assert row.response_text == "Bonjour" == done["response"] and row.ttft_ms is not None


@pytest.mark.parametrize(
    ("behaviour", "status", "error_type"),
    [
        (Behaviour(mode="status", status=500, error_message="Boom"), 502, "server_error"),
        (Behaviour(mode="status", status=429, error_message="Slow", headers={"retry-after": "7"}), 429, "rate_limit"),
        (Behaviour(mode="drop"), 502, "connection_error"),
    ],
)
def test_a_vendor_error_on_the_fast_path_is_answered_as_on_the_ordinary_path(
    handler, key, fake_groq, behaviour, status, error_type
):
    _, raw_key = key
    fake_groq.will(behaviour, behaviour)
    with ordinary_requests() as ordinary:
        slow, fast = run(handler, ({"prompt": "fails 1"}, raw_key), ({"prompt": "fails 2"}, raw_key))
    assert len(ordinary) == 1
    assert slow["status"] == fast["status"] == status
    slow_answer, fast_answer = json.loads(slow["body"]), json.loads(fast["body"])
    assert slow_answer.keys() == fast_answer.keys()
    assert fast_answer["error_type"] == error_type
    assert slow["headers"].get("Retry-After") == fast["headers"].get("Retry-After")
    [row] = rows(fast_answer["request_id"])
    assert row.status == "error" and row.error_type == error_type and row.prompt_text == "fails 2"


def test_the_request_line_names_the_final_status_not_the_placeholders(handler, key, fake_groq, caplog):
    """Both paths answer a deferred placeholder (200) to the middleware: the request line is the
    final answer's, written once the call has ended, with the request's id for the JSON log."""
    _, raw_key = key
    fake_groq.will(*[Behaviour(mode="status", status=500, error_message="Boom")] * 2, Behaviour(text="Oui."))
    caplog.set_level(logging.INFO, logger="llm.requests")
    json_lines = JSONLines()
    logging.getLogger("llm.requests").addHandler(json_lines)
    with ordinary_requests() as ordinary:
        answers = run(
            handler,
            ({"prompt": "fails 1"}, raw_key, [(b"x-request-id", b"slow-1")]),
            ({"prompt": "fails 2"}, raw_key, [(b"x-request-id", b"fast-2")]),
            ({"prompt": "works"}, raw_key, [(b"x-request-id", b"fast-3")]),
        )
    assert len(ordinary) == 1
    assert [answer["status"] for answer in answers] == [502, 502, 200]
    records = [record for record in caplog.records if record.name == "llm.requests"]
    assert [(record.status, record.getMessage().split(" ")[2]) for record in records] == [
        (502, "502"),
        (502, "502"),
        (200, "200"),
    ]
    assert [record.api_key for record in records] == ["fast"] * 3
    assert all(record.duration_ms >= 0 for record in records)
    logging.getLogger("llm.requests").removeHandler(json_lines)
    assert [(line["status"], line["request_id"]) for line in json_lines.lines] == [
        (502, "slow-1"),
        (502, "fast-2"),
        (200, "fast-3"),
    ]


class JSONLines(logging.Handler):
    """Each record as LOG_FORMAT=json writes it, formatted as it is emitted (the request id is read then)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict] = []
        self.formatter = JSONFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_a_timeout_after_the_sdks_retries_is_one_row(handler, key, fake_groq, settings):
    """The SDK retries a timed-out call once (GROQ_MAX_RETRIES=1): two attempts, one row, 504."""
    _, raw_key = key
    settings.GROQ_MAX_RETRIES = 1
    settings.GROQ_TIMEOUT_SECONDS = 0.5
    fake_groq.will(Behaviour(text="warm"), Behaviour(delay_seconds=1.5), Behaviour(delay_seconds=1.5))
    with ordinary_requests() as ordinary:
        _, timed_out = run(handler, ({"prompt": "warm"}, raw_key), ({"prompt": "too slow"}, raw_key))
    assert len(ordinary) == 1
    assert timed_out["status"] == 504
    assert len(fake_groq.requests) == 3
    [row] = rows(json.loads(timed_out["body"])["request_id"])
    assert row.error_type == "timeout" and row.latency_ms >= 2 * 500


def test_the_sdks_retry_after_a_server_error_answers_once(handler, key, fake_groq, settings):
    _, raw_key = key
    settings.GROQ_MAX_RETRIES = 2
    fake_groq.will(
        Behaviour(text="warm"),
        Behaviour(mode="status", status=503, error_message="Busy", headers={"retry-after": "0"}),
        Behaviour(text="Second time lucky.", prompt_tokens=3, completion_tokens=4),
    )
    with ordinary_requests() as ordinary:
        _, retried = run(handler, ({"prompt": "warm"}, raw_key), ({"prompt": "retry me"}, raw_key))
    assert len(ordinary) == 1
    assert retried["status"] == 200
    assert len(fake_groq.requests) == 3
    [row] = rows(json.loads(retried["body"])["request_id"])
    assert row.status == "success" and row.response_text == "Second time lucky." and row.total_tokens == 7


def test_a_client_leaving_a_fast_stream_leaves_one_complete_row(handler, key, fake_groq):
    _, raw_key = key
    words = [f"w{n}" for n in range(30)]
    fake_groq.will(
        Behaviour(text="warm"),
        Behaviour(text=" ".join(words), prompt_tokens=9, completion_tokens=30, chunk_delay_seconds=0.01),
    )
    with ordinary_requests() as ordinary:
        _, left = run(
            handler,
            ({"prompt": "warm"}, raw_key),
            ({"prompt": "long answer", "stream": True}, raw_key, (), 2),  # start and one chunk
        )
    assert len(ordinary) == 1
    assert b"event: done" not in left["body"]
    [row] = LLMRequestLog.objects.filter(prompt_text="long answer")
    assert row.status == "success" and row.response_text == " ".join(words)
    assert (row.prompt_tokens, row.completion_tokens) == (9, 30)
    assert row.tags["client_disconnected"] == "true"


def test_a_key_revoked_while_cached_is_refused(handler, key, fake_groq):
    api_key, raw_key = key
    fake_groq.will(Behaviour(text="warm"), Behaviour(text="served"))

    async def calls() -> list[dict]:
        first = await exchange(handler, {"prompt": "before"}, raw_key)
        second = await exchange(handler, {"prompt": "cached"}, raw_key)
        # Revoked by this process (the admin, the API): its key cache is emptied at once.
        await asyncio.get_running_loop().run_in_executor(None, revoke, api_key.pk)
        third = await exchange(handler, {"prompt": "after"}, raw_key)
        return [first, second, third]

    with ordinary_requests() as ordinary:
        first, second, third = on_a_loop(calls)
    assert [first["status"], second["status"], third["status"]] == [200, 200, 401]
    assert len(ordinary) == 2  # the first and the refused one
    assert json.loads(third["body"]) == {"error": "Invalid or revoked API key."}
    assert not LLMRequestLog.objects.filter(prompt_text="after").exists()


def revoke(pk: int) -> None:
    from django.db import connection

    APIKey.objects.get(pk=pk).revoke()
    connection.close()


def test_a_spent_budget_is_refused_by_the_ordinary_path(handler, key, fake_groq):
    _, raw_key = key
    Budget.objects.create(
        name="Fast key",
        scope="api_key",
        scope_value="fast",
        period="month",
        amount_usd=Decimal("0.50"),
        hard_limit=True,
    )
    make_log(api_key_name="fast", cost_estimate=Decimal("0.75"), timestamp=timezone.now())
    with ordinary_requests() as ordinary:
        answers = run(handler, *[({"prompt": f"refused {n}"}, raw_key) for n in range(3)])
    assert len(ordinary) == 3  # the budget list covers the key: never the fast path
    assert [answer["status"] for answer in answers] == [429] * 3
    assert {json.loads(answer["body"])["error_type"] for answer in answers} == {"budget_exceeded"}
    assert fake_groq.requests == []
    assert LLMRequestLog.objects.filter(prompt_text__startswith="refused", error_type="budget_exceeded").count() == 3


def test_the_rate_limit_holds_across_both_paths(handler, key, fake_groq, settings):
    """PROMPT_RATE_LIMIT=100 lets a process admit 1 prompt on its own between contacts: some
    prompts are served on the loop, yet one process admits exactly the limit (llm/throttles.py: a
    single process is exact) and refuses the rest with the ordinary 429."""
    _, raw_key = key
    settings.PROMPT_RATE_LIMIT = 100
    fake_groq.default = Behaviour(text="ok", prompt_tokens=1, completion_tokens=1)
    sent = 110
    minute = int(time.time() // 60)
    with ordinary_requests() as ordinary:
        answers = run(handler, *[({"prompt": f"limited {n}"}, raw_key) for n in range(sent)])
    if int(time.time() // 60) != minute:
        pytest.skip("a minute boundary fell inside the test")  # the window is the calendar minute
    assert [answer["status"] for answer in answers] == [200] * 100 + [429] * (sent - 100)
    assert len(ordinary) < sent  # some were served on the loop
    refused = json.loads(answers[-1]["body"])
    assert "100 prompts a minute" in refused["error"] and answers[-1]["headers"]["Retry-After"]
    assert LLMRequestLog.objects.filter(prompt_text__startswith="limited").count() == 100


def test_a_stale_rate_limit_view_is_decided_by_the_shared_row_on_the_fast_path(handler, key, fake_groq, settings):
    """Once this process's view of the shared count is older than CONTACT_SECONDS, a prompt stays
    on the fast path and waits for throttles.use() (the row's contact, in a thread): admitted and
    counted in the row once, or, when other processes used up the minute meanwhile, refused with
    the ordinary path's 429 (same headers, same shape) and no row."""
    api_key, raw_key = key
    settings.PROMPT_RATE_LIMIT = 100  # a process may admit 1 on its own between contacts
    fake_groq.default = Behaviour(text="ok", prompt_tokens=1, completion_tokens=1)
    subject, minute = f"prompt:key:{api_key.pk}", int(time.time() // 60)

    async def calls() -> list[dict]:
        answers = [await exchange(handler, {"prompt": "first"}, raw_key)]  # ordinary: caches the key
        await asyncio.sleep(throttles.CONTACT_SECONDS + 0.05)
        answers.append(await exchange(handler, {"prompt": "stale view"}, raw_key))
        await asyncio.sleep(throttles.CONTACT_SECONDS + 0.05)
        # Another process takes the rest of the minute.
        await asyncio.to_thread(use_up_the_minute, subject, minute)
        answers.append(await exchange(handler, {"prompt": "over, stale view"}, raw_key))
        answers.append(await exchange(handler, {"prompt": "over, known"}, raw_key))
        return answers

    with ordinary_requests() as ordinary:
        first, stale, refused_fast, refused_ordinary = on_a_loop(calls)
    if int(time.time() // 60) != minute:
        pytest.skip("a minute boundary fell inside the test")  # the window is the calendar minute
    # The first and the last take the ordinary path (a key not cached yet; a limit known passed).
    assert len(ordinary) == 2
    assert (first["status"], stale["status"]) == (200, 200)
    assert list(LLMRequestLog.objects.filter(prompt_text="stale view").values_list("status", flat=True)) == ["success"]
    assert refused_fast["status"] == refused_ordinary["status"] == 429
    # Content-Length too: CommonMiddleware adds it to an ordinary answer made in the view, and a
    # deferred answer gets it when it is resolved (core/deferred.py).
    assert refused_fast["headers"].keys() == refused_ordinary["headers"].keys()
    for name in refused_fast["headers"].keys() - {"X-Request-ID", "Retry-After", "Content-Length"}:
        assert refused_fast["headers"][name] == refused_ordinary["headers"][name], name
    assert abs(int(refused_fast["headers"]["Retry-After"]) - int(refused_ordinary["headers"]["Retry-After"])) <= 1
    fast_body, ordinary_body = json.loads(refused_fast["body"]), json.loads(refused_ordinary["body"])
    assert fast_body.keys() == ordinary_body.keys() == {"error"}
    assert "100 prompts a minute" in fast_body["error"] and 'API key "fast"' in fast_body["error"]
    assert not LLMRequestLog.objects.filter(prompt_text__startswith="over").exists()
    # The row counts the two admitted prompts and the other process's 98, nothing refused.
    assert RateLimitCounter.objects.get(subject=subject, minute=minute).hits == 100


def use_up_the_minute(subject: str, minute: int) -> None:
    try:
        RateLimitCounter.objects.filter(subject=subject, minute=minute).update(hits=F("hits") + 98)
    finally:
        connection.close()


def test_caches_gone_stale_are_filled_again_once_and_the_prompts_stay_on_the_fast_path(
    handler, key, fake_groq, monkeypatch
):
    """When the key's, the budgets' and the prices' cache times are up together, the prompts
    arriving then wait for one refill of each (in a thread) and are served on the loop, instead
    of all taking the ordinary path until one of them has refilled the caches."""
    _, raw_key = key
    # Long enough that a refill is still fresh when the prompts waiting on it try again, on a
    # loaded machine too.
    monkeypatch.setattr(auth, "KEY_CACHE_SECONDS", 1.0)
    monkeypatch.setattr(budgets, "HARD_LIMIT_CACHE_SECONDS", 1.0)
    monkeypatch.setattr(models, "PRICE_CACHE_SECONDS", 1.0)
    fake_groq.default = Behaviour(text="ok", prompt_tokens=1, completion_tokens=1)

    async def calls() -> list[dict]:
        answers = [await exchange(handler, {"prompt": f"warm {n}"}, raw_key) for n in range(2)]
        await asyncio.sleep(1.1)  # every cache's time is up
        # (The prices' too, unless a row written meanwhile read them again.)
        assert handler.stale_fast_caches(f"Bearer {raw_key}").keys() >= {f"key {APIKey.hash_key(raw_key)}", "budgets"}
        answers += await asyncio.gather(*(exchange(handler, {"prompt": f"burst {n}"}, raw_key) for n in range(6)))
        return answers

    with ordinary_requests() as ordinary:
        answers = on_a_loop(calls)
    assert len(ordinary) == 1  # the very first: a key never seen takes the ordinary path
    assert [answer["status"] for answer in answers] == [200] * 8
    assert handler.refills == {}
    for n in range(6):
        assert LLMRequestLog.objects.filter(prompt_text=f"burst {n}").count() == 1
    # A key revoked meanwhile is looked up, found revoked, and refused by the ordinary path.
    APIKey.objects.filter(name="fast").update(revoked_at=timezone.now())
    auth.forget_keys()
    with ordinary_requests() as ordinary:
        [refused] = run(handler, ({"prompt": "revoked"}, raw_key))
    assert refused["status"] == 401 and len(ordinary) == 1
    assert handler.stale_fast_caches(f"Bearer {raw_key}").keys() <= {"budgets", "prices"}


def test_a_key_only_the_ordinary_path_has_looked_up_is_refilled_for_the_fast_path_too(
    handler, key, fake_groq, monkeypatch
):
    """A worker whose first prompts all came at once served each on the ordinary path, which cached
    the key; once that cache time is up, the next prompts wait for one lookup of the key and are
    served on the loop (they all took the ordinary path when only the fast path's own keys were
    looked up again). A key the cache has never held valid is still the ordinary path's alone."""
    _, raw_key = key
    monkeypatch.setattr(auth, "KEY_CACHE_SECONDS", 1.0)
    fake_groq.default = Behaviour(text="ok", prompt_tokens=1, completion_tokens=1)

    async def calls() -> list[dict]:
        answers = [await exchange(handler, {"prompt": "first"}, raw_key)]
        await asyncio.sleep(1.1)  # the key's time in the cache is up
        assert f"key {APIKey.hash_key(raw_key)}" in handler.stale_fast_caches(f"Bearer {raw_key}")
        answers += await asyncio.gather(*(exchange(handler, {"prompt": f"later {n}"}, raw_key) for n in range(4)))
        return answers

    with ordinary_requests() as ordinary:
        answers = on_a_loop(calls)
    assert len(ordinary) == 1  # the first, for a key never seen; none of the four after it
    assert [answer["status"] for answer in answers] == [200] * 5
    for n in range(4):
        assert LLMRequestLog.objects.filter(prompt_text=f"later {n}").count() == 1
    assert not any(name.startswith("key") for name in handler.stale_fast_caches("Bearer not-a-key"))


def test_what_the_fast_path_cannot_decide_takes_the_ordinary_path(handler, key, fake_groq):
    _, raw_key = key
    fake_groq.default = Behaviour(text="ok")
    variants = [
        ({"prompt": ""}, raw_key, ()),  # invalid: the view's 400
        ({"prompt": "hi"}, raw_key, [(b"accept", b"text/html")]),  # the browsable API
        ({"prompt": "hi"}, raw_key, [(b"accept", b"application/json; indent=2")]),
    ]

    async def calls() -> list[dict]:
        await exchange(handler, {"prompt": "warm"}, raw_key)
        return [await exchange(handler, *variant) for variant in variants]

    with ordinary_requests() as ordinary:
        invalid, html, indented = on_a_loop(calls)
    assert len(ordinary) == 1 + len(variants)
    assert invalid["status"] == 400 and "prompt" in json.loads(invalid["body"])["fields"]
    assert html["status"] == 200 and html["headers"]["Content-Type"].startswith("text/html")
    assert indented["status"] == 200 and b'\n  "request_id"' in indented["body"]


def test_prompts_from_many_threads_of_callers_are_each_logged_once(handler, key, fake_groq):
    """Forty prompts at once on one loop, fast and ordinary mixed: forty rows."""
    _, raw_key = key
    fake_groq.default = Behaviour(text="ok", delay_seconds=0.05)

    async def calls() -> list[dict]:
        await exchange(handler, {"prompt": "warm"}, raw_key)
        return await asyncio.gather(
            *(exchange(handler, {"prompt": f"at once {n}", "stream": n % 2 == 1}, raw_key) for n in range(40))
        )

    answers = on_a_loop(calls)
    assert [answer["status"] for answer in answers] == [200] * 40
    counts = {n: LLMRequestLog.objects.filter(prompt_text=f"at once {n}").count() for n in range(40)}
    assert counts == dict.fromkeys(range(40), 1)


def test_an_answer_that_is_not_json_is_a_logged_vendor_error(handler, key, fake_groq):
    """The fast path reads Groq's answer as plain JSON (llm/providers/groq.py): a 200 that is no
    JSON object is the vendor's failure, answered and logged once, not a crash."""
    _, raw_key = key
    fake_groq.will(Behaviour(text="warm"), Behaviour(mode="status", status=200, raw_body="<html>oops</html>"))
    _, broken = run(handler, ({"prompt": "warm"}, raw_key), ({"prompt": "not json"}, raw_key))
    assert broken["status"] == 502
    answer = json.loads(broken["body"])
    [row] = rows(answer["request_id"])
    assert row.status == "error" and row.error_type == answer["error_type"] != ""
