"""The proxy's rows written on the event loop (llm/loop_writer.py, PostgreSQL): the same rows as the
ORM path's, each call stored once, the ORM path taking over for a stored request_id and after a
database fault, and, through the server `make run` starts, the database stopped mid-traffic:
503 with Retry-After meanwhile, then every call answered 200 logged exactly once."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from llm.loop_writer import PREPARE_THRESHOLD, LoopRowWriter
from llm.models import LLMRequestLog, cached_price_table, calls_recorded
from llm.providers import ChatRequest, ChatResult, get_provider
from llm.proxy import CallContext, RowBatcher, _log_fields, write_rows_on_loop_with
from llm.row_insert import PREPARED_MAX_ROWS
from tests.test_outage import cluster_command
from tests.test_prompt_server import serving

pytestmark = [pytest.mark.postgres_only, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def postgresql_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the event loop's row writer is PostgreSQL's; SQLite keeps the ORM path")


CHAT = ChatRequest(prompt="What is the capital of France?", model="llama-3.1-8b-instant", system_prompt="Be brief.")
RESULT = ChatResult(
    text="Paris.",
    model="llama-3.1-8b-instant",
    finish_reason="stop",
    prompt_tokens=14,
    completion_tokens=3,
    usage_reported=True,
    queue_time_ms=0.5,
)


def fields(**context) -> dict:
    """One call's row, as the proxy makes it (llm.proxy._log_fields)."""
    call = CallContext(user_id="ana", session_id="s-1", tags={"team": "search"}, api_key_name="k", **context)
    return _log_fields(CHAT, call, get_provider("groq"), timezone.now(), 12.25, RESULT)


@pytest.fixture
def on_loop(settings):
    """Run a coroutine on a fresh event loop with a LoopRowWriter, closed after; the ORM path's
    `run_sync` is a real thread, as the worker's writer thread is."""
    settings.ROLLUPS_AFTER_WRITE = False  # a roll-up would run in the receiver, on the loop
    cached_price_table()  # what a worker's ordinary path keeps fresh: the loop never queries it
    writer_thread = ThreadPoolExecutor(max_workers=1)

    async def run_sync(function, *args):
        def in_thread():
            try:
                return function(*args)
            finally:
                connection.close()  # this thread's, opened for this call: none left open after the test

        return await asyncio.get_running_loop().run_in_executor(writer_thread, in_thread)

    def run(make_coroutine):
        async def main():
            writer = LoopRowWriter()
            write_rows_on_loop_with(writer)
            try:
                return await make_coroutine(writer, run_sync)
            finally:
                write_rows_on_loop_with(None)
                await writer.close()

        return asyncio.run(main())

    yield run
    writer_thread.shutdown()


def stored(request_id) -> dict:
    row = LLMRequestLog.objects.filter(request_id=request_id).values().get()
    del row["id"], row["request_id"]
    return row


def test_rows_written_on_the_loop_are_the_orm_paths_rows(on_loop):
    announced = []

    def listen(sender, created, **kwargs):
        announced.append(created)

    calls_recorded.connect(listen)
    try:
        through_orm = LLMRequestLog.objects.record(**fields())[0]
        announced.clear()
        rows = [fields() for _ in range(3)]
        logs = on_loop(lambda writer, run_sync: writer.store(rows))
    finally:
        calls_recorded.disconnect(listen)
    assert announced == [3]
    expected = stored(through_orm.request_id)
    for log, row in zip(logs, rows, strict=True):
        assert log.request_id == row["request_id"]
        # The id is the stored row's, and every column equals the ORM path's (timestamps aside).
        assert LLMRequestLog.objects.get(pk=log.pk).request_id == row["request_id"]
        found = stored(row["request_id"])
        assert found.pop("timestamp") >= expected["timestamp"]
        assert found == {name: value for name, value in expected.items() if name != "timestamp"}
        # Derived as the ORM path derives them: 14 + 3 tokens, a cost from the price table.
        assert found["total_tokens"] == 17 and found["tags"] == {"team": "search"}
        assert log.total_tokens == 17 and log.cost_estimate == expected["cost_estimate"]
    assert LLMRequestLog.objects.count() == 4


def test_a_stored_request_id_answers_the_stored_row_and_the_others_are_written(on_loop):
    earlier = fields()
    earlier["response_text"] = "Stored first."
    LLMRequestLog.objects.record(**earlier)
    again, new = {**fields(), "request_id": earlier["request_id"]}, fields()

    async def both(writer, run_sync):
        batcher = RowBatcher(run_sync)
        return await asyncio.gather(batcher.write(again), batcher.write(new))

    first, second = on_loop(both)
    assert first.response_text == "Stored first." and first.pk is not None
    assert second.request_id == new["request_id"] and second.pk is not None
    assert LLMRequestLog.objects.count() == 2
    assert stored(new["request_id"])["response_text"] == "Paris."


def test_the_row_insert_is_prepared_on_the_server_once_written_a_few_times(on_loop):
    """The writer's connection prepares the INSERT of a batch size after PREPARE_THRESHOLD uses:
    PostgreSQL then runs the prepared statement (pg_prepared_statements counts its executions)."""
    rows = [fields() for _ in range(PREPARE_THRESHOLD + 3)]

    async def write_them(writer, run_sync):
        batcher = RowBatcher(run_sync)
        for row in rows:
            await batcher.write(row)
        async with writer.connection.cursor() as cursor:
            await cursor.execute(
                "SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements WHERE NOT from_sql"
            )
            return await cursor.fetchall()

    prepared = on_loop(write_them)
    [(statement, executions)] = [row for row in prepared if "llm_llmrequestlog" in row[0]]
    assert statement.startswith("INSERT INTO") and executions == len(rows) - PREPARE_THRESHOLD
    assert LLMRequestLog.objects.filter(request_id__in=[row["request_id"] for row in rows]).count() == len(rows)


def test_a_large_batch_is_never_prepared_and_the_settings_can_turn_preparing_off(on_loop):
    """A burst's batches come in every size: only those of up to PREPARED_MAX_ROWS rows may be
    prepared. And OPTIONS' prepare_threshold (Django's switch, for a pooler) is the writer's too."""
    batches = [[fields() for _ in range(PREPARED_MAX_ROWS + 1)] for _ in range(PREPARE_THRESHOLD + 2)]

    async def write_them(writer, run_sync):
        for batch in batches:
            assert all(log is not None for log in await writer.store(batch))
        async with writer.connection.cursor() as cursor:
            await cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql")
            [(prepared,)] = await cursor.fetchall()
        await writer.close()
        options = writer.database.settings_dict["OPTIONS"]  # the settings' own dict, every connection's
        options["prepare_threshold"] = None
        try:
            return prepared, (await writer.connect()).prepare_threshold
        finally:
            del options["prepare_threshold"]

    prepared, threshold_from_settings = on_loop(write_them)
    assert prepared == 0 and threshold_from_settings is None
    assert LLMRequestLog.objects.count() == sum(len(batch) for batch in batches)


def test_a_call_cancelled_while_its_row_is_written_leaves_the_row_stored(on_loop):
    """A waiting call that is cancelled (a worker shutting down) cancels its own wait only: its row
    is in the batch being written, and the call waiting beside it gets its stored row."""
    cancelled, kept = fields(), fields()

    async def cancel_one(writer, run_sync):
        batcher = RowBatcher(run_sync)
        waiting = asyncio.ensure_future(batcher.write(cancelled))
        other = asyncio.ensure_future(batcher.write(kept))
        await asyncio.sleep(0)  # both queued, the batch under way
        waiting.cancel()
        log = await other
        await batcher.task
        return waiting.cancelled(), log

    was_cancelled, log = on_loop(cancel_one)
    assert was_cancelled
    assert log.pk is not None and log.request_id == kept["request_id"]
    assert LLMRequestLog.objects.filter(request_id__in=[cancelled["request_id"], kept["request_id"]]).count() == 2


def test_a_lost_connection_hands_the_rows_to_the_orm_path_then_reconnects(on_loop):
    rows = [fields() for _ in range(3)]

    async def through_a_fault(writer, run_sync):
        batcher = RowBatcher(run_sync)
        await batcher.write(rows[0])
        lost = writer.connection.info.backend_pid
        # A real fault: the server ends the writer's session (as a restart or a failover does).
        await run_sync(terminate, lost)
        fallen_back = await batcher.write(rows[1])
        resting = writer.connection is None and writer.resting_until > time.monotonic()
        writer.resting_until = 0.0  # its rest over (RETRY_SECONDS): the next batch connects again
        await batcher.write(rows[2])
        return lost, fallen_back, resting, writer.connection.info.backend_pid

    lost, fallen_back, resting, reconnected = on_loop(through_a_fault)
    assert resting and fallen_back.pk is not None
    assert reconnected != lost
    for row in rows:
        assert LLMRequestLog.objects.filter(request_id=row["request_id"]).count() == 1


def wait_for(condition, complaint: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, complaint
        time.sleep(0.05)  # the answers come from client threads: nothing to wait on but the list


def terminate(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        assert cursor.fetchone() == (True,)
    # Wait until the session is gone, so that the next write meets a dead connection.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
            if cursor.fetchone() == (0,):
                return
        time.sleep(0.02)


def test_the_database_stopped_mid_traffic(fake_groq_server, tmp_path_factory, django_db_blocker):
    """Through the served proxy: while the cluster is down every prompt answers 503 with Retry-After;
    once it is back prompts answer 200 again, and every call answered 200 has exactly one row."""
    stop, start = cluster_command("OBSERVATORY_PG_STOP"), cluster_command("OBSERVATORY_PG_START")
    with serving(fake_groq_server, tmp_path_factory, django_db_blocker) as server:
        key = server.api_key()
        answers: list[tuple[int, dict, dict]] = []
        phase = {"name": "before"}
        done = threading.Event()

        def client(number: int) -> None:
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                index = 0
                while not done.is_set():
                    index += 1
                    response = http.post("/api/llm/prompt/", json={"prompt": f"outage {number} {index}"})
                    answers.append((response.status_code, dict(response.headers), response.json() | phase))
                    time.sleep(0.01)  # a client's pace: the cluster's stop and start must get the cores

        threads = [threading.Thread(target=client, args=(number,)) for number in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(answers) >= 8, "no answers before the stop")  # the server warm
            connection.close()  # this process's own connection goes with the cluster
            phase = {"name": "down"}
            subprocess.run(stop, check=True, capture_output=True)
            wait_for(lambda: any(a[2]["name"] == "down" for a in answers), "no answer while the database is down")
            time.sleep(0.3)
            phase = {"name": "after"}
        finally:
            subprocess.run(start, check=True, capture_output=True)
        wait_for(lambda: any(a[2]["name"] == "after" and a[0] == 200 for a in answers), "no 200 after the start")
        time.sleep(0.5)
        done.set()
        for thread in threads:
            thread.join()

    statuses = {status for status, _, _ in answers}
    assert statuses <= {200, 503}, statuses
    unavailable = [(headers, body) for status, headers, body in answers if status == 503]
    assert unavailable, "no prompt met the stopped database"
    for headers, body in unavailable:
        assert headers["retry-after"] == "5" and headers["content-type"] == "application/json"
        assert body["error"] == "The database is temporarily unavailable. Try again in a few seconds."
    answered = [uuid.UUID(body["request_id"]) for status, _, body in answers if status == 200]
    assert len(set(answered)) == len(answered)
    counts = dict(
        LLMRequestLog.objects.filter(request_id__in=answered).values_list("request_id").annotate(n=Count("id"))
    )
    assert counts == dict.fromkeys(answered, 1), "a call answered 200 without exactly one row"
    assert any(body["name"] == "before" for status, _, body in answers if status == 200)
