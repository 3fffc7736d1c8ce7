"""The proxy's hot path as core/asgi.py serves it, in process: what was cut from a prompt's CPU
keeps its answers. The prompt's input is validated as PromptRequestSerializer validates it (its
fields copied shallowly per request, llm/api/prompt.py), and a deferred answer is closed on the
event loop, once, while a sync answer is still closed in a pool thread."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import groq
import pytest
from django.core import signals
from django.db import connections

from core.asgi import GC_THRESHOLDS, THREADS, ObservatoryASGIHandler, settle_garbage_collector
from llm.api.prompt import PromptInput, rendered
from llm.models import APIKey, LLMRequestLog
from llm.providers.chat_completions import close_async_clients
from llm.providers.groq import CHAT_COMPLETIONS_PATH, chat_completions_url
from llm.serializers import PromptRequestSerializer

# Bodies the prompt endpoint may get: valid ones, and each rule broken once (the storage's limits
# too: NUL, a lone surrogate, NaN, a 32-bit overflow).
BODIES = [
    {"prompt": "Hi"},
    {"prompt": "Hi", "model": "llama-3.1-8b-instant", "max_tokens": 5, "temperature": 0.5, "stream": True},
    {"prompt": "Hi", "tags": {"team": "search"}, "user_id": "u1", "session_id": "s1", "system_prompt": ""},
    {"prompt": "Hi", "provider": "cerebras", "model": "some-model"},
    {},
    {"prompt": "   "},
    {"prompt": "a\x00b"},
    {"prompt": "\ud800"},
    {"prompt": "Hi", "model": "bad model!"},
    {"prompt": "Hi", "max_tokens": 2**31},
    {"prompt": "Hi", "max_tokens": 0},
    {"prompt": "Hi", "temperature": float("nan")},
    {"prompt": "Hi", "temperature": 9},
    {"prompt": "Hi", "tags": ["not", "a", "dict"]},
    {"prompt": "Hi", "tags": {"k": 1}},
    {"prompt": "Hi", "stream": "maybe"},
    {"prompt": "Hi", "provider": "nobody"},
    {"prompt": "Hi", "model": "no-such-model"},
    {"prompt": "x" * 10**6},
    {"prompt": 12, "user_id": "u" * 201},
]


def outcome(serializer_class: type, body: dict) -> tuple:
    serializer = serializer_class(data=body)
    valid = serializer.is_valid()
    return valid, dict(serializer.validated_data) if valid else json.loads(json.dumps(serializer.errors))


@pytest.mark.django_db
def test_prompt_input_validates_as_the_documented_serializer():
    # Twice over, interleaved: a field copy must keep nothing of the body it validated before.
    for body in BODIES + BODIES[::-1]:
        assert outcome(PromptInput, body) == outcome(PromptRequestSerializer, body), body
    # The declared fields themselves were never bound to a serializer.
    assert all(getattr(field, "parent", None) is None for field in PromptRequestSerializer._declared_fields.values())


@pytest.mark.django_db(transaction=True)
def test_prompt_input_in_threads_at_once():
    expected = [outcome(PromptRequestSerializer, body) for body in BODIES]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            assert list(pool.map(lambda body: outcome(PromptInput, body), BODIES)) == expected


async def call(application, method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> dict:
    """One request through the ASGI application; the answer's status, headers and body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-length", str(len(body)).encode()), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    answer: dict = {"body": b""}
    done = asyncio.Event()

    async def receive():
        if messages:
            return messages.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = dict(message["headers"])
        else:
            answer["body"] += message.get("body", b"")

    await application(scope, receive, send)
    done.set()
    return answer


def close_connections(application: ObservatoryASGIHandler) -> None:
    """Close each pool thread's database connection (PostgreSQL drops the test database after)."""
    barrier = threading.Barrier(THREADS)

    def close() -> None:
        barrier.wait(timeout=5)  # one task per thread: every thread closes its own
        connections.close_all()

    for future in [application.executor.submit(close) for _ in range(THREADS)]:
        future.result()
    application.writer.submit(connections.close_all).result()
    application.executor.shutdown(wait=True)
    application.writer.shutdown(wait=True)


@pytest.mark.django_db(transaction=True)
def test_a_deferred_prompt_is_closed_once_on_the_loop(fake_groq):
    key = APIKey.generate("hot-path", APIKey.ALL_SCOPES)[1]
    auth = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    finished: list[str] = []

    def count(**kwargs) -> None:
        finished.append(threading.current_thread().name)

    async def requests() -> tuple[dict, list[str], dict]:
        prompt = await call(application, "POST", "/api/llm/prompt/", b'{"prompt": "Hi there"}', auth)
        on_the_loop = list(finished)
        finished.clear()
        read = await call(application, "GET", "/api/logs/", b"", auth)
        await close_async_clients()
        return prompt, on_the_loop, read

    signals.request_finished.connect(count, dispatch_uid="test_serving_hot_path")
    application = ObservatoryASGIHandler()
    try:
        prompt, on_the_loop, read = asyncio.run(requests())
    finally:
        signals.request_finished.disconnect(dispatch_uid="test_serving_hot_path")
        close_connections(application)
    assert prompt["status"] == 200, prompt["body"][:300]
    answer = json.loads(prompt["body"])
    # The middleware's headers still reach the final answer.
    assert prompt["headers"][b"X-Request-ID"]
    assert prompt["headers"][b"X-Content-Type-Options"] == b"nosniff"
    assert LLMRequestLog.objects.filter(request_id=answer["request_id"]).count() == 1
    assert on_the_loop == [threading.main_thread().name]
    assert read["status"] == 200
    assert len(finished) == 1 and finished[0].startswith("django")


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:9999", "http://127.0.0.1:9999/", "http://proxy:1/prefix", "https://api.groq.com/"]
)
def test_the_groq_endpoint_url_is_the_one_the_sdk_would_join(base_url):
    with groq.Groq(api_key="gsk_x", base_url=base_url) as client:  # the same URL joining as AsyncGroq's
        absolute = chat_completions_url(str(client.base_url))
        # What the SDK posts to, given the path as documented, and given our parsed URL.
        assert client._prepare_url(absolute) == client._prepare_url(CHAT_COMPLETIONS_PATH)
    assert str(absolute) == base_url.rstrip("/") + CHAT_COMPLETIONS_PATH


class Node:
    """An object that can be part of a reference cycle."""


def test_a_worker_leaves_its_start_up_heap_to_the_collector_and_still_collects_what_it_makes_later():
    """settle_garbage_collector (a worker's lifespan startup): what exists then is frozen, out of
    every collection's walk; a cycle made afterwards is still found and freed by a collection."""
    thresholds = gc.get_threshold()
    before = Node()
    before.itself = before
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 0
        # Out of the generations every collection walks (in the permanent one).
        assert not any(tracked is before for generation in range(3) for tracked in gc.get_objects(generation))
        assert gc.get_threshold() == GC_THRESHOLDS
        later = Node()
        later.itself = later
        gone = weakref.ref(later)
        del later
        assert gone() is not None  # a cycle: reference counting alone cannot free it
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_an_answer_the_renderer_must_escape_leaves_the_next_answers_as_they_were():
    """The fast path renders the view's Response with DRF's JSON renderer (llm.api.prompt.rendered): a
    lone surrogate in a vendor's text is escaped in that answer only (the renderer escapes the whole
    answer to ASCII when it cannot encode it), not in every answer after it."""
    from rest_framework.response import Response

    escaped = rendered(Response({"response": "x\ud800"}))
    after = rendered(Response({"response": "café"}, status=201, headers={"Retry-After": "3"}))
    assert escaped.content == b'{"response":"x\\ud800"}'
    assert after.content == '{"response":"café"}'.encode()
    assert after.status_code == 201 and after["Retry-After"] == "3" and after["Content-Type"] == "application/json"
