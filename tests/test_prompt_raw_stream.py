"""A streamed Groq answer read raw (llm/providers/groq.py RawChunkStream): the SDK still sends,
retries and raises, but each chunk is read as plain JSON instead of the SDK's pydantic models.
The independent reference is the synchronous path (the Django test client, WSGI-style), which
still reads chunks through the SDK's ChatCompletionChunk: the relayed text events and the row must
be the same, usage comes from the final chunk, and a cut or malformed stream is one logged row.
"""

from __future__ import annotations

import json

import pytest
from django.test import Client

from llm.models import LLMRequestLog
from tests import test_prompt_fast_path as fast_path
from tests.fake_groq import Behaviour
from tests.test_prompt_fast_path import PATH, run

pytestmark = pytest.mark.django_db(transaction=True)

# The fast path's fixtures: a handler per test, an API key.
handler = fast_path.handler
key = fast_path.key

# What a row of each path must agree on (not its id, times, or the latency measured).
ROW_FIELDS = (
    "status",
    "model_name",
    "provider",
    "response_text",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "tokens_estimated",
    "finish_reason",
    "error_type",
    "cost_estimate",
    "queue_time_ms",
    "prompt_time_ms",
    "completion_time_ms",
)
# What the final event's payload must agree on (its id and the times measured aside).
MEASURED = {"request_id", "latency_ms", "ttft_ms", "output_tokens_per_second"}


def events_of(body: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in body.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def sync_stream(raw_key: str, body: dict) -> list[tuple[str, dict]]:
    """The same prompt through the synchronous path (the SDK's pydantic chunks)."""
    response = Client().post(PATH, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert response.status_code == 200
    return events_of(b"".join(response.streaming_content))


def async_stream(application, raw_key: str, body: dict) -> tuple[dict, list[tuple[str, dict]]]:
    """The prompt on the event loop (after a warm-up that caches the key: the fast path)."""
    _, answer = run(application, ({"prompt": "warm up"}, raw_key), (body, raw_key))
    assert answer["status"] == 200 and answer["headers"]["Content-Type"].startswith("text/event-stream")
    return answer, events_of(answer["body"])


def row_of(events: list[tuple[str, dict]]) -> dict:
    [row] = LLMRequestLog.objects.filter(request_id=events[-1][1]["request_id"]).values(*ROW_FIELDS)
    return row


def final(events: list[tuple[str, dict]]) -> tuple[str, dict]:
    name, payload = events[-1]
    return name, {field: value for field, value in payload.items() if field not in MEASURED}


STREAMED = Behaviour(
    chunks=["Zwei ", "Wörter ", "und ", "ein ", "Emoji 🎈"],
    prompt_tokens=13,
    completion_tokens=5,
    cached_tokens=0,
    timings={"queue_time": 0.012, "prompt_time": 0.003, "completion_time": 0.02},
)


def test_a_raw_stream_relays_the_same_events_and_row_as_the_sdks_chunks(handler, key, fake_groq):
    _, raw_key = key
    body = {"prompt": "say it", "stream": True, "tags": {"team": "raw"}}
    fake_groq.will(STREAMED)
    expected = sync_stream(raw_key, body)
    fake_groq.will(Behaviour(text="warm"), STREAMED)
    answer, events = async_stream(handler, raw_key, body)
    # The text events byte for byte: the same chunks, in order, as JSON.
    chunk_lines = [block for block in answer["body"].decode().split("\n\n") if block.startswith("event: chunk")]
    assert chunk_lines == [
        f"event: chunk\ndata: {json.dumps({'text': t}, ensure_ascii=False)}" for t in STREAMED.chunks
    ]
    assert [name for name, _ in events] == [name for name, _ in expected]
    assert final(events) == final(expected)
    assert row_of(events) == row_of(expected)


def test_the_usage_is_read_from_the_final_chunk(handler, key, fake_groq):
    _, raw_key = key
    fake_groq.will(Behaviour(text="warm"), STREAMED)
    _, events = async_stream(handler, raw_key, {"prompt": "count", "stream": True})
    row = row_of(events)
    timings = STREAMED.timings
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (13, 5, 13 + 5)
    assert row["tokens_estimated"] is False and row["finish_reason"] == "stop"
    assert row["queue_time_ms"] == pytest.approx(timings["queue_time"] * 1000)
    assert row["completion_time_ms"] == pytest.approx(timings["completion_time"] * 1000)
    assert row["response_text"] == "".join(STREAMED.chunks) == events[-1][1]["response"]


def test_a_stream_cut_midway_is_one_row_with_what_arrived(handler, key, fake_groq):
    _, raw_key = key
    cut = Behaviour(mode="drop_stream", chunks=["a ", "b ", "c ", "d"])
    body = {"prompt": "cut", "stream": True}
    fake_groq.will(cut)
    expected = sync_stream(raw_key, body)
    fake_groq.will(Behaviour(text="warm"), cut)
    _, events = async_stream(handler, raw_key, body)
    relayed = "".join(payload["text"] for name, payload in events if name == "chunk")
    assert relayed == "a b " == "".join(cut.chunks[: len(cut.chunks) // 2])
    assert events[-1][0] == "error" == expected[-1][0]
    row = row_of(events)
    assert row["status"] == "error" and row["error_type"] == "connection_error" == row_of(expected)["error_type"]
    assert row["response_text"] == relayed
    assert LLMRequestLog.objects.filter(prompt_text="cut").count() == 2  # one row per call, both paths


def test_a_malformed_chunk_is_a_logged_vendor_error(handler, key, fake_groq):
    _, raw_key = key
    fake_groq.will(Behaviour(text="warm"), Behaviour(mode="bad_chunk", chunks=["one ", "two ", "three"]))
    answer, events = async_stream(handler, raw_key, {"prompt": "bad", "stream": True})
    name, payload = events[-1]
    assert name == "error" and payload["error_type"] == "server_error"
    row = row_of(events)
    assert (row["status"], row["error_type"], row["response_text"]) == ("error", "server_error", "one ")
    assert LLMRequestLog.objects.filter(prompt_text="bad").count() == 1
