"""The Python client (sdk/llm_observatory.py) against the live test server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import uuid
from decimal import Decimal
from pathlib import Path

import groq
import httpx
import pytest

from llm.models import LLMRequestLog
from tests.fake_groq import Behaviour
from tests.flaky_proxy import FlakyProxy

SDK_DIR = Path(__file__).resolve().parent.parent / "sdk"
sys.path.insert(0, str(SDK_DIR))
import llm_observatory  # noqa: E402

live = pytest.mark.django_db(transaction=True)


@pytest.fixture
def make_client(live_server, api_key, model_prices):
    clients = []

    def make(base_url: str | None = None, **options) -> llm_observatory.Client:
        # Short waits so the tests run quickly; they wait on flush(), never on a clock.
        options = {"flush_interval": 0.05, "backoff_base": 0.01, "backoff_max": 0.05, "timeout": 10, **options}
        client = llm_observatory.Client(base_url or live_server.url, options.pop("api_key", api_key), **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout=5)


@pytest.fixture
def groq_client(fake_groq) -> groq.Groq:
    return groq.Groq(api_key="gsk_test_key", base_url=fake_groq.base_url, max_retries=0, timeout=5)


@live
def test_decorator_records_a_real_groq_call(make_client, fake_groq, groq_client):
    client = make_client()
    fake_groq.will(Behaviour(text="Bonjour !", prompt_tokens=1_200, completion_tokens=300))

    @client.track(user_id="u-1", session_id="s-1", tags={"feature": "greeting"})
    def ask(*, model, messages):
        return groq_client.chat.completions.create(model=model, messages=messages)

    answer = ask(model="llama-3.3-70b-versatile", messages=[{"role": "user", "content": "Say hello in French"}])
    assert answer.choices[0].message.content == "Bonjour !"  # the caller gets the response unchanged
    assert client.flush(timeout=20)

    row = LLMRequestLog.objects.get()
    assert (row.source, row.model_name) == ("api", "llama-3.3-70b-versatile")
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (1_200, 300, 1_500)
    assert row.cost_estimate == (1_200 * Decimal("0.59") + 300 * Decimal("0.79")) / 1_000_000
    assert (row.prompt_text, row.response_text, row.finish_reason) == ("Say hello in French", "Bonjour !", "stop")
    assert (row.user_id, row.session_id, row.tags) == ("u-1", "s-1", {"feature": "greeting"})
    assert (row.status, row.error_type) == ("success", "")
    assert row.latency_ms > 0
    assert client.stats == {
        "queued": 1,
        "sent": 1,
        "duplicates": 0,
        "dropped": 0,
        "rejected": 0,
        "failed": 0,
        "retries": 0,
        "pending": 0,
    }


@live
def test_decorator_records_a_failed_call_and_raises_it_unchanged(make_client, fake_groq, groq_client):
    client = make_client()
    fake_groq.will(Behaviour(mode="status", status=429, error_message="Rate limit reached"))

    @client.track(model="llama-3.1-8b-instant")
    def ask(prompt):
        return groq_client.chat.completions.create(
            model="llama-3.1-8b-instant", messages=[{"role": "user", "content": prompt}]
        )

    with pytest.raises(groq.RateLimitError):
        ask("Hello?")
    assert client.flush(timeout=20)
    row = LLMRequestLog.objects.get()
    assert (row.status, row.error_type, row.model_name) == ("error", "rate_limit", "llama-3.1-8b-instant")
    assert row.error_message == "HTTP 429: Rate limit reached"


@live
def test_a_failed_call_is_recorded_under_the_model_it_asked_for(make_client, fake_groq, groq_client):
    client = make_client()
    fake_groq.will(
        Behaviour(mode="status", status=429, error_message="Rate limit reached"),
        Behaviour(mode="status", status=500, error_message="Internal Server Error"),
        Behaviour(mode="drop"),
    )

    @client.track(user_id="u-7")
    def ask(*, model, messages):
        return groq_client.chat.completions.create(model=model, messages=messages)

    @client.track(model="llama-3.1-8b-instant")  # the decorator's default; the call asks for another
    def ask_positionally(model, prompt):
        return groq_client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])

    @client.track()
    def ask_with_options(prompt, **options):
        return groq_client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **options)

    with pytest.raises(groq.RateLimitError):
        ask(model="qwen/qwen3-32b", messages=[{"role": "user", "content": "Hi?"}])
    with pytest.raises(groq.InternalServerError):
        ask_positionally("openai/gpt-oss-20b", "Hello?")
    with pytest.raises(groq.APIConnectionError):
        ask_with_options("Hey?", model="llama-3.3-70b-versatile")
    assert client.flush(timeout=20)

    rows = {row.prompt_text: row for row in LLMRequestLog.objects.all()}
    assert {prompt: (row.model_name, row.error_type) for prompt, row in rows.items()} == {
        "Hi?": ("qwen/qwen3-32b", "rate_limit"),
        "Hello?": ("openai/gpt-oss-20b", "server_error"),
        "Hey?": ("llama-3.3-70b-versatile", "connection_error"),
    }
    # The vendor's words, not the SDK's repr of its error body.
    assert rows["Hi?"].error_message == "HTTP 429: Rate limit reached"
    assert rows["Hello?"].error_message == "HTTP 500: Internal Server Error"
    assert rows["Hi?"].user_id == "u-7"


@live
def test_a_context_manager_failure_is_recorded_under_its_model(make_client):
    client = make_client()
    with pytest.raises(TimeoutError), client.track(model="qwen/qwen3-32b") as call:
        raise TimeoutError("read timed out")
    assert client.flush(timeout=20)
    row = LLMRequestLog.objects.get(request_id=call.request_id)
    assert (row.model_name, row.error_type, row.error_message) == ("qwen/qwen3-32b", "timeout", "read timed out")


@pytest.mark.parametrize(
    ("behaviour", "error_type"),
    [
        (Behaviour(mode="status", status=429), "rate_limit"),
        (Behaviour(mode="status", status=401), "authentication"),
        (Behaviour(mode="status", status=403), "authentication"),
        (Behaviour(mode="status", status=400), "bad_request"),
        (Behaviour(mode="status", status=404), "bad_request"),
        (Behaviour(mode="status", status=500), "server_error"),
        (Behaviour(mode="status", status=503), "server_error"),
        (Behaviour(mode="drop"), "connection_error"),
    ],
)
def test_groq_exceptions_are_classified(fake_groq, groq_client, behaviour, error_type):
    fake_groq.will(behaviour)
    with pytest.raises(groq.APIError) as caught:
        groq_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert llm_observatory.classify_error(caught.value) == error_type


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (groq.APITimeoutError(request=httpx.Request("POST", "http://127.0.0.1/")), "timeout"),
        (TimeoutError(), "timeout"),
        (ConnectionRefusedError(), "connection_error"),
        (ValueError("x"), "other"),
    ],
)
def test_builtin_exceptions_are_classified(error, error_type):
    assert llm_observatory.classify_error(error) == error_type


@live
def test_context_manager_reads_dict_responses_and_stream_usage(make_client):
    client = make_client()
    with client.track(model="qwen/qwen3-32b", user_id="u-2", prompt="Count to three") as call:
        call.first_token()
        call.record(
            {
                "model": "qwen/qwen3-32b",
                "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
                "choices": [{"finish_reason": "length", "message": {"content": "one two"}}],
            }
        )
    with client.track(model="llama-3.1-8b-instant") as streamed:
        # A Groq stream's last chunk: usage under x_groq, no message.
        streamed.record(
            {
                "model": "llama-3.1-8b-instant",
                "choices": [{"delta": {}, "finish_reason": "stop"}],
                "x_groq": {"usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}},
            }
        )
        streamed.set(response="streamed text", tags={"stream": "yes"})
    assert client.flush(timeout=20)

    first = LLMRequestLog.objects.get(request_id=call.request_id)
    assert (first.prompt_tokens, first.completion_tokens, first.total_tokens) == (10, 20, 30)
    assert (first.prompt_text, first.response_text, first.finish_reason) == ("Count to three", "one two", "length")
    assert first.user_id == "u-2"
    assert first.ttft_ms is not None and 0 <= first.ttft_ms <= first.latency_ms
    second = LLMRequestLog.objects.get(request_id=streamed.request_id)
    assert (second.prompt_tokens, second.completion_tokens, second.finish_reason) == (5, 6, "stop")
    assert (second.response_text, second.tags) == ("streamed text", {"stream": "yes"})


@live
def test_context_manager_records_an_exception_and_lets_it_through(make_client):
    client = make_client()
    with pytest.raises(ConnectionResetError), client.track(model="m") as call:
        raise ConnectionResetError("peer went away")
    assert client.flush(timeout=20)
    row = LLMRequestLog.objects.get(request_id=call.request_id)
    assert (row.status, row.error_type, row.error_message) == ("error", "connection_error", "peer went away")


@live
def test_async_functions_can_be_decorated(make_client):
    client = make_client()

    @client.track()
    async def ask(prompt):
        return {"model": "llama-3.1-8b-instant", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}

    assert asyncio.run(ask(prompt="hi"))["model"] == "llama-3.1-8b-instant"
    assert client.flush(timeout=20)
    row = LLMRequestLog.objects.get()
    assert (row.model_name, row.prompt_text, row.total_tokens) == ("llama-3.1-8b-instant", "hi", 7)


@live
def test_log_event_sends_every_field(make_client):
    client = make_client(default_tags={"app": "billing"})
    request_id = client.log_event(
        "llama-3.1-8b-instant",
        provider="groq",
        prompt_tokens=100,
        completion_tokens=50,
        latency_ms=250.5,
        ttft_ms=40,
        status="error",
        error_type="server_error",
        error_message="upstream 500",
        cost_usd="0.5",
        user_id="u-9",
        session_id="s-9",
        prompt="p",
        response="r",
        tags={"feature": "x"},
        finish_reason="stop",
        temperature=0.0,
        max_tokens=64,
        trace_id="ab" * 16,
        span_id="cd" * 8,
        timestamp=1_700_000_000.0,
    )
    assert client.flush(timeout=20)
    row = LLMRequestLog.objects.get(request_id=request_id)
    assert (row.model_name, row.provider, row.prompt_tokens, row.completion_tokens) == (
        "llama-3.1-8b-instant",
        "groq",
        100,
        50,
    )
    assert (row.latency_ms, row.ttft_ms, row.cost_estimate) == (250.5, 40.0, Decimal("0.5"))
    assert (row.status, row.error_type, row.error_message) == ("error", "server_error", "upstream 500")
    assert row.tags == {"app": "billing", "feature": "x"}
    assert (row.temperature, row.max_tokens, row.trace_id, row.span_id) == (0.0, 64, "ab" * 16, "cd" * 8)
    assert row.timestamp.timestamp() == 1_700_000_000.0


@live
def test_an_invalid_event_is_rejected_alone(make_client):
    errors = []
    client = make_client(flush_interval=3600, on_error=errors.append)
    good = [client.log_event("m", prompt_tokens=1), client.log_event("m", prompt_tokens=2)]
    client.log_event("m", prompt_tokens=-1)
    good.append(client.log_event("m", prompt_tokens=3))
    assert client.flush(timeout=20)
    assert sorted(str(r) for r in LLMRequestLog.objects.values_list("request_id", flat=True)) == sorted(good)
    assert (client.stats["sent"], client.stats["rejected"]) == (3, 1)
    assert len(errors) == 1 and errors[0].status == 400 and errors[0].events == 1 and not errors[0].will_retry


@live
def test_a_wrong_key_is_not_retried(make_client):
    client = make_client(api_key="llmo_wrong")
    client.log_event("m")
    client.log_event("m")
    assert client.flush(timeout=20)
    assert (client.stats["rejected"], client.stats["retries"]) == (2, 0)
    assert LLMRequestLog.objects.count() == 0


@live
def test_a_full_queue_drops_the_oldest_and_counts_it(make_client):
    # A long interval and a large batch: nothing leaves until flush().
    client = make_client(flush_interval=3600, batch_size=1_000, max_queue_size=5)
    ids = [client.log_event("m", prompt_tokens=index) for index in range(8)]
    assert client.stats["dropped"] == 3 and client.stats["pending"] == 5
    assert client.flush(timeout=20)
    stored = {str(r) for r in LLMRequestLog.objects.values_list("request_id", flat=True)}
    assert stored == set(ids[3:])


class ExplodingResponse:
    @property
    def usage(self):
        raise RuntimeError("surprise")

    model = "weird-model"


@live
def test_tracking_never_raises_into_the_caller(make_client):
    client = make_client()

    @client.track()
    def ask():
        return ExplodingResponse()

    assert isinstance(ask(), ExplodingResponse)
    client.log_event("m", timestamp="not a time")  # logged and skipped
    assert client.flush(timeout=20)
    assert client.stats["queued"] == 1
    assert LLMRequestLog.objects.get().model_name == "unknown"


def test_a_disabled_client_does_nothing():
    client = llm_observatory.Client("", "key")
    assert not client.enabled
    assert uuid.UUID(client.log_event("m"))
    assert client.flush() and client.stats["queued"] == 0


@live
def test_server_down_then_back_loses_no_event_and_stores_none_twice(make_client, live_server):
    host, port = live_server.thread.host, live_server.thread.port
    proxy = FlakyProxy(host, port)  # not started: nothing listens on its port yet
    refused = threading.Event()
    client = make_client(
        proxy.url,
        batch_size=4,
        max_retries=10_000,
        on_error=lambda error: refused.set() if error.status is None else None,
    )

    @client.track(model="llama-3.1-8b-instant")
    def ask(prompt):
        return {"usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    ids = [client.log_event("llama-3.1-8b-instant", prompt_tokens=index) for index in range(10)]
    ask("a")
    ask("b")
    assert refused.wait(timeout=20)  # the client tried while the server was down
    assert client.stats["retries"] >= 1 and LLMRequestLog.objects.count() == 0

    # The server comes back, but the first answer is lost on the way: the batch was stored,
    # the client does not know, and sends it again.
    proxy.swallow = 1
    proxy.start()
    try:
        assert client.flush(timeout=30)
    finally:
        proxy.stop()

    assert LLMRequestLog.objects.count() == 12
    assert set(ids) <= {str(r) for r in LLMRequestLog.objects.values_list("request_id", flat=True)}
    answers = proxy.answer_bodies()
    assert sum(answer["created"] for answer in answers) == 12
    first_batch = answers[0]["created"]
    assert first_batch > 0 and answers[1] == {**answers[0], "created": 0, "duplicates": first_batch}
    stats = client.stats
    assert (stats["sent"], stats["duplicates"], stats["dropped"], stats["failed"]) == (12, first_batch, 0, 0)


@live
def test_pending_events_are_sent_at_exit(live_server, api_key):
    ids = [str(uuid.uuid4()) for _ in range(3)]
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(SDK_DIR)!r})
        import llm_observatory
        client = llm_observatory.Client({live_server.url!r}, {api_key!r}, flush_interval=3600)
        for request_id in {ids!r}:
            client.log_event("llama-3.1-8b-instant", request_id=request_id, prompt_tokens=1)
        # No flush: the interpreter exits and the atexit hook sends the batch.
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert {str(r) for r in LLMRequestLog.objects.values_list("request_id", flat=True)} == set(ids)
