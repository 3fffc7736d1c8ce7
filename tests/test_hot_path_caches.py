"""The proxy's hot path: API keys and prices remembered per process (and forgotten when they
change), and the rows of calls ending together written in batches, each call exactly once."""

from __future__ import annotations

import asyncio
import functools
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection, connections
from django.utils import timezone

from llm import auth, models, proxy
from llm.models import APIKey, LLMRequestLog, ModelPrice
from tests.factories import make_api_key


@pytest.fixture(autouse=True)
def _empty_caches():
    auth.forget_keys()
    models.forget_prices()
    yield
    auth.forget_keys()
    models.forget_prices()


def test_a_valid_key_costs_no_query_the_second_time(db, django_assert_num_queries):
    api_key, raw_key = make_api_key("cached")
    assert auth.authenticate_key(raw_key) == api_key
    with django_assert_num_queries(0):
        assert auth.authenticate_key(raw_key) == api_key


def test_a_bad_key_is_looked_up_every_time(db, django_assert_num_queries):
    for _ in range(2):
        with django_assert_num_queries(1):
            assert auth.authenticate_key("llmo_not-a-key") is None


def test_revoking_a_key_applies_at_once_in_this_process(db):
    api_key, raw_key = make_api_key("revoked")
    assert auth.authenticate_key(raw_key) == api_key
    api_key.revoke()
    assert auth.authenticate_key(raw_key) is None
    other, other_raw = make_api_key("deleted")
    assert auth.authenticate_key(other_raw) == other
    other.delete()
    assert auth.authenticate_key(other_raw) is None


def test_a_key_revoked_elsewhere_is_refused_once_the_bound_has_passed(db, monkeypatch):
    api_key, raw_key = make_api_key("elsewhere")
    assert auth.authenticate_key(raw_key) == api_key
    # Another process revokes it: this process hears of no save; an UPDATE sends no signal.
    APIKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    assert auth.authenticate_key(raw_key) == api_key  # within KEY_CACHE_SECONDS
    monkeypatch.setattr(auth, "KEY_CACHE_SECONDS", 0.0)
    auth._valid_keys.clear()  # what the passing of the bound does to the entry
    assert auth.authenticate_key(raw_key) is None


@pytest.mark.django_db(transaction=True)
def test_the_price_table_is_read_once_and_again_after_a_price_changes(django_assert_num_queries):
    ModelPrice.objects.update_or_create(
        model_name="cached-model", defaults={"input_per_million": Decimal(1), "output_per_million": Decimal(2)}
    )
    assert models.cached_price_table()["cached-model"].input_per_million == Decimal(1)
    with django_assert_num_queries(0):
        assert models.cached_price_table()["cached-model"].output_per_million == Decimal(2)
    price = ModelPrice.objects.get(model_name="cached-model")
    price.input_per_million = Decimal(5)
    price.save()
    assert models.cached_price_table()["cached-model"].input_per_million == Decimal(5)
    # A proxied call is priced from it: 1,000,000 prompt tokens at $5 and 500,000 completion at $2.
    log, _ = LLMRequestLog.objects.record(model_name="cached-model", prompt_tokens=1_000_000, completion_tokens=500_000)
    assert LLMRequestLog.objects.get(pk=log.pk).cost_estimate == Decimal(5) + Decimal(1)
    price.delete()
    assert "cached-model" not in models.cached_price_table()


def test_inside_a_transaction_the_price_table_is_read_afresh(db, django_assert_num_queries):
    assert connection.in_atomic_block
    with django_assert_num_queries(1):
        models.cached_price_table()
    with django_assert_num_queries(1):
        models.cached_price_table()


def row_fields(index: int, **overrides) -> dict:
    return {
        "request_id": uuid.uuid4(),
        "timestamp": timezone.now(),
        "source": LLMRequestLog.Source.PROXY,
        "provider": "groq",
        "model_name": "batch-model",
        "prompt_text": f"prompt {index}",
        "response_text": f"answer {index}",
        "prompt_tokens": index,
        "completion_tokens": 2 * index,
        "latency_ms": float(index),
        "status": LLMRequestLog.Status.SUCCESS,
        "tags": {"n": str(index)},
        "cost_estimate": None,
        **overrides,
    }


class CountingWriter:
    """A real writer thread (as core/asgi.py's), counting the batches it is given."""

    def __init__(self) -> None:
        # The test's connection, shared with the thread as Django's live server shares it (an
        # in-memory SQLite database exists only in that connection).
        shared = connections["default"]
        shared.inc_thread_sharing()
        self.executor = ThreadPoolExecutor(
            max_workers=1, initializer=lambda: connections.__setitem__("default", shared)
        )
        self.batches: list[int] = []

    async def run_sync(self, function, *args):
        if function is proxy.store_rows:
            self.batches.append(len(args[0]))
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(function, *args))

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        connections["default"].dec_thread_sharing()


@pytest.mark.django_db(transaction=True)
def test_calls_ending_together_are_written_in_few_batches_each_exactly_once():
    writer = CountingWriter()
    rows = [row_fields(index) for index in range(300)]

    async def calls():
        batcher = proxy.RowBatcher(writer.run_sync)
        return await asyncio.gather(*(batcher.write(fields) for fields in rows))

    try:
        logs = asyncio.run(calls())
    finally:
        writer.close()
    assert [log.request_id for log in logs] == [fields["request_id"] for fields in rows]
    assert sum(writer.batches) == 300
    assert len(writer.batches) < 300 / 10, writer.batches  # far fewer writes than calls
    stored = {row.request_id: row for row in LLMRequestLog.objects.filter(model_name="batch-model")}
    assert len(stored) == 300
    for fields in rows:
        row = stored[fields["request_id"]]
        index = fields["prompt_tokens"]
        assert (row.response_text, row.completion_tokens, row.total_tokens) == (f"answer {index}", 2 * index, 3 * index)


@pytest.mark.django_db(transaction=True)
def test_a_batch_answers_the_stored_row_for_a_request_id_stored_already():
    """A call whose request_id is stored (a client's retry) is answered the stored row, as
    `record` answers it alone, in a batch as well; the batch's other rows are written."""
    earlier = row_fields(1, response_text="Stored first.")
    LLMRequestLog.objects.record(**earlier)
    stored_first = LLMRequestLog.objects.get(request_id=earlier["request_id"])
    again = row_fields(2, request_id=earlier["request_id"])
    rows = [row_fields(3), again, row_fields(4)]
    outcomes = proxy.store_rows(rows)
    assert [log.request_id for log in outcomes] == [fields["request_id"] for fields in rows]
    assert outcomes[1].pk == stored_first.pk and outcomes[1].response_text == "Stored first."
    assert outcomes[1].prompt_tokens == 1 and outcomes[1]._state.adding is False
    assert all(log.pk is not None for log in outcomes)
    assert LLMRequestLog.objects.filter(model_name="batch-model").count() == 3
    for log in (outcomes[0], outcomes[2]):
        assert LLMRequestLog.objects.get(pk=log.pk).response_text == log.response_text


# PostgreSQL only: record_many's INSERT on SQLite is INSERT OR IGNORE, which drops a row breaking
# a NOT NULL or CHECK constraint instead of refusing it (no row, no error, on SQLite).
@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_row_the_database_refuses_costs_no_other_row_of_its_batch():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's INSERT OR IGNORE drops the refused row instead of refusing it.")
    writer = CountingWriter()
    rows = [row_fields(index) for index in range(20)]
    rows[7]["timestamp"] = None  # a NOT NULL column: the database refuses the INSERT

    async def calls():
        batcher = proxy.RowBatcher(writer.run_sync)
        return await asyncio.gather(*(batcher.write(fields) for fields in rows), return_exceptions=True)

    try:
        outcomes = asyncio.run(calls())
    finally:
        writer.close()
    assert isinstance(outcomes[7], Exception)
    assert all(isinstance(outcome, LLMRequestLog) for index, outcome in enumerate(outcomes) if index != 7)
    stored = set(LLMRequestLog.objects.filter(model_name="batch-model").values_list("request_id", flat=True))
    assert stored == {fields["request_id"] for index, fields in enumerate(rows) if index != 7}
