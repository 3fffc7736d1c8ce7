"""llm/row_insert.py: the rows `record_many` stores are the same whichever way they go in (COPY
straight into the table, or through the staging table when a request_id is stored already, on
PostgreSQL from STAGED_MIN_ROWS rows; INSERT … VALUES otherwise),
the values it makes ready equal Django's own, and the staging table never moves a row twice."""

from __future__ import annotations

import contextlib
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction

from llm import row_insert
from llm.models import LLMRequestLog
from tests.factories import build_log

STAGED = row_insert.STAGED_MIN_ROWS
COMPARED = [field.attname for field in LLMRequestLog._meta.concrete_fields if not field.primary_key]


def varied_logs(count: int, *, model: str) -> list[LLMRequestLog]:
    """Calls whose values take every way through the preparation: an int in a float column, a bool
    in an integer one, None, a text-choices member, a long decimal, unicode, nested tags."""
    base = datetime(2026, 3, 1, 12, tzinfo=UTC)
    return [
        build_log(
            request_id=uuid.UUID(int=index + 1),
            timestamp=base + timedelta(seconds=index),
            model_name=model,
            source=LLMRequestLog.Source.API,
            user_id=f"user-é-{index % 3}",
            session_id=f"session-{index % 4}" if index % 2 else "",
            prompt_text=f"prompt {index} ✓\ttab",
            prompt_tokens=True if index == 0 else index,
            completion_tokens=2 * index,
            latency_ms=100 + index if index % 2 else 100.5 + index,
            ttft_ms=None if index % 3 else 12.25,
            cost_estimate=Decimal("0.00012345678912") if index % 2 else None,
            temperature=0.7 if index % 5 else None,
            max_tokens=256 if index % 2 else None,
            status=LLMRequestLog.Status.ERROR if index % 7 == 0 else LLMRequestLog.Status.SUCCESS,
            tags={"team": "search", "depth": {"level": index}, "list": [1, "two"]},
        )
        for index in range(count)
    ]


def stored(model: str) -> list[dict]:
    return list(LLMRequestLog.objects.filter(model_name=model).order_by("request_id").values(*COMPARED))


SEED_ID = uuid.UUID(int=999_999)


def with_a_stored_id(logs: list[LLMRequestLog]) -> list[LLMRequestLog]:
    """`logs` and one call whose request_id is stored already (stored now if need be): on
    PostgreSQL the batch's COPY straight into the table fails, and the staged path stores it."""
    if not LLMRequestLog.objects.filter(request_id=SEED_ID).exists():
        LLMRequestLog.objects.record(request_id=SEED_ID, model_name="seed")
    return [*logs, build_log(request_id=SEED_ID, model_name="seed")]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["copied", "staged"])
def test_a_batch_stores_what_rows_stored_one_by_one_store(path):
    """The batch (on PostgreSQL: COPY straight into the table, or with a stored request_id in it,
    the staged path) against the same calls stored one at a time by `record` (one INSERT … VALUES
    each): every column equal, and the ids the logs were given are the stored ones."""
    batch = varied_logs(STAGED + 5, model="batched")
    created, duplicates = LLMRequestLog.objects.record_many(batch if path == "copied" else with_a_stored_id(batch))
    assert (created, duplicates) == (STAGED + 5, 0 if path == "copied" else 1)
    for log in varied_logs(STAGED + 5, model="single"):
        fields = {name: getattr(log, name) for name in COMPARED}
        fields["request_id"] = uuid.UUID(int=log.request_id.int + 10_000)
        LLMRequestLog.objects.record(**fields)
    singles = stored("single")
    for row in singles:
        row["request_id"] = uuid.UUID(int=row["request_id"].int - 10_000)
        row["model_name"] = "batched"
    assert stored("batched") == singles
    stored_ids = dict(LLMRequestLog.objects.filter(model_name="batched").values_list("request_id", "id"))
    assert {log.request_id: log.pk for log in batch} == stored_ids


@pytest.mark.django_db
def test_prepared_values_equal_djangos_own():
    columns = row_insert._Columns.of(LLMRequestLog, connection)
    for log in varied_logs(12, model="values"):
        log.prepare_for_storage()
        naive = log.prompt_tokens == 3  # Django warns, and makes it aware in TIME_ZONE: so do we
        if naive:
            log.timestamp = log.timestamp.replace(tzinfo=None)
        with pytest.warns(RuntimeWarning) if naive else contextlib.nullcontext():
            ours = columns.values(log, connection)
            django = [field.get_db_prep_save(field.pre_save(log, True), connection) for field in columns.fields]
        assert [_comparable(value) for value in ours] == [_comparable(value) for value in django]


def _comparable(value: object) -> object:
    """A JSON adapter compares by the object it wraps."""
    return getattr(value, "obj", value) if type(value).__name__ in ("Jsonb", "Json") else value


@pytest.mark.django_db
def test_duplicates_within_a_batch_and_across_batches_are_counted_not_stored():
    logs = varied_logs(STAGED * 2, model="dupes")
    first, repeated = logs[: STAGED + 3], logs[3 : STAGED * 2]
    assert LLMRequestLog.objects.record_many(first + first[:2]) == (STAGED + 3, 2)
    again = [build_log(request_id=log.request_id, model_name="dupes") for log in repeated]
    assert LLMRequestLog.objects.record_many(again) == (STAGED * 2 - STAGED - 3, STAGED)
    assert LLMRequestLog.objects.filter(model_name="dupes").count() == STAGED * 2


@pytest.mark.django_db
def test_two_batches_in_one_outer_transaction_never_move_a_row_twice():
    """The staging table is emptied by each move: rows of the first batch, deleted meanwhile in the
    same transaction, do not come back with the second."""
    first = varied_logs(STAGED, model="outer")
    second = [build_log(request_id=uuid.uuid4(), model_name="outer") for _ in range(STAGED)]
    with transaction.atomic():
        assert LLMRequestLog.objects.record_many(with_a_stored_id(first)) == (STAGED, 1)
        LLMRequestLog.objects.filter(model_name="outer").delete()
        assert LLMRequestLog.objects.record_many(with_a_stored_id(second)) == (STAGED, 1)
        assert set(LLMRequestLog.objects.filter(model_name="outer").values_list("request_id", flat=True)) == {
            log.request_id for log in second
        }


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_staging_table_is_made_again():
    """On a new connection the staging table is made inside the first batch's transaction; when
    that rolls back, so does the table, and the next batch makes it again."""
    LLMRequestLog.objects.record(request_id=SEED_ID, model_name="seed")
    connection.close()
    with pytest.raises(RuntimeError), transaction.atomic():
        rolled_back = with_a_stored_id(varied_logs(STAGED, model="rolled back"))
        assert LLMRequestLog.objects.record_many(rolled_back) == (STAGED, 1)
        raise RuntimeError("roll back")
    assert not LLMRequestLog.objects.filter(model_name="rolled back").exists()
    assert LLMRequestLog.objects.record_many(with_a_stored_id(varied_logs(STAGED, model="kept"))) == (STAGED, 1)
    assert LLMRequestLog.objects.record_many(varied_logs(STAGED + 1, model="kept")) == (1, STAGED)
    assert LLMRequestLog.objects.filter(model_name="kept").count() == STAGED + 1


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_copied_batch_holds_the_roll_up_boundary_until_it_commits():
    """A batch COPYed with ids it drew itself: while it is uncommitted, a roll-up's boundary
    (llm/watermarks.py) waits for it (here: gives up) rather than passing ids not stored yet;
    once committed, the boundary is its largest id, the one its log was given."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    from llm.watermarks import final_id_boundary

    stored_now, release = threading.Event(), threading.Event()
    batch = varied_logs(STAGED, model="held")

    def writer() -> None:
        try:
            with transaction.atomic():
                assert LLMRequestLog.objects.record_many(batch) == (STAGED, 0)
                stored_now.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert stored_now.wait(10)
        assert final_id_boundary(LLMRequestLog, lock_timeout_ms=200) is None
    finally:
        release.set()
        thread.join()
    assert final_id_boundary(LLMRequestLog) == max(log.pk for log in batch)
    assert dict(LLMRequestLog.objects.values_list("request_id", "id")) == {log.request_id: log.pk for log in batch}
