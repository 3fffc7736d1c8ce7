"""The ASGI worker's roll-ups after writes, in a thread of their own (core/asgi.py RollUpThread,
PostgreSQL): a write never waits for its roll-up, a roll-up asked for while another waits to start
adds nothing twice, and calls served by a real server that is stopped, or killed, are each rolled
up exactly once (the watermark, llm/rollups.py), whatever the roll-up thread was doing."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db import connection
from django.db.models import Sum

from core.asgi import RollUpThread
from llm import rollups, watermarks
from llm.models import HourlyRollup, LLMRequestLog
from tests.factories import build_log
from tests.fake_groq import Behaviour
from tests.serving import children, serving

pytestmark = [pytest.mark.postgres_only, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def rollup_thread(settings):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite: the roll-up stays in the writing thread (one writer at a time)")
    settings.ROLLUPS_AFTER_WRITE = True
    rollups._last_after_write = 0.0  # this process's last roll-up after a write: none yet
    thread = RollUpThread()
    thread.start()
    yield thread
    thread.shutdown()
    assert rollups._after_write_runner is None


def busy(thread: RollUpThread) -> threading.Event:
    """Keep the roll-up thread busy until the event is set: what it is asked meanwhile waits."""
    gate = threading.Event()
    started = threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(10)

    thread.executor.submit(hold)
    assert started.wait(10)
    return gate


def rolled_up_totals() -> tuple[int, int]:
    sums = HourlyRollup.objects.aggregate(requests=Sum("requests"), tokens=Sum("total_tokens"))
    return sums["requests"] or 0, sums["tokens"] or 0


def raw_totals() -> tuple[int, int]:
    # Independent of the roll-up's SQL: the rows read back and added up in Python.
    tokens = [row.total_tokens for row in LLMRequestLog.objects.all()]
    return len(tokens), sum(tokens)


def test_a_write_does_not_wait_for_its_roll_up(rollup_thread):
    gate = busy(rollup_thread)
    created, _ = LLMRequestLog.objects.record_many(
        [build_log(prompt_tokens=index, completion_tokens=1) for index in range(5)]
    )
    # The write has returned while its roll-up is still queued behind the busy thread.
    assert created == 5
    queued = rollup_thread.queued
    assert queued is not None and not queued.running() and not queued.done()
    assert watermarks.counted_up_to(rollups.ROLLUPS) == 0 and rolled_up_totals() == (0, 0)
    gate.set()
    queued.result(timeout=30)
    assert rolled_up_totals() == raw_totals() == (5, sum(range(5)) + 5)


def test_a_roll_up_asked_for_while_one_waits_is_dropped_and_nothing_is_added_twice(rollup_thread):
    gate = busy(rollup_thread)
    LLMRequestLog.objects.record_many([build_log(prompt_tokens=3, completion_tokens=4) for _ in range(3)])
    first = rollup_thread.queued
    rollups._last_after_write = 0.0  # past the interval: the next write asks for a roll-up again
    LLMRequestLog.objects.record_many([build_log(prompt_tokens=10, completion_tokens=1) for _ in range(2)])
    assert rollup_thread.queued is first  # the waiting roll-up will add both writes' rows
    gate.set()
    first.result(timeout=30)
    assert rolled_up_totals() == raw_totals() == (5, 3 * 7 + 2 * 11)
    # One more write while none waits: rolled up by a roll-up of its own, adding only its row.
    rollups._last_after_write = 0.0
    LLMRequestLog.objects.record_many([build_log(prompt_tokens=1, completion_tokens=1)])
    assert rollup_thread.queued is not first
    rollup_thread.queued.result(timeout=30)
    assert rolled_up_totals() == raw_totals() == (6, 3 * 7 + 2 * 11 + 2)


def prompt_traffic(server, key: str, seconds: float, clients: int = 6) -> int:
    """Prompts from `clients` clients for `seconds`; answers how many got a 200."""
    deadline = time.monotonic() + seconds

    def client(number: int) -> int:
        answered = 0
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
            while time.monotonic() < deadline:
                try:
                    response = http.post("/api/llm/prompt/", json={"prompt": f"client {number}"})
                except httpx.TransportError:
                    return answered  # the server was killed
                answered += response.status_code == 200
        return answered

    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(client, range(clients)))


def test_served_calls_are_rolled_up_once_when_workers_stop_or_are_killed(
    fake_groq_server, tmp_path_factory, django_db_blocker
):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite: the roll-up stays in the writing thread (one writer at a time)")
    fake_groq_server.reset()
    fake_groq_server.default = Behaviour(prompt_tokens=5, completion_tokens=2)
    with serving(
        fake_groq_server, tmp_path_factory, django_db_blocker, PROMPT_RATE_LIMIT="0", ROLLUPS_AFTER_WRITE="True"
    ) as server:
        key = server.api_key()
        answered = prompt_traffic(server, key, seconds=1.0)
        # A worker stopped as gunicorn stops one (its lifespan shutdown waits for its roll-up);
        # the master starts another.
        os.kill(children(server.pid)[0], signal.SIGTERM)
        answered += prompt_traffic(server, key, seconds=0.5)
        # Then everything killed while the clients still send: a roll-up may be running.
        killer = threading.Timer(0.3, kill_server, [server.pid])
        killer.start()
        answered += prompt_traffic(server, key, seconds=0.6)
        killer.join()
    fake_groq_server.reset()
    rows, tokens = raw_totals()
    # Every answered call has its row (a killed server may also have stored calls it could not answer).
    assert answered > 0 and rows >= answered and tokens == 7 * rows
    # The workers' roll-up threads rolled up as calls were written...
    assert watermarks.counted_up_to(rollups.ROLLUPS) > 0
    # ...and what a stopped or killed one had not is added now, every call once.
    rollups.roll_up()
    assert rolled_up_totals() == (rows, tokens)


def kill_server(master: int) -> None:
    for pid in [*children(master), master]:
        os.kill(pid, signal.SIGKILL)
