"""Two cuts on the proxy's path per prompt: a proxied call's one-row INSERT runs in autocommit (no
BEGIN/COMMIT around one statement), and routing a prompt on the event loop reads the cached price
table without making a database connection object for its task."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import DatabaseError, IntegrityError, connection, connections, transaction

from llm import models
from llm.models import LLMRequestLog, ModelPrice, calls_recorded
from llm.providers import route


@contextlib.contextmanager
def traced(lines: list[str]) -> Iterator[None]:
    """What the driver sends the server meanwhile, from the drivers' own tracing (SQLite's trace
    callback, libpq's protocol trace): BEGIN and COMMIT included, which Django's query log omits."""
    connection.ensure_connection()
    raw = connection.connection
    if connection.vendor == "sqlite":
        raw.set_trace_callback(lines.append)
        try:
            yield
        finally:
            raw.set_trace_callback(None)
        return
    with tempfile.TemporaryFile("w+") as trace:
        raw.pgconn.trace(trace.fileno())
        try:
            yield
        finally:
            raw.pgconn.untrace()
            trace.seek(0)
            lines.extend(trace.read().splitlines())


def sent(lines: list[str], word: str) -> int:
    return sum(word in line.upper() for line in lines)


FIELDS = {
    "model_name": "cut-model",
    "provider": "groq",
    "prompt_text": "hello ✓",
    "response_text": "world",
    "prompt_tokens": 1_000_000,
    "completion_tokens": 500_000,
    "latency_ms": 123.5,
    "ttft_ms": 20.25,
    "user_id": "user-1",
    "tags": {"team": "search"},
    "timestamp": datetime(2026, 6, 1, 12, tzinfo=UTC),
}


@pytest.mark.django_db(transaction=True)
def test_a_proxied_calls_row_is_one_insert_in_autocommit_stored_once(settings):
    settings.ROLLUPS_AFTER_WRITE = False  # its writes would be traced too
    ModelPrice.objects.create(model_name="cut-model", input_per_million=Decimal(3), output_per_million=Decimal(4))
    models.forget_prices()
    heard = []

    def receiver(sender, created, **kwargs):
        # After the commit: another connection sees the row already.
        heard.append((created, LLMRequestLog.objects.filter(model_name="cut-model").count()))

    calls_recorded.connect(receiver)
    try:
        request_id = uuid.uuid4()
        models.cached_price_table()  # the price query is not the write's
        lines: list[str] = []
        with traced(lines):
            log, created = LLMRequestLog.objects.record(request_id=request_id, **FIELDS)
        again, created_again = LLMRequestLog.objects.record(request_id=request_id, **{**FIELDS, "latency_ms": 1.0})
    finally:
        calls_recorded.disconnect(receiver)
    assert created and not created_again and again.pk == log.pk
    assert sent(lines, "INSERT INTO") == 1
    assert sent(lines, "BEGIN") == 0 and sent(lines, "COMMIT") == 0 and sent(lines, "SAVEPOINT") == 0
    assert heard == [(1, 1)]
    rows = list(LLMRequestLog.objects.filter(request_id=request_id).values())
    assert len(rows) == 1
    row = rows[0]
    for name, value in FIELDS.items():
        assert row[name] == value, name
    assert row["total_tokens"] == FIELDS["prompt_tokens"] + FIELDS["completion_tokens"]
    # 1M prompt tokens at $3 and 0.5M completion tokens at $4 per million.
    assert row["cost_estimate"] == Decimal(3) * 1 + Decimal(4) * Decimal("0.5")


@pytest.mark.django_db(transaction=True)
def test_many_rows_and_a_callers_transaction_keep_their_transaction(settings):
    settings.ROLLUPS_AFTER_WRITE = False
    lines: list[str] = []
    logs = [LLMRequestLog(model_name="cut-many", prompt_tokens=index) for index in range(3)]
    with traced(lines):
        assert LLMRequestLog.objects.record_many(logs) == (3, 0)
    # Several rows: still one INSERT, so still no transaction around it.
    assert sent(lines, "INSERT INTO") == 1 and sent(lines, "BEGIN") == 0
    with transaction.atomic():
        with pytest.raises(DatabaseError):
            # prompt_tokens is a PositiveIntegerField: its CHECK refuses -1 in the database.
            LLMRequestLog.objects.record(model_name="cut-bad", prompt_tokens=-1, total_tokens=0)
        # The savepoint around the INSERT kept the caller's transaction usable.
        LLMRequestLog.objects.record(model_name="cut-after", prompt_tokens=1)
    assert LLMRequestLog.objects.filter(model_name="cut-after").count() == 1
    assert not LLMRequestLog.objects.filter(model_name="cut-bad").exists()
    # In autocommit a failed INSERT leaves nothing behind and the connection usable.
    with pytest.raises((IntegrityError, DatabaseError)):
        LLMRequestLog.objects.record(model_name="cut-bad", prompt_tokens=-1, total_tokens=0)
    assert sorted(LLMRequestLog.objects.filter(model_name__startswith="cut-").values_list("model_name", flat=True)) == [
        "cut-after",
        *["cut-many"] * 3,
    ]


@pytest.mark.django_db(transaction=True)
def test_routing_on_the_event_loop_makes_no_connection_and_follows_saved_prices():
    price = ModelPrice.objects.create(
        model_name="cut-routed", provider="cerebras", input_per_million=Decimal(1), output_per_million=Decimal(1)
    )
    models.forget_prices()

    async def routed() -> tuple[str, list]:
        # A task of its own, as each request is: Django would keep a connection object per task.
        provider = route("cut-routed")
        return provider, connections.all(initialized_only=True)

    def route_on_a_loop() -> tuple[str, list]:
        models.cached_price_table()  # read in this thread, as the proxy's refresh does
        return asyncio.run(routed())

    assert route_on_a_loop() == ("cerebras", [])
    price.provider = "openai"
    price.save()  # forgets this process's table: the next routing reads it again
    assert route_on_a_loop() == ("openai", [])


def test_inside_a_transaction_the_table_is_still_read_afresh(db, django_assert_num_queries):
    assert connection.in_atomic_block
    ModelPrice.objects.create(model_name="cut-fresh", input_per_million=Decimal(1), output_per_million=Decimal(1))
    with django_assert_num_queries(1):
        assert "cut-fresh" in models.cached_price_table()
