"""Cerebras and OpenAI-compatible servers through the proxy: the real `cerebras-cloud-sdk` and `openai`
SDKs against the fake server (tests/fake_groq.py speaks both dialects), on the sync path (the API view
under the test client) and the async path (asend_prompt / AsyncPromptStream on an event loop, the
way core/asgi.py serves them). Every call is logged once, with its tokens and its cost."""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal

import pytest
from django.db import DEFAULT_DB_ALIAS, connections

from llm.models import LLMRequestLog, ModelPrice
from llm.providers import ChatRequest, get_provider
from llm.proxy import AsyncPromptStream, CallContext, asend_prompt, estimate_tokens
from tests.fake_groq import Behaviour
from tests.test_prompt_api import URL, parse_sse

pytestmark = pytest.mark.django_db

# provider -> (a seeded model, its input, output and cached-input price per million, the key setting)
PROVIDERS = {
    "cerebras": ("llama-3.3-70b", "0.85", "1.20", None, "CEREBRAS_API_KEY"),
    "openai": ("gpt-4o-mini", "0.15", "0.60", "0.075", "OPENAI_API_KEY"),
}


@pytest.fixture
def fake(fake_groq, provider_prices):
    """The fake server (conftest points Cerebras and the OpenAI-compatible provider at it too)."""
    return fake_groq


def cost(prompt: int, completion: int, input_price: str, output_price: str) -> Decimal:
    return ((prompt * Decimal(input_price) + completion * Decimal(output_price)) / Decimal(1_000_000)).quantize(
        Decimal("0.0000000001")
    )


def on_this_connection():
    """The writer-thread hop of core/asgi.py (`run_sync`), run in place on the test's own database
    connection: on an event loop Django would open another one, outside the test's transaction."""
    connection = connections[DEFAULT_DB_ALIAS]

    async def run_sync(function, *args):
        connections[DEFAULT_DB_ALIAS] = connection
        return function(*args)

    return run_sync


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_prompt_is_routed_answered_logged_and_priced(api_client, fake, provider):
    model, input_price, output_price, _, _ = PROVIDERS[provider]
    fake.will(Behaviour(text="Paris.", prompt_tokens=1_200, completion_tokens=300))
    response = api_client.post(URL, {"prompt": "capital of France?", "model": model}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    sent = fake.requests[0]
    assert sent["_dialect"] == provider  # the path its SDK posts to
    assert sent["_authorization"] == f"Bearer {provider}-test-key"
    assert sent["model"] == model and sent["messages"] == [{"role": "user", "content": "capital of France?"}]
    row = LLMRequestLog.objects.get()
    assert (row.provider, row.model_name, row.response_text) == (provider, model, "Paris.")
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (1_200, 300, 1_500)
    assert row.cost_estimate == cost(1_200, 300, input_price, output_price)
    assert body["provider"] == provider and body["tokens_estimated"] is False
    assert Decimal(str(body["cost_estimate"])) == row.cost_estimate


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_relays_chunks_and_logs_usage_and_time_to_first_token(api_client, fake, provider):
    model, input_price, output_price, _, _ = PROVIDERS[provider]
    fake.will(Behaviour(text="one two three four", prompt_tokens=40, completion_tokens=4, chunk_delay_seconds=0.01))
    response = api_client.post(URL, {"prompt": "count", "model": model, "stream": True}, format="json")
    events = parse_sse(b"".join(response.streaming_content))
    assert [name for name, _ in events] == ["start", "chunk", "chunk", "chunk", "chunk", "done"]
    assert "".join(data["text"] for name, data in events if name == "chunk") == "one two three four"
    row = LLMRequestLog.objects.get()
    assert (row.prompt_tokens, row.completion_tokens, row.tokens_estimated) == (40, 4, False)
    assert row.cost_estimate == cost(40, 4, input_price, output_price)
    assert row.ttft_ms is not None and 0 < row.ttft_ms < row.latency_ms
    assert row.output_tokens_per_second == pytest.approx(4 / ((row.latency_ms - row.ttft_ms) / 1000))
    assert events[-1][1]["output_tokens_per_second"] == pytest.approx(row.output_tokens_per_second)
    if provider == "openai":
        assert fake.requests[0]["stream_options"] == {"include_usage": True}


# (behaviour, HTTP answer, error type, words of our message); {vendor} and {key} per provider.
FAILURES = [
    (Behaviour(mode="status", status=401, error_message="Invalid API Key"), 502, "authentication", "{key}"),
    (
        Behaviour(mode="status", status=429, error_message="Too many requests", headers={"Retry-After": "7"}),
        429,
        "rate_limit",
        "retry after 7 s",
    ),
    (Behaviour(mode="status", status=500, error_message="Internal Server Error"), 502, "server_error", "its side"),
    (Behaviour(mode="drop"), 502, "connection_error", "_BASE_URL"),
]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("behaviour", "http_status", "error_type", "words"), FAILURES)
def test_each_failure_is_classified_answered_and_logged_once(
    api_client, fake, provider, behaviour, http_status, error_type, words
):
    model, *_, key = PROVIDERS[provider]
    fake.will(behaviour)
    response = api_client.post(URL, {"prompt": "hi", "model": model}, format="json")
    assert response.status_code == http_status
    body = response.json()
    assert body["error_type"] == error_type
    assert words.format(key=key) in body["error_message"]
    assert ("Cerebras" if provider == "cerebras" else "OpenAI") in body["error_message"]
    if behaviour.mode == "status":
        assert body["upstream_message"] == behaviour.error_message
    if http_status == 429:
        assert response["Retry-After"] == "7" and body["retry_after_seconds"] == 7
    row = LLMRequestLog.objects.get()
    assert (row.provider, row.status, row.error_type) == (provider, "error", error_type)
    assert row.cost_estimate == 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_timeout_answers_504_naming_the_providers_setting(api_client, fake, provider, settings):
    model, *_ = PROVIDERS[provider]
    setattr(settings, f"{provider.upper()}_TIMEOUT_SECONDS", 0.3)
    fake.will(Behaviour(delay_seconds=3))
    response = api_client.post(URL, {"prompt": "slow", "model": model}, format="json")
    assert response.status_code == 504
    assert f"{provider.upper()}_TIMEOUT_SECONDS = 0.3 s" in response.json()["error_message"]
    row = LLMRequestLog.objects.get()
    assert row.error_type == "timeout" and row.latency_ms >= 300


BROKEN_STREAMS = [("stream_error", "server_error"), ("drop_stream", "connection_error")]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("mode", "error_type"), BROKEN_STREAMS)
def test_a_stream_that_breaks_ends_with_an_error_event_and_one_row(api_client, fake, provider, mode, error_type):
    model, *_ = PROVIDERS[provider]
    fake.will(Behaviour(mode=mode, text="a b c d e f", error_message="model overloaded"))
    response = api_client.post(URL, {"prompt": "hi", "model": model, "stream": True}, format="json")
    events = parse_sse(b"".join(response.streaming_content))
    assert events[-1][0] == "error" and events[-1][1]["error_type"] == error_type
    row = LLMRequestLog.objects.get()
    assert (row.provider, row.error_type, row.response_text) == (provider, error_type, "a b c ")
    # No usage arrived: the counts of what did arrive are estimated, and the row says so.
    assert row.tokens_estimated is True
    assert (row.prompt_tokens, row.completion_tokens) == (estimate_tokens("hi"), estimate_tokens("a b c "))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_without_a_key_answers_503_naming_its_variable(api_client, fake, provider, settings):
    model, *_, key = PROVIDERS[provider]
    setattr(settings, key, "")
    response = api_client.post(URL, {"prompt": "hi", "model": model}, format="json")
    assert response.status_code == 503
    assert f"set {key} in .env" in response.json()["error_message"]
    assert fake.requests == []
    assert LLMRequestLog.objects.get().error_type == "configuration"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_async_path_answers_and_streams_through_the_async_clients(fake, provider):
    model, input_price, output_price, _, _ = PROVIDERS[provider]
    fake.will(
        Behaviour(text="Paris.", prompt_tokens=10, completion_tokens=2),
        Behaviour(text="x y z", prompt_tokens=30, completion_tokens=3),
        Behaviour(mode="status", status=429, error_message="slow down", headers={"Retry-After": "2"}),
    )
    chat = ChatRequest(prompt="capital?", model=model)
    run_inline = on_this_connection()

    async def calls():
        sent = await asend_prompt(chat, CallContext(), get_provider(provider), run_inline)
        stream = AsyncPromptStream(chat, CallContext(), get_provider(provider), run_inline)
        assert await stream.open() is None
        events = [event async for event in stream.events(lambda outcome: {"ok": outcome.error is None})]
        refused = await asend_prompt(chat, CallContext(), get_provider(provider), run_inline)
        return sent, stream, events, refused

    sent, stream, events, refused = asyncio.run(calls())
    assert sent.error is None and sent.response_text == "Paris."
    assert sent.log.cost_estimate == cost(10, 2, input_price, output_price)
    assert "".join(events).count("event: chunk") == 3 and events[-1].startswith("event: done")
    assert (stream.log.prompt_tokens, stream.log.completion_tokens) == (30, 3)
    assert stream.log.ttft_ms is not None
    assert refused.error.error_type == "rate_limit" and refused.error.retry_after_seconds == 2
    rows = LLMRequestLog.objects.order_by("timestamp", "id")
    assert [(row.provider, row.status) for row in rows] == [(provider, "success")] * 2 + [(provider, "error")]


def test_the_async_path_classifies_a_timeout_and_a_dropped_stream(fake, settings):
    settings.OPENAI_TIMEOUT_SECONDS = 0.3
    fake.will(Behaviour(delay_seconds=3), Behaviour(mode="drop_stream", text="a b c d"))
    chat = ChatRequest(prompt="hi", model="gpt-4o")
    run_inline = on_this_connection()

    async def calls():
        slow = await asend_prompt(chat, CallContext(), get_provider("openai"), run_inline)
        stream = AsyncPromptStream(chat, CallContext(), get_provider("cerebras"), run_inline)
        stream.chat = ChatRequest(prompt="hi", model="llama-3.3-70b")
        assert await stream.open() is None
        events = [event async for event in stream.events(lambda outcome: {"error": outcome.error.error_type})]
        return slow, events

    slow, events = asyncio.run(calls())
    assert slow.error.error_type == "timeout"
    assert events[-1] == 'event: error\ndata: {"error": "connection_error"}\n\n'
    assert sorted(LLMRequestLog.objects.values_list("error_type", flat=True)) == ["connection_error", "timeout"]


def test_openai_cached_tokens_are_stored_and_priced_at_the_cached_rate(api_client, fake):
    fake.will(Behaviour(text="ok", prompt_tokens=2_000, completion_tokens=100, cached_tokens=1_500))
    response = api_client.post(URL, {"prompt": "again", "model": "gpt-4o-mini"}, format="json")
    assert response.status_code == 200
    row = LLMRequestLog.objects.get()
    assert row.cached_tokens == 1_500 and response.json()["cached_tokens"] == 1_500
    # By hand: 500 uncached × 0.15 + 1,500 cached × 0.075 + 100 × 0.60, per million.
    assert row.cost_estimate == Decimal("0.0002475")


def test_an_answer_without_usage_gets_estimated_tokens(api_client, fake):
    fake.will(Behaviour(text="An answer of 33 characters, o.k.?", usage=False))
    response = api_client.post(
        URL, {"prompt": "twelve chars", "system_prompt": "Be brief.", "model": "gpt-4o"}, format="json"
    )
    body = response.json()
    row = LLMRequestLog.objects.get()
    # ceil(characters / 4): "Be brief." 9 -> 3, "twelve chars" 12 -> 3; the answer 33 -> 9.
    assert (row.prompt_tokens, row.completion_tokens, row.tokens_estimated) == (6, 9, True)
    assert (body["prompt_tokens"], body["completion_tokens"], body["tokens_estimated"]) == (6, 9, True)
    assert row.completion_tokens == math.ceil(len("An answer of 33 characters, o.k.?") / 4)
    assert row.cost_estimate == cost(6, 9, "2.50", "10.00")


def test_groq_and_cerebras_timings_are_stored_in_milliseconds(api_client, fake):
    timings = {"queue_time": 0.0125, "prompt_time": 0.004, "completion_time": 0.25}
    fake.will(Behaviour(timings=timings), Behaviour(timings=timings))
    streamed = api_client.post(URL, {"prompt": "hi", "model": "llama-3.1-8b-instant", "stream": True}, format="json")
    assert parse_sse(b"".join(streamed.streaming_content))[-1][0] == "done"
    api_client.post(URL, {"prompt": "hi", "model": "llama-3.3-70b"}, format="json")
    rows = LLMRequestLog.objects.order_by("provider")
    assert [row.provider for row in rows] == ["cerebras", "groq"]
    for row in rows:
        assert (row.queue_time_ms, row.prompt_time_ms, row.completion_time_ms) == pytest.approx((12.5, 4.0, 250.0))


def test_an_unknown_model_answers_400_listing_the_models_that_can_be_called(api_client, fake):
    response = api_client.post(URL, {"prompt": "hi", "model": "gpt-9-ultra"}, format="json")
    assert response.status_code == 400
    message = response.json()["fields"]["model"][0]
    assert "gpt-9-ultra" in message
    for provider, model in ModelPrice.objects.exclude(model_name__contains="*").values_list("provider", "model_name"):
        assert f"{provider}: " in message and model in message
    assert fake.requests == [] and not LLMRequestLog.objects.exists()


@pytest.mark.parametrize(
    ("model", "provider", "dialect"),
    [
        ("gpt-4o-2024-08-06", None, "openai"),  # by the pattern gpt-4o*
        ("llama-3.3-70b-versatile", None, "groq"),
        ("llama-3.3-70b", None, "cerebras"),
        ("my-local-model", "openai", "openai"),  # any model, when the provider is named
        ("llama-3.3-70b", "groq", "groq"),  # the named provider wins over the table
    ],
)
def test_routing_by_the_price_table_or_the_named_provider(api_client, fake, model, provider, dialect):
    payload = {"prompt": "hi", "model": model, **({"provider": provider} if provider else {})}
    response = api_client.post(URL, payload, format="json")
    assert response.status_code == 200, response.content
    assert fake.requests[0]["_dialect"] == dialect
    assert LLMRequestLog.objects.get().provider == dialect


def test_a_model_two_providers_price_must_name_one(api_client, fake):
    ModelPrice.objects.create(provider="openai", model_name="llama-3.3-70b", input_per_million=1, output_per_million=1)
    response = api_client.post(URL, {"prompt": "hi", "model": "llama-3.3-70b"}, format="json")
    assert response.status_code == 400
    assert "cerebras, openai" in response.json()["fields"]["model"][0]


def test_an_unknown_provider_is_refused(api_client, fake):
    response = api_client.post(URL, {"prompt": "hi", "model": "gpt-4o", "provider": "anthropic"}, format="json")
    assert response.status_code == 400
    assert "provider" in response.json()["fields"]
