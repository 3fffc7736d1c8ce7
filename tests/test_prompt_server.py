"""POST /api/llm/prompt/ through the server `make run` starts (gunicorn, uvicorn workers, core/asgi.py,
core/gunicorn.conf.py) against the fake Groq: every call in flight is logged exactly once, whatever
way it ends, and a call waiting on the vendor holds no thread.

On PostgreSQL the server shares the test database (transactional tests); on SQLite, whose test
database lives in memory, it gets a migrated file of its own, read here with sqlite3.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from llm.models import APIKey, LLMRequestLog
from tests.fake_groq import Behaviour

pytestmark = pytest.mark.django_db(transaction=True)

SERVE = [sys.executable, "-m", "gunicorn", "--config", "core/gunicorn.conf.py", "core.asgi:application"]
ROOT = Path(settings.BASE_DIR)
TIMEOUT_SECONDS = 3.0
KEYS_PER_BATCH = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


class Server:
    def __init__(self, url: str, database_url: str, sqlite_path: Path | None) -> None:
        self.url = url
        self.database_url = database_url
        self.sqlite_path = sqlite_path
        self.unused_keys: list[str] = []
        self.log: Path | None = None
        self.pid: int | None = None  # gunicorn's master

    def environment(self) -> dict[str, str]:
        # core.settings, as `make run` reads them (tests.settings would drop the GROQ_ variables).
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "core.settings",
            "DATABASE_URL": self.database_url,
            "OBSERVATORY_ENV_FILE": "",
        }

    def api_key(self) -> str:
        """A new key with every scope (one per test: each starts with its own rate-limit count)."""
        if self.sqlite_path is None:
            return APIKey.generate("server-tests", APIKey.ALL_SCOPES)[1]
        if not self.unused_keys:
            # Keys for the server's own SQLite file, made a batch at a time: a process that loads
            # Django costs seconds, a key in it nothing.
            code = (
                "from llm.models import APIKey\n"
                f"for _ in range({KEYS_PER_BATCH}):\n"
                "    print(APIKey.generate('server-tests', APIKey.ALL_SCOPES)[1])"
            )
            created = subprocess.run(
                [sys.executable, "manage.py", "shell", "--no-startup", "--command", code],
                cwd=ROOT,
                env=self.environment(),
                capture_output=True,
                text=True,
                check=True,
            )
            self.unused_keys = created.stdout.split()
        return self.unused_keys.pop()

    def rows(self, prompt: str) -> list[dict]:
        """The logged calls with this prompt, straight from the server's database."""
        if self.sqlite_path is None:
            return list(LLMRequestLog.objects.filter(prompt_text=prompt).values())
        with sqlite3.connect(self.sqlite_path) as db:
            db.row_factory = sqlite3.Row
            found = db.execute("SELECT * FROM llm_llmrequestlog WHERE prompt_text = ?", [prompt]).fetchall()
        rows = [dict(row) for row in found]
        for row in rows:
            row["tags"] = json.loads(row["tags"])
        return rows

    def wait_for_rows(self, prompt: str, count: int = 1, seconds: float = 15) -> list[dict]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rows = self.rows(prompt)
            if len(rows) >= count:
                return rows
            time.sleep(0.05)  # the row is written by another process: nothing to wait on but the table
        return self.rows(prompt)


@contextmanager
def serving(fake_groq_server, tmp_path_factory, django_db_blocker, **env: str) -> Iterator[Server]:
    """The server `make run` starts, on the test database, against the fake Groq; `env` adds to
    or overrides its environment. Its output goes to `Server.log`."""
    with django_db_blocker.unblock():
        vendor = connection.vendor
        database_url = postgres_url() if vendor == "postgresql" else None
    sqlite_path = None
    if database_url is None:
        sqlite_path = tmp_path_factory.mktemp("asgi") / "server.sqlite3"
        database_url = f"sqlite:///{sqlite_path}"
    port = free_port()
    instance = Server(f"http://127.0.0.1:{port}", database_url, sqlite_path)
    if sqlite_path is not None:
        migrate = [sys.executable, "manage.py", "migrate", "--noinput", "--verbosity", "0"]
        subprocess.run(migrate, cwd=ROOT, env=instance.environment(), check=True)
    env = {
        **instance.environment(),
        "GROQ_API_KEY": "gsk_test_key",
        "GROQ_BASE_URL": fake_groq_server.base_url,
        "GROQ_MAX_RETRIES": "0",
        "GROQ_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
        # On PostgreSQL a worker rolls up after the answer, in a thread of its own: one still
        # running when a test flushes the shared tables deadlocks with it (as conftest.py says of
        # the live server's). A test about roll-ups turns them on.
        "ROLLUPS_AFTER_WRITE": "False",
        **env,
    }
    log = tmp_path_factory.mktemp("asgi-log") / "server.log"
    instance.log = log
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*SERVE, "--bind", f"127.0.0.1:{port}"], cwd=ROOT, env=env, stdout=output, stderr=output
        )
    instance.pid = process.pid
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)  # a starting server: nothing to wait on but its port
        yield instance
    finally:
        process.terminate()
        process.wait(timeout=30)


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


def children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
            found.append(int(entry.name))
    return found


def established_sockets(pid: int, port: int) -> int:
    """How many of the server's accepted TCP connections (local port `port`) process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                held += 1
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
        held = [established_sockets(pid, port) for pid in workers]
        assert sum(held) == 16
        # Spread by the kernel's hash of the addresses: both workers get some (all 16 on one
        # worker, or 15, has a chance of 34 in 65,536 of a fair spread).
        assert min(held) >= 2, held
    finally:
        for connection in connections:
            connection.close()
