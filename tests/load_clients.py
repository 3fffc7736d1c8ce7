"""Many HTTP clients against a real server process, for the concurrency tests and bench/ingest_load.py.

`gunicorn_server` starts `core.asgi` as `make run` does (gunicorn with uvicorn workers, as many as given) on
any database; `run_clients` runs client threads for a bounded time and tallies every answer:
statuses, latencies, and for /api/events/ the `created` and `duplicates` each answer reported and
every request_id sent, so a test can compare them with the rows stored.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RACE_NAMESPACE = uuid.UUID("6f1c1d2e-4e0b-4a53-9f59-6b0d3c1f2a10")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_environment(database_url: str, **variables: str) -> dict[str, str]:
    """core.settings with no .env and only what is given (plus PATH and the like)."""
    return {
        **os.environ,
        "OBSERVATORY_ENV_FILE": "",
        "DJANGO_SETTINGS_MODULE": "core.settings",
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        **variables,
    }


def manage(environment: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise RuntimeError(f"manage.py {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout


@contextmanager
def gunicorn_server(environment: dict[str, str], log_path: Path, *, workers: int = 2) -> Iterator[str]:
    """`make run`'s gunicorn (same worker class, timeouts) on 127.0.0.1; yields its base URL."""
    port = free_port()
    # Exactly `make run`'s command: uvicorn workers from core/gunicorn.conf.py, each running Django's
    # sync code in core.asgi's fixed pool of threads.
    command = [sys.executable, "-m", "gunicorn", "--config", "core/gunicorn.conf.py", "core.asgi:application"]
    command += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=log)
        try:
            _wait_for_health(port, process)
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=30)


def _wait_for_health(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}")
        try:
            status, _ = request(f"127.0.0.1:{port}", "GET", "/health/", None, {}, timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)  # polling a starting server: there is no event to wait on
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port} within {timeout} s")


def request(
    address: str, method: str, path: str, body: object, headers: dict, timeout: float = 60
) -> tuple[int, bytes]:
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class Tally:
    """Everything the clients saw. Update under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter = field(default_factory=Counter)  # (kind, status) -> answers
    latencies: dict[str, list[float]] = field(default_factory=dict)  # kind -> seconds per answer
    failures: list[str] = field(default_factory=list)  # no answer at all, 5xx bodies
    events_sent: int = 0
    created: int = 0
    duplicates: int = 0
    sent_ids: set[str] = field(default_factory=set)
    prompts_answered: int = 0

    def answer(self, kind: str, status: int, seconds: float, body: bytes) -> None:
        with self.lock:
            self.statuses[kind, status] += 1
            self.latencies.setdefault(kind, []).append(seconds)
            if status >= 500:
                self.failures.append(f"{kind} {status}: {body[:300]!r}")

    def server_errors(self) -> int:
        return sum(count for (_, status), count in self.statuses.items() if status >= 500)

    def percentile(self, kind: str, q: float) -> float:
        values = sorted(self.latencies.get(kind, []))
        if not values:
            return float("nan")
        return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]

    def summary(self) -> str:
        lines = []
        for kind in sorted(self.latencies):
            answers = len(self.latencies[kind])
            lines.append(
                f"{kind}: {answers} answers, p50 {self.percentile(kind, 50) * 1000:.0f} ms, "
                f"p99 {self.percentile(kind, 99) * 1000:.0f} ms, max {self.percentile(kind, 100) * 1000:.0f} ms"
            )
        statuses = ", ".join(f"{kind} {status}: {count}" for (kind, status), count in sorted(self.statuses.items()))
        return "; ".join(lines) + f"; statuses {statuses}"


def run_clients(clients: list[Callable[[Tally], None]], seconds: float, tally: Tally | None = None) -> Tally:
    """Each client function is called in a loop, in its own thread, until `seconds` have passed."""
    tally = tally or Tally()
    stop_at = time.monotonic() + seconds

    def loop(client: Callable[[Tally], None]) -> None:
        while time.monotonic() < stop_at:
            try:
                client(tally)
            except OSError as error:  # no answer at all (reset, timeout): as bad as a 5xx
                with tally.lock:
                    tally.failures.append(f"{error.__class__.__name__}: {error}")

    threads = [threading.Thread(target=loop, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally


def event(request_id: uuid.UUID | str, model: str, index: int) -> dict:
    return {
        "request_id": str(request_id),
        "model": model,
        "provider": "groq",
        "prompt_tokens": index % 1000,
        "completion_tokens": 7,
        "latency_ms": 10.0 + index % 500,
        "cost_usd": "0.0000010000",
    }


def events_client(address: str, key: str, ids: Callable[[random.Random], list[uuid.UUID]], model: str, seed: int):
    """A client posting batches of the ids `ids` picks, recording what each answer says."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {key}"}

    def post_batch(tally: Tally) -> None:
        batch = ids(rng)
        body = {"events": [event(request_id, model, index) for index, request_id in enumerate(batch)]}
        started = time.monotonic()
        status, answer = request(address, "POST", "/api/events/", body, headers)
        tally.answer("events", status, time.monotonic() - started, answer)
        if status in (200, 201):
            counts = json.loads(answer)
            with tally.lock:
                tally.events_sent += len(batch)
                tally.created += counts["created"]
                tally.duplicates += counts["duplicates"]
                tally.sent_ids.update(str(request_id) for request_id in batch)

    return post_batch


def overlapping_ids(started: float, *, size: int, pool: int, round_seconds: float) -> Callable[[random.Random], list]:
    """Batches that overlap: every `round_seconds` a new pool of `pool` fresh ids, each batch `size`
    of them in random order (so concurrent writers insert the same new keys in different orders),
    now and then with one id twice."""

    def pick(rng: random.Random) -> list[uuid.UUID]:
        current = int((time.monotonic() - started) / round_seconds)
        ids = [uuid.uuid5(RACE_NAMESPACE, f"{started}-{current}-{k}") for k in rng.sample(range(pool), size)]
        if rng.random() < 0.2:
            ids.append(ids[0])
        return ids

    return pick


def fresh_ids(size: int) -> Callable[[random.Random], list[uuid.UUID]]:
    return lambda rng: [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(size)]


def prompts_client(address: str, key: str, model: str):
    headers = {"Authorization": f"Bearer {key}"}
    # Groq named: the load's model is in no price table.
    payload = {"prompt": "Say hi", "model": model, "provider": "groq"}

    def post_prompt(tally: Tally) -> None:
        started = time.monotonic()
        status, answer = request(address, "POST", "/api/llm/prompt/", payload, headers)
        tally.answer("prompt", status, time.monotonic() - started, answer)
        if status == 200:
            with tally.lock:
                tally.prompts_answered += 1

    return post_prompt
