"""The prompt's fast path through the server `make run` starts (gunicorn, uvicorn workers,
core/asgi.py): once a key is cached in a worker, its prompts are served on the event loop, and
each still ends in exactly one row, whatever way it ends. One worker (WEB_CONCURRENCY=1), so that
the key a test warms is cached where its next prompt goes; no rate limit, so that no contact with
the shared count sends a prompt the ordinary way; the SDK retries once. Which path served a prompt
is read from the server's DEBUG log ("served on the event loop", core/asgi.py).
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.fake_groq import Behaviour
from tests.serving import Server, serving

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT_SECONDS = 1.0
FAST_LINE = "served on the event loop"


@pytest.fixture(scope="module")
def server(fake_groq_server, tmp_path_factory, django_db_setup, django_db_blocker):
    with serving(
        fake_groq_server,
        tmp_path_factory,
        django_db_blocker,
        WEB_CONCURRENCY="1",
        PROMPT_RATE_LIMIT="0",
        LOG_LEVEL="DEBUG",
        GROQ_MAX_RETRIES="1",
        GROQ_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
    ) as instance:
        yield instance


@pytest.fixture
def client(server, fake_groq_server):
    """A client with a new key that one prompt has put in the worker's key cache."""
    fake_groq_server.reset()
    key = server.api_key()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        http.key = key
        fake_groq_server.will(Behaviour(text="warm"))
        warm = http.post("/api/llm/prompt/", json={"prompt": "warm up"})
        assert warm.status_code == 200, warm.text
        fake_groq_server.reset()
        yield http
    fake_groq_server.reset()


def fast_count(server: Server) -> int:
    return server.log.read_text(errors="replace").count(FAST_LINE)


def test_a_fast_answer_matches_the_ordinary_one_header_by_header(server, client, fake_groq_server):
    fake_groq_server.will(Behaviour(text="Paris.", prompt_tokens=14, completion_tokens=2))
    other_key = server.api_key()  # not cached: the ordinary path
    fake_groq_server.will(Behaviour(text="Paris.", prompt_tokens=14, completion_tokens=2))
    before = fast_count(server)
    fast = client.post("/api/llm/prompt/", json={"prompt": "fast capital?"})
    ordinary = httpx.post(
        f"{server.url}/api/llm/prompt/",
        json={"prompt": "ordinary capital?"},
        headers={"Authorization": f"Bearer {other_key}"},
        timeout=30,
    )
    assert fast_count(server) == before + 1
    assert fast.status_code == ordinary.status_code == 200
    # The length too is the answer's own (its request_id and latency differ): given on both, and true.
    per_request = {"x-request-id", "date", "content-length"}
    assert {name: value for name, value in fast.headers.items() if name not in per_request} == {
        name: value for name, value in ordinary.headers.items() if name not in per_request
    }
    for answer in (fast, ordinary):
        assert int(answer.headers["content-length"]) == len(answer.content)
    assert fast.json().keys() == ordinary.json().keys()
    [row] = server.rows("fast capital?")
    assert row["response_text"] == "Paris." and row["total_tokens"] == 16 and row["api_key_name"] == "server-tests"
    assert str(row["request_id"]).replace("-", "") == fast.json()["request_id"].replace("-", "")


def test_a_fast_stream_and_its_row(server, client, fake_groq_server):
    fake_groq_server.will(Behaviour(chunks=["Bon", "jour", " !"], prompt_tokens=5, completion_tokens=3))
    before = fast_count(server)
    response = client.post("/api/llm/prompt/", json={"prompt": "fast greet", "stream": True})
    assert fast_count(server) == before + 1
    events = [block.split("\n") for block in response.text.strip().split("\n\n")]
    assert [lines[0] for lines in events] == ["event: start"] + ["event: chunk"] * 3 + ["event: done"]
    done = json.loads(events[-1][1].removeprefix("data: "))
    [row] = server.rows("fast greet")
    assert row["response_text"] == "Bonjour !" == done["response"] and row["ttft_ms"] is not None


def test_a_vendor_error_retried_by_the_sdk_is_one_row(server, client, fake_groq_server):
    failing = Behaviour(mode="status", status=500, error_message="Boom")
    fake_groq_server.will(failing, failing)
    before = fast_count(server)
    response = client.post("/api/llm/prompt/", json={"prompt": "fast failure"})
    assert fast_count(server) == before + 1
    assert response.status_code == 502 and response.json()["error_type"] == "server_error"
    assert len(fake_groq_server.requests) == 2  # the SDK's one retry
    [row] = server.rows("fast failure")
    assert row["status"] == "error" and row["error_type"] == "server_error"


def test_a_retry_that_succeeds_is_one_successful_row(server, client, fake_groq_server):
    fake_groq_server.will(
        Behaviour(mode="status", status=503, error_message="Busy", headers={"retry-after": "0"}),
        Behaviour(text="Second time.", prompt_tokens=2, completion_tokens=3),
    )
    response = client.post("/api/llm/prompt/", json={"prompt": "fast retry"})
    assert response.status_code == 200 and response.json()["response"] == "Second time."
    assert len(fake_groq_server.requests) == 2
    [row] = server.rows("fast retry")
    assert row["status"] == "success" and row["total_tokens"] == 5


def test_a_timeout_is_504_and_one_row(server, client, fake_groq_server):
    slow = Behaviour(delay_seconds=TIMEOUT_SECONDS + 0.5)
    fake_groq_server.will(slow, slow)
    before = fast_count(server)
    response = client.post("/api/llm/prompt/", json={"prompt": "fast and slow"})
    assert fast_count(server) == before + 1
    assert response.status_code == 504 and response.json()["error_type"] == "timeout"
    [row] = server.rows("fast and slow")
    assert row["error_type"] == "timeout" and row["latency_ms"] >= 2 * TIMEOUT_SECONDS * 1000


def test_a_client_leaving_a_fast_stream_leaves_one_complete_row(server, client, fake_groq_server):
    words = [f"w{n}" for n in range(40)]
    fake_groq_server.will(
        Behaviour(text=" ".join(words), prompt_tokens=33, completion_tokens=40, chunk_delay_seconds=0.02)
    )
    body = json.dumps({"prompt": "fast long answer", "stream": True}).encode()
    port = int(server.url.rsplit(":", 1)[1])
    before = fast_count(server)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/llm/prompt/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {client.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"event: chunk" not in received:
            received += sock.recv(4096)
        sock.shutdown(socket.SHUT_RDWR)
    [row] = server.wait_for_rows("fast long answer")
    assert fast_count(server) == before + 1
    assert row["status"] == "success" and row["response_text"] == " ".join(words)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (33, 40)
    assert row["tags"]["client_disconnected"] == "true"
    # Nothing more is written for it: every row of the server's so far is one call's.
    client.post("/api/llm/prompt/", json={"prompt": "after the leaver"})
    assert len(server.rows("fast long answer")) == 1
