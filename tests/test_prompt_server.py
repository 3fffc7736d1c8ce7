"""POST /api/llm/prompt/ through the server `make run` starts (gunicorn, uvicorn workers, core/asgi.py,
core/gunicorn.conf.py) against the fake Groq: every call in flight is logged exactly once, whatever
way it ends, and a call waiting on the vendor holds no thread.

On PostgreSQL the server shares the test database (transactional tests); on SQLite, whose test
database lives in memory, it gets a migrated file of its own, read here with sqlite3.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.fake_groq import Behaviour
from tests.serving import TIMEOUT_SECONDS, Server, children, serving, socket_inodes

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def server(fake_groq_server, tmp_path_factory, django_db_setup, django_db_blocker):
    with serving(fake_groq_server, tmp_path_factory, django_db_blocker) as instance:
        yield instance


@pytest.fixture
def key(server, fake_groq_server) -> str:
    fake_groq_server.reset()
    yield server.api_key()
    fake_groq_server.reset()


def post(server: Server, key: str, payload: dict, **kwargs) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/llm/prompt/", json=payload, headers={"Authorization": f"Bearer {key}"}, timeout=30, **kwargs
    )


def test_an_answer_and_its_row(server, key, fake_groq_server):
    fake_groq_server.will(Behaviour(text="Paris.", prompt_tokens=14, completion_tokens=2))
    response = post(server, key, {"prompt": "capital?", "model": "llama-3.1-8b-instant", "tags": {"app": "t"}})
    assert response.status_code == 200, response.text
    body = response.json()
    [row] = server.rows("capital?")  # written before the answer
    assert body["response"] == "Paris." and row["response_text"] == "Paris."
    assert body["request_id"].replace("-", "") == str(row["request_id"]).replace("-", "")
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (14, 2, 16)
    assert row["status"] == "success" and row["source"] == "proxy" and row["tags"] == {"app": "t"}
    # Middleware headers reach the deferred answer.
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_stream_and_its_row(server, key, fake_groq_server):
    fake_groq_server.will(Behaviour(chunks=["Bon", "jour", " !"], prompt_tokens=5, completion_tokens=3))
    response = post(server, key, {"prompt": "greet", "stream": True})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [block.split("\n") for block in response.text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names == ["start", "chunk", "chunk", "chunk", "done"]
    done = json.loads(events[-1][1].removeprefix("data: "))
    [row] = server.rows("greet")
    assert row["response_text"] == "Bonjour !" == done["response"]
    assert row["ttft_ms"] is not None and "client_disconnected" not in row["tags"]


def test_a_vendor_error_is_answered_and_logged_once(server, key, fake_groq_server):
    fake_groq_server.will(Behaviour(mode="status", status=429, error_message="Slow down", headers={"retry-after": "7"}))
    response = post(server, key, {"prompt": "too many"})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    body = response.json()
    assert body["error_type"] == "rate_limit" and body["upstream_message"] == "Slow down"
    assert body["retry_after_seconds"] == 7
    [row] = server.rows("too many")
    assert row["status"] == "error" and row["error_type"] == "rate_limit"


def test_a_timeout_answers_504_and_is_logged_once(server, key, fake_groq_server):
    fake_groq_server.will(Behaviour(delay_seconds=TIMEOUT_SECONDS + 1))
    response = post(server, key, {"prompt": "slow one"})
    assert response.status_code == 504
    assert response.json()["error_type"] == "timeout"
    [row] = server.rows("slow one")
    assert row["error_type"] == "timeout" and row["latency_ms"] >= TIMEOUT_SECONDS * 1000


def test_a_dropped_connection_is_a_connection_error(server, key, fake_groq_server):
    fake_groq_server.will(Behaviour(mode="drop"))
    response = post(server, key, {"prompt": "dropped"})
    assert response.status_code == 502
    assert response.json()["error_type"] == "connection_error"
    [row] = server.rows("dropped")
    assert row["error_type"] == "connection_error"


def test_a_client_leaving_mid_stream_leaves_one_complete_row(server, key, fake_groq_server):
    words = [f"w{n}" for n in range(40)]
    fake_groq_server.will(
        Behaviour(text=" ".join(words), prompt_tokens=33, completion_tokens=40, chunk_delay_seconds=0.02)
    )
    body = json.dumps({"prompt": "long answer please", "stream": True}).encode()
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/llm/prompt/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"event: chunk" not in received:
            received += sock.recv(4096)
        sock.shutdown(socket.SHUT_RDWR)
    [row] = server.wait_for_rows("long answer please")
    assert row["status"] == "success"
    assert row["response_text"] == " ".join(words)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (33, 40, 73)
    assert row["tags"]["client_disconnected"] == "true"
    time.sleep(0.5)
    assert len(server.rows("long answer please")) == 1


def test_calls_in_flight_hold_no_thread(server, key, fake_groq_server):
    """64 calls of one second at once, plain and streamed. With a thread per call (2 workers x 8
    threads) at most 16 would wait on the vendor at a time; the rows say how many did."""
    fake_groq_server.default = Behaviour(delay_seconds=1.0)
    calls = 64
    with httpx.Client(limits=httpx.Limits(max_connections=calls), timeout=30) as client:

        def one(index: int) -> int:
            payload = {"prompt": f"parallel {index}", "stream": index % 2 == 1}
            headers = {"Authorization": f"Bearer {key}"}
            return client.post(f"{server.url}/api/llm/prompt/", json=payload, headers=headers).status_code

        with ThreadPoolExecutor(max_workers=calls) as pool:
            statuses = list(pool.map(one, range(calls)))
    assert statuses == [200] * calls
    rows = [server.rows(f"parallel {index}") for index in range(calls)]
    assert [len(found) for found in rows] == [1] * calls
    spans = []
    for [row] in rows:
        started = row["timestamp"]
        started = datetime.fromisoformat(started) if isinstance(started, str) else started
        spans.append((started, started + timedelta(milliseconds=row["latency_ms"])))
    in_flight = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
    assert in_flight > 32, f"at most {in_flight} calls waited on the vendor at once"


def test_credentials_are_checked_as_before(server, key):
    anonymous = httpx.post(f"{server.url}/api/llm/prompt/", json={"prompt": "hi"}, timeout=10)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
    invalid = post(server, key, {"prompt": ""})
    assert invalid.status_code == 400 and "prompt" in invalid.json()["fields"]
    assert post(server, key + "x", {"prompt": "hi"}).status_code == 401
    # The slash twin is served the same way.
    twin = httpx.post(f"{server.url}/api/llm/prompt", json={"prompt": "hi"}, timeout=10)
    assert twin.status_code == 401


def established_sockets(pid: int, port: int, peer_ports: set[int]) -> int:
    """How many of the server's accepted TCP connections (local port `port`) from the client ports
    `peer_ports` process `pid` holds."""
    inodes = socket_inodes(pid)
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            peer_port = int(fields[2].rsplit(":", 1)[1], 16)
            if local_port == port and peer_port in peer_ports and fields[3] == "01" and fields[9] in inodes:
                held += 1  # 01: ESTABLISHED
    return held


def test_a_burst_of_connections_is_spread_over_both_workers(server):
    # core/gunicorn.conf.py reuse_port: one socket per worker. On one shared socket, the worker
    # that woke first often accepted all 16 of a burst, leaving the other core idle.
    port = int(server.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 30
    while len(workers := children(server.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # the port answers once the first worker listens; the second may still be forking
    assert len(workers) == 2
    connections = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(16)]
    try:
        for connection in connections:  # each answered, so each accepted by some worker
            connection.sendall(b"GET /health/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for connection in connections:
            assert connection.recv(12).startswith(b"HTTP/1.1 200")
        # This burst's connections only, by their client ports: any other (an earlier test's client,
        # a connection accepted meanwhile) is not counted.
        burst = {connection.getsockname()[1] for connection in connections}
        held = [established_sockets(pid, port, burst) for pid in workers]
        assert sum(held) == 16
        # Spread by the kernel's hash of the addresses: both workers get some (all 16 on one
        # worker, or 15, has a chance of 34 in 65,536 of a fair spread).
        assert min(held) >= 2, held
    finally:
        for connection in connections:
            connection.close()
