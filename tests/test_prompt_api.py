"""POST /api/llm/prompt/ through the real groq SDK against the fake Groq server."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from decimal import Decimal

import pytest
from django.core.signals import request_finished

from llm.models import LLMRequestLog
from tests.fake_groq import Behaviour

pytestmark = pytest.mark.django_db

URL = "/api/llm/prompt/"


def parse_sse(body: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def expected_cost(prompt_tokens: int, completion_tokens: int, input_price: str, output_price: str) -> Decimal:
    return (prompt_tokens * Decimal(input_price) + completion_tokens * Decimal(output_price)) / Decimal(1_000_000)


def test_success_answers_figures_and_stores_the_row(api_client, fake_groq):
    fake_groq.will(Behaviour(text="Paris.", prompt_tokens=1200, completion_tokens=300))
    response = api_client.post(
        URL,
        {
            "prompt": "Capital of France?",
            "system_prompt": "Answer in one word.",
            "model": "llama-3.3-70b-versatile",
            "user_id": "u-1",
            "session_id": "s-1",
            "max_tokens": 50,
            "temperature": 0.2,
            "tags": {"feature": "quiz"},
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    cost = expected_cost(1200, 300, "0.59", "0.79")  # 0.000708 + 0.000237
    assert cost == Decimal("0.000945")
    assert body["response"] == "Paris."
    assert body["model"] == "llama-3.3-70b-versatile"
    assert (body["prompt_tokens"], body["completion_tokens"], body["total_tokens"]) == (1200, 300, 1500)
    assert body["status"] == "success"
    assert body["latency_ms"] > 0
    assert Decimal(str(body["cost_estimate"])) == cost

    row = LLMRequestLog.objects.get(request_id=body["request_id"])
    assert row.source == "proxy" and row.provider == "groq"
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (1200, 300, 1500)
    assert row.cost_estimate == cost
    assert row.latency_ms > 0 and row.ttft_ms is None
    assert (row.user_id, row.session_id, row.tags) == ("u-1", "s-1", {"feature": "quiz"})
    assert (row.prompt_text, row.response_text, row.finish_reason) == ("Capital of France?", "Paris.", "stop")
    assert (row.temperature, row.max_tokens) == (0.2, 50)
    assert row.status == "success" and row.error_type == "" and row.error_message == ""

    sent = fake_groq.requests[0]
    assert sent["_authorization"] == "Bearer gsk_test_key"
    assert sent["model"] == "llama-3.3-70b-versatile"
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert (sent["max_tokens"], sent["temperature"]) == (50, 0.2)


def test_default_model_is_used_when_none_is_given(api_client, fake_groq, settings):
    settings.GROQ_DEFAULT_MODEL = "qwen/qwen3-32b"
    response = api_client.post(URL, {"prompt": "hi"}, format="json")
    assert response.status_code == 200
    assert fake_groq.requests[0]["model"] == "qwen/qwen3-32b"
    row = LLMRequestLog.objects.get()
    assert row.cost_estimate == expected_cost(21, 7, "0.29", "0.59")


def test_an_unpriced_model_of_a_named_provider_costs_nothing(api_client, fake_groq):
    response = api_client.post(URL, {"prompt": "hi", "model": "brand-new-model", "provider": "groq"}, format="json")
    assert response.status_code == 200
    assert response.json()["cost_estimate"] == 0
    assert LLMRequestLog.objects.get().cost_estimate == 0


def test_streaming_relays_chunks_then_the_final_answer(api_client, fake_groq):
    fake_groq.will(Behaviour(text="one two three four", prompt_tokens=40, completion_tokens=4))
    response = api_client.post(URL, {"prompt": "count", "stream": True}, format="json")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    events = parse_sse(b"".join(response.streaming_content))
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "done"
    assert names.count("chunk") == 4
    assert "".join(data["text"] for name, data in events if name == "chunk") == "one two three four"
    final = events[-1][1]
    assert final["request_id"] == events[0][1]["request_id"]
    assert (final["prompt_tokens"], final["completion_tokens"], final["total_tokens"]) == (40, 4, 44)
    assert final["response"] == "one two three four"

    row = LLMRequestLog.objects.get(request_id=final["request_id"])
    assert row.status == "success"
    assert row.response_text == "one two three four"
    assert (row.prompt_tokens, row.completion_tokens) == (40, 4)
    assert row.cost_estimate == expected_cost(40, 4, "0.05", "0.08")
    assert row.ttft_ms is not None and 0 < row.ttft_ms <= row.latency_ms
    assert fake_groq.requests[0]["stream"] is True


def test_a_client_that_accepts_only_event_streams_is_answered(api_client, fake_groq):
    fake_groq.will(Behaviour(text="hi there", prompt_tokens=3, completion_tokens=2))
    streamed = api_client.post(URL, {"prompt": "hi", "stream": True}, format="json", HTTP_ACCEPT="text/event-stream")
    assert streamed.status_code == 200
    assert [name for name, _ in parse_sse(b"".join(streamed.streaming_content))][-1] == "done"
    refused = api_client.post(URL, {"prompt": "", "stream": True}, format="json", HTTP_ACCEPT="text/event-stream")
    assert refused.status_code == 400
    assert refused["Content-Type"] == "application/json"
    assert "prompt" in refused.json()["fields"]


@pytest.mark.parametrize(
    ("behaviour", "http_status", "error_type"),
    [
        (Behaviour(mode="status", status=401, error_message="Invalid API Key"), 502, "authentication"),
        (Behaviour(mode="status", status=429, error_message="Rate limit reached"), 429, "rate_limit"),
        (Behaviour(mode="status", status=500, error_message="Internal Server Error"), 502, "server_error"),
        (Behaviour(mode="status", status=400, error_message="context too long"), 502, "bad_request"),
        (Behaviour(mode="drop"), 502, "connection_error"),
    ],
    ids=["401", "429", "500", "400", "dropped-connection"],
)
def test_upstream_failure_is_answered_and_logged(api_client, fake_groq, behaviour, http_status, error_type):
    fake_groq.will(behaviour)
    response = api_client.post(URL, {"prompt": "hello", "user_id": "u-9"}, format="json")
    assert response.status_code == http_status
    body = response.json()
    assert body["error_type"] == error_type
    assert body["error_message"].startswith(("Groq", "Could not reach Groq"))
    row = LLMRequestLog.objects.get(request_id=body["request_id"])
    assert row.status == "error"
    assert row.error_type == error_type
    assert row.error_message.startswith(body["error_message"])
    assert row.latency_ms > 0
    assert (row.prompt_tokens, row.completion_tokens, row.cost_estimate) == (0, 0, 0)
    assert (row.user_id, row.prompt_text, row.model_name) == ("u-9", "hello", "llama-3.1-8b-instant")
    if behaviour.mode == "status":
        assert body["upstream_message"] == behaviour.error_message
        assert row.error_message == f"{body['error_message']} Groq said: {behaviour.error_message}"


def test_timeout_answers_504(api_client, fake_groq, settings):
    settings.GROQ_TIMEOUT_SECONDS = 0.3
    fake_groq.will(Behaviour(delay_seconds=3))
    response = api_client.post(URL, {"prompt": "slow"}, format="json")
    assert response.status_code == 504
    assert response.json()["error_type"] == "timeout"
    row = LLMRequestLog.objects.get()
    assert row.error_type == "timeout"
    assert row.latency_ms >= 300


def test_missing_api_key_answers_503_and_is_logged(api_client, fake_groq, settings):
    settings.GROQ_API_KEY = ""
    response = api_client.post(URL, {"prompt": "hello"}, format="json")
    assert response.status_code == 503
    assert response.json()["error_type"] == "configuration"
    assert LLMRequestLog.objects.get().error_type == "configuration"
    assert fake_groq.requests == []


def test_retries_are_bounded_by_setting_and_logged_once(api_client, fake_groq, settings):
    settings.GROQ_MAX_RETRIES = 2
    failure = Behaviour(mode="status", status=500, headers={"retry-after-ms": "5"})
    fake_groq.will(failure, failure, Behaviour(text="third time"))
    response = api_client.post(URL, {"prompt": "retry"}, format="json")
    assert response.status_code == 200
    assert response.json()["response"] == "third time"
    assert len(fake_groq.requests) == 3
    assert LLMRequestLog.objects.count() == 1


def test_retries_give_up_after_the_limit(api_client, fake_groq, settings):
    settings.GROQ_MAX_RETRIES = 1
    fake_groq.default = Behaviour(mode="status", status=429, headers={"retry-after-ms": "5"})
    response = api_client.post(URL, {"prompt": "retry"}, format="json")
    assert response.status_code == 429
    assert len(fake_groq.requests) == 2
    assert LLMRequestLog.objects.get().error_type == "rate_limit"


def test_stream_refused_upfront_answers_json_error(api_client, fake_groq):
    fake_groq.will(Behaviour(mode="status", status=429, error_message="slow down"))
    response = api_client.post(URL, {"prompt": "hi", "stream": True}, format="json")
    assert response.status_code == 429
    assert response.json()["error_type"] == "rate_limit"
    assert LLMRequestLog.objects.get().error_type == "rate_limit"


def test_error_inside_stream_ends_with_error_event_and_partial_row(api_client, fake_groq):
    fake_groq.will(Behaviour(mode="stream_error", text="a b c d e f", error_message="model overloaded"))
    response = api_client.post(URL, {"prompt": "hi", "stream": True}, format="json")
    assert response.status_code == 200
    events = parse_sse(b"".join(response.streaming_content))
    assert events[-1][0] == "error"
    assert events[-1][1]["error_type"] == "server_error"
    assert events[-1][1]["upstream_message"] == "model overloaded"
    row = LLMRequestLog.objects.get(request_id=events[0][1]["request_id"])
    assert row.status == "error" and row.error_type == "server_error"
    assert row.error_message.endswith("Groq said: model overloaded")
    assert row.response_text == "a b c "  # what arrived before the failure
    assert row.ttft_ms is not None


def test_dropped_stream_is_logged_as_connection_error(api_client, fake_groq):
    fake_groq.will(Behaviour(mode="drop_stream", text="a b c d e f"))
    response = api_client.post(URL, {"prompt": "hi", "stream": True}, format="json")
    events = parse_sse(b"".join(response.streaming_content))
    assert events[-1][0] == "error"
    assert events[-1][1]["error_type"] == "connection_error"
    assert LLMRequestLog.objects.get().error_type == "connection_error"


@pytest.mark.django_db(transaction=True)
def test_client_that_leaves_mid_stream_still_leaves_a_complete_row(live_server, api_key, fake_groq):
    words = [f"w{n}" for n in range(40)]
    fake_groq.will(Behaviour(text=" ".join(words), prompt_tokens=33, completion_tokens=40, chunk_delay_seconds=0.02))
    host, port = live_server.thread.host, live_server.thread.port
    body = json.dumps({"prompt": "long answer please", "stream": True}).encode()
    # The server's thread writes the row, then closes the answer: the test waits for that too, so
    # nothing of the request still runs (or reads this test's settings) when the tables are flushed.
    finished = threading.Event()

    def on_finished(**kwargs) -> None:
        finished.set()

    request_finished.connect(on_finished)
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.sendall(
            b"POST /api/llm/prompt/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {api_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"event: chunk" not in received:
            received += connection.recv(4096)
        connection.shutdown(socket.SHUT_RDWR)

    deadline = time.monotonic() + 15
    row = None
    while time.monotonic() < deadline:
        row = LLMRequestLog.objects.filter(prompt_text="long answer please").first()
        if row is not None:
            break
        time.sleep(0.05)
    assert row is not None, "no row written after the client left"
    assert row.status == "success"
    assert row.response_text == " ".join(words)
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (33, 40, 73)
    assert row.tags["client_disconnected"] == "true"
    assert row.ttft_ms is not None and row.latency_ms >= row.ttft_ms
    try:
        assert finished.wait(15), "the server never finished the request"
    finally:
        request_finished.disconnect(on_finished)


def test_prompt_from_session_is_attributed_to_the_user(logged_in_client, fake_groq):
    response = logged_in_client.post(URL, {"prompt": "hi"}, format="json")
    assert response.status_code == 200
    assert LLMRequestLog.objects.get().user_id == "alice"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   \n"}, "prompt"),
        ({"prompt": "x" * 100_001}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 32_769}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
        ({"prompt": "hi", "temperature": -0.1}, "temperature"),
        ({"prompt": "hi", "temperature": 2.01}, "temperature"),
        ({"prompt": "hi", "temperature": "hot"}, "temperature"),
        ({"prompt": "hi", "tags": ["a"]}, "tags"),
        ({"prompt": "hi", "tags": {"a": 1}}, "tags"),
        ({"prompt": "hi", "tags": "feature=quiz"}, "tags"),
        ({"prompt": "hi", "tags": {"k": "v" * 501}}, "tags"),
        ({"prompt": "hi", "model": "bad model name!"}, "model"),
        ({"prompt": "hi", "stream": "perhaps"}, "stream"),
        ({"prompt": "hi", "user_id": "u" * 201}, "user_id"),
    ],
)
def test_bad_input_answers_400_naming_the_field(api_client, fake_groq, payload, field):
    response = api_client.post(URL, payload, format="json")
    assert response.status_code == 400
    assert list(response.json()["fields"]) == [field]
    assert LLMRequestLog.objects.count() == 0
    assert fake_groq.requests == []


def test_malformed_json_answers_400(api_client, fake_groq):
    response = api_client.generic("POST", URL, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "error" in response.json()


def test_no_credentials_answers_401(anonymous_client, fake_groq):
    response = anonymous_client.post(URL, {"prompt": "hi"}, format="json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert LLMRequestLog.objects.count() == 0


@pytest.mark.parametrize("header", ["Bearer llmo_not-a-real-key", "Bearer ", "Bearer"])
def test_wrong_key_answers_401(anonymous_client, fake_groq, header, api_key):
    response = anonymous_client.post(URL, {"prompt": "hi"}, format="json", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401


def test_revoked_key_answers_401(api_client, api_key, fake_groq):
    from llm.models import APIKey

    APIKey.objects.get(key_hash=APIKey.hash_key(api_key)).revoke()
    assert api_client.post(URL, {"prompt": "hi"}, format="json").status_code == 401


def test_request_ids_are_unique_per_call(api_client, fake_groq):
    ids = {api_client.post(URL, {"prompt": "hi"}, format="json").json()["request_id"] for _ in range(3)}
    assert len(ids) == 3
    assert all(uuid.UUID(value) for value in ids)
    assert LLMRequestLog.objects.count() == 3
