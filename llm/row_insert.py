"""Inserting calls once per request_id, fast: the machinery under `LLMRequestLog.objects.record`
and `record_many` (llm/models.py), which passes the model in (this module imports no model).

Two ways to the same statement, INSERT … ON CONFLICT (request_id) DO NOTHING RETURNING id,
request_id, which answers how many rows were really inserted (a row another writer stored first is
skipped and not counted) and gives the inserted logs their id:

- VALUES (%s, …) per row, 500 rows a statement: SQLite, and few rows on PostgreSQL.
- On PostgreSQL from STAGED_MIN_ROWS rows: COPY into a temporary staging table, then one
  INSERT … SELECT from it. Measured on a batch of 500 events (bench/ingest_profile.py): psycopg
  spends most of a 16,000-placeholder INSERT splitting the query text and quoting each value into
  it (Django's cursors bind on the client), where COPY hands the values over in psycopg's C dumpers.

And before that, on PostgreSQL from STAGED_MIN_ROWS rows, a batch is first tried as one COPY
straight into the table (`_copied_insert`): when none of its request_ids is stored, which is the
usual batch, that is the whole insert; otherwise the COPY is undone and the staged path decides.

Why not bulk_create(ignore_conflicts=True): it cannot tell which rows it skipped. Why sorted by
request_id: on PostgreSQL an insert waits for a concurrent uncommitted insert of the same key; two
writers taking their keys in different orders wait for each other (a deadlock, answered 500). In
one global order, one of them always goes first.
"""

from __future__ import annotations

import hashlib
import operator
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from django.db import IntegrityError, connections, models, transaction
from django.db.models import signals
from django.db.models.base import ModelState

# Rows per INSERT … VALUES statement: 500 rows of ~33 columns stay under both databases' limits on
# parameters per statement (SQLite 32,766; PostgreSQL 65,535).
INSERT_BATCH_ROWS = 500
# From this many rows PostgreSQL gets COPY + INSERT … SELECT (three statements, the first only once
# per connection); below it, one INSERT … VALUES is fewer round trips (the proxy's single rows).
STAGED_MIN_ROWS = 20
# The largest batch whose INSERT … VALUES a connection that prepares statements may prepare
# (llm/loop_writer.py): the proxy's rows come one or a few at a time.
PREPARED_MAX_ROWS = 16


class RowShape:
    """A model's columns in order, with their defaults: an unsaved row made from its values by
    position, which Django's Model.__init__ takes several times faster than keywords."""

    def __init__(self, model: type[models.Model]) -> None:
        self.model = model
        fields = model._meta.concrete_fields
        self.names = [field.attname for field in fields]
        # Defaults made afresh for each row (uuid4, now, dict), for the columns the values do not set.
        self.fresh = [field for field in fields if field.has_default() and callable(field.default)]
        self.constant = {field.attname: field.get_default() for field in fields if field not in self.fresh}
        self.known = frozenset(self.names)
        # Whether setting an attribute is only storing it in the instance's __dict__, as Model.__init__
        # does for plain fields: no descriptor with a __set__ (a foreign key's id, a property).
        self.plain_attributes = not any(
            hasattr(getattr(model, name, None), "__set__") for name in [*self.names, "_state"]
        )

    def row(self, values: dict[str, Any]) -> models.Model:
        if not self.known.issuperset(values):
            # What the keyword constructor says of a misspelt name.
            raise TypeError(f"{self.model.__name__} has no field {sorted(set(values) - self.known)}")
        values = {**self.constant, **values}
        for field in self.fresh:
            if field.attname not in values:
                values[field.attname] = field.get_default()
        if self.plain_attributes and not (signals.pre_init.receivers or signals.post_init.receivers):
            # What Model.__init__ leaves behind for these values (a new ModelState and the attributes
            # in __dict__), without its per-field loop and its two signals, which nobody listens
            # to here: a tenth of a 500-event batch (py-spy, 4 clients).
            row = self.model.__new__(self.model)
            row.__dict__.update(values)
            row._state = ModelState()
            return row
        return self.model(*[values[name] for name in self.names])


def as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def insert_new(model: type[models.Model], logs: list[models.Model], using: str) -> int:
    """Insert the logs whose request_id is not stored yet; answers how many were inserted and gives
    those their id. `logs` must have distinct request_ids (UUIDs) and be ready for storage. The
    values are prepared before the transaction, which holds only the writing (on SQLite every other
    writer waits for it)."""
    if not logs:
        return 0
    connection = connections[using]
    logs = sorted(logs, key=lambda log: log.request_id)
    columns = _Columns.of(model, connection)
    if connection.vendor == "postgresql" and len(logs) >= STAGED_MIN_ROWS:
        rows = [columns.values(log, connection) for log in logs]
        with transaction.atomic(using=using), connection.cursor() as cursor:
            inserted = _copied_insert(cursor, columns, [log.request_id for log in logs], rows)
            if inserted is None:
                inserted = _staged_insert(cursor, columns, rows)
    else:
        statements = _value_statements(columns, logs, connection)
        inserted = {}
        with writer_turn(connection), _transaction_for(statements, connection), connection.cursor() as cursor:
            for sql, params in statements:
                cursor.execute(sql, params)
                inserted.update((as_uuid(request_id), pk) for pk, request_id in cursor.fetchall())
    return _mark_stored(logs, inserted, using)


def _mark_stored(logs: list[models.Model], inserted: dict[uuid.UUID, int], alias: str) -> int:
    """Give the logs whose request_id was inserted their id and mark them stored on `alias`, as
    Django's own save does; answers how many were inserted."""
    for log in logs:
        if log.request_id in inserted:
            log.pk = inserted[log.request_id]
            log._state.adding = False
            log._state.db = alias
    return len(inserted)


async def ainsert_new(model: type[models.Model], logs: list[models.Model], database: Any, aconnection: Any) -> int:
    """insert_new's INSERT … VALUES path over a psycopg AsyncConnection in autocommit, awaited on
    an event loop (PostgreSQL: the proxy's rows, llm/loop_writer.py). `database` is a Django
    connection object of the same database, for its names and value preparation only: never
    opened. One statement per INSERT_BATCH_ROWS rows, each atomic by itself; the rows of a batch
    are independent calls, so nothing else must commit with them.

    Written with PostgreSQL's own placeholders ($1, $2…) through a raw cursor: psycopg caches its
    parsing of `%s` placeholders only for queries of at most 50 parameters, so every batch of two
    rows or more (~33 parameters a row) had its whole text split by a regex again (~4 % of a
    worker's CPU at 16 clients, py-spy)."""
    if not logs:
        return 0
    logs = sorted(logs, key=lambda log: log.request_id)
    columns = _Columns.of(model, database)
    inserted: dict[uuid.UUID, int] = {}
    async with psycopg.AsyncRawCursor(aconnection) as cursor:
        for start in range(0, len(logs), INSERT_BATCH_ROWS):
            chunk = logs[start : start + INSERT_BATCH_ROWS]
            params = [value for log in chunk for value in columns.values(log, database)]
            # Only a small batch's statement may be prepared (by the connection's prepare_threshold):
            # one per size is kept on the server, and a burst's batches come in every size up to 500.
            prepare = None if len(chunk) <= PREPARED_MAX_ROWS else False
            await cursor.execute(_numbered_statement(columns, len(chunk)), params, prepare=prepare)
            inserted.update((as_uuid(request_id), pk) for pk, request_id in await cursor.fetchall())
    return _mark_stored(logs, inserted, database.alias)


def _numbered_statement(columns: _Columns, rows: int) -> str:
    """_value_statements' INSERT for `rows` rows, its placeholders numbered ($1…), made once per
    row count (at most INSERT_BATCH_ROWS of them)."""
    sql = columns.numbered.get(rows)
    if sql is None:
        width = len(columns.fields)
        values = ", ".join(
            "(" + ", ".join(f"${row * width + column + 1}" for column in range(width)) + ")" for row in range(rows)
        )
        sql = columns.numbered[rows] = (
            f"INSERT INTO {columns.table} ({columns.names}) VALUES {values}"  # noqa: S608 - the model's own names
            f" ON CONFLICT ({columns.unique}) DO NOTHING RETURNING {columns.pk}, {columns.unique}"
        )
    return sql


class _Columns:
    """A model's insertable columns on one database, and how a log's values are made ready for it:
    what Django's own inserts do (pre_save, get_db_prep_save), skipped for the values it would hand
    over unchanged (a str for a text field, an int for an integer field…), most of a batch's."""

    # Field classes whose get_db_prep_save answers a value of the type (and passing the test, if
    # any) as it is (on both databases; subclasses such as PositiveIntegerField included). The type
    # exactly: a bool is an int to isinstance, and Django turns it into 1 for an integer column.
    PLAIN: tuple[tuple[type[models.Field], type, Callable[[Any], bool] | None], ...] = (
        (models.CharField, str, None),
        (models.TextField, str, None),
        (models.IntegerField, int, None),
        (models.FloatField, float, None),
        (models.BooleanField, bool, None),
    )
    # And on PostgreSQL, whose driver takes these as they are (SQLite's backend turns them into text).
    PLAIN_POSTGRESQL: tuple[tuple[type[models.Field], type, Callable[[Any], bool] | None], ...] = (
        (models.UUIDField, uuid.UUID, None),
        # An aware datetime (Django warns about a naive one and makes it aware in TIME_ZONE).
        (models.DateTimeField, datetime, lambda value: value.tzinfo is not None),
        # A finite Decimal (Django refuses NaN and infinities).
        (models.DecimalField, Decimal, lambda value: value.is_finite()),
    )
    # Rows whose values have the same types need the same columns prepared: remembered for this
    # many different combinations of types.
    MAX_TYPE_PLANS = 256

    _cache: dict[tuple[type, str], _Columns] = {}

    def __init__(self, model: type[models.Model], connection: Any) -> None:
        meta = model._meta
        self.fields = [field for field in meta.concrete_fields if not field.primary_key]
        quote = connection.ops.quote_name
        self.table = quote(meta.db_table)
        self.names = ", ".join(quote(field.column) for field in self.fields)
        self.pk = quote(meta.pk.column)
        self.unique = quote(meta.get_field("request_id").column)
        plain = self.PLAIN + (self.PLAIN_POSTGRESQL if connection.vendor == "postgresql" else ())
        self._prepare = [self._preparer(field, plain) for field in self.fields]
        # Per column, the types of the values it takes as they are without looking at the value;
        # values() prepares only the others, reading every attribute in one attrgetter call.
        self._as_is = [self._as_is_types(field, plain) for field in self.fields]
        self._get = operator.attrgetter(*[field.attname for field in self.fields])
        self._plans: dict[tuple[type, ...], tuple[int, ...]] = {}
        # One staging table per column list and types: a process whose model differs from the
        # one a connection's table was made for (a migration in between) uses another name.
        shape = ";".join(f"{field.column} {field.db_type(connection)}" for field in self.fields)
        self.staging = quote(f"{meta.db_table}_staging_{hashlib.sha256(shape.encode()).hexdigest()[:12]}")
        self._table_name, self._pk_column = meta.db_table, meta.pk.column
        self._sequence: str | None = None
        # ainsert_new's statements by their number of rows.
        self.numbered: dict[int, str] = {}

    def sequence(self, cursor: Any) -> str:
        """The id column's sequence (PostgreSQL), asked once."""
        if self._sequence is None:
            cursor.execute("SELECT pg_get_serial_sequence(%s, %s)", [self._table_name, self._pk_column])
            self._sequence = cursor.fetchone()[0]
        return self._sequence

    @classmethod
    def of(cls, model: type[models.Model], connection: Any) -> _Columns:
        key = (model, connection.alias)
        columns = cls._cache.get(key)
        if columns is None:
            # Per alias, not per connection object: each thread has its own (same vendor).
            columns = cls._cache[key] = cls(model, connection)
        return columns

    @staticmethod
    def _rule(
        field: models.Field, plain: tuple[tuple[type[models.Field], type, Callable[[Any], bool] | None], ...]
    ) -> tuple[type, Callable[[Any], bool] | None] | None:
        """(type, test) a value of this field passes to go as it is; None: always prepared."""
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            return None
        return next(((kind_type, test) for kind, kind_type, test in plain if isinstance(field, kind)), None)

    @classmethod
    def _preparer(
        cls, field: models.Field, plain: tuple[tuple[type[models.Field], type, Callable[[Any], bool] | None], ...]
    ) -> Callable[[models.Model, Any], Any]:
        attname = field.attname
        rule = cls._rule(field, plain)
        if rule is None:
            return lambda log, connection: field.get_db_prep_save(field.pre_save(log, True), connection)
        value_type, test = rule

        def prepare(log: models.Model, connection: Any) -> Any:
            value = getattr(log, attname)
            if value is None or (type(value) is value_type and (test is None or test(value))):
                return value
            return field.get_db_prep_save(value, connection)

        return prepare

    @classmethod
    def _as_is_types(
        cls, field: models.Field, plain: tuple[tuple[type[models.Field], type, Callable[[Any], bool] | None], ...]
    ) -> frozenset[type]:
        rule = cls._rule(field, plain)
        if rule is None:
            return frozenset()
        value_type, test = rule
        return frozenset({type(None)} if test is not None else {type(None), value_type})

    def values(self, log: models.Model, connection: Any) -> list[Any]:
        values = list(self._get(log))
        types = tuple(map(type, values))
        plan = self._plans.get(types)
        if plan is None:
            plan = tuple(index for index, as_is in enumerate(self._as_is) if types[index] not in as_is)
            if len(self._plans) < self.MAX_TYPE_PLANS:
                self._plans[types] = plan
        for index in plan:
            values[index] = self._prepare[index](log, connection)
        return values


def _value_statements(columns: _Columns, logs: list[models.Model], connection: Any) -> list[tuple[str, list]]:
    """The INSERT … VALUES statements (SQL, parameters) for `logs`, INSERT_BATCH_ROWS rows each."""
    row = "(" + ", ".join(["%s"] * len(columns.fields)) + ")"
    head = f"INSERT INTO {columns.table} ({columns.names}) VALUES "  # noqa: S608 - the model's own names
    tail = f" ON CONFLICT ({columns.unique}) DO NOTHING RETURNING {columns.pk}, {columns.unique}"
    statements = []
    for start in range(0, len(logs), INSERT_BATCH_ROWS):
        chunk = logs[start : start + INSERT_BATCH_ROWS]
        params = [value for log in chunk for value in columns.values(log, connection)]
        statements.append((head + ", ".join([row] * len(chunk)) + tail, params))
    return statements


def _transaction_for(statements: list[tuple[str, list]], connection: Any) -> Any:
    """A transaction around the statements, unless they are one statement in autocommit (the
    proxy's single row): one INSERT … ON CONFLICT DO NOTHING is atomic by itself and nothing else
    must commit with it (calls_recorded is sent after the commit anyway), so BEGIN and COMMIT would
    only add their round trips (record() 0.54 -> 0.42 ms on PostgreSQL). Inside a caller's
    transaction the savepoint stays: a failed INSERT must not leave that transaction broken."""
    if len(statements) == 1 and not connection.in_atomic_block:
        return nullcontext()
    return transaction.atomic(using=connection.alias)


def _copied_insert(
    cursor: Any, columns: _Columns, request_ids: list[uuid.UUID], rows: list[list[Any]]
) -> dict[uuid.UUID, int] | None:
    """COPY the rows straight into the table, with ids drawn from its sequence first; None (and
    nothing stored) when one of the request_ids is stored already, the staged path's to sort out.
    Inside a transaction.

    Batches of new calls are the usual case: this skips the staging table's three extra steps
    (the rows written twice and deleted once, the table emptied at commit) and the RETURNING of
    every id, 10 ms of database and client CPU per 500 rows (bench/ingest_copy_bench.py).

    The table lock first, then the ids: a roll-up's boundary (llm/watermarks.py, LOCK … SHARE,
    then MAX(id)) waits for this transaction, as for an INSERT, so it never passes an id drawn and
    not yet stored. Sorted rows (insert_new): a concurrent writer of the same request_id makes the
    COPY wait for its commit, in the same global order as the INSERT, so no deadlock."""
    cursor.execute(f"LOCK TABLE {columns.table} IN ROW EXCLUSIVE MODE")
    cursor.execute("SELECT nextval(%s) FROM generate_series(1, %s)", [columns.sequence(cursor), len(rows)])
    ids = [row_id for (row_id,) in cursor.fetchall()]
    connection = connections[cursor.db.alias]
    statement = f"COPY {columns.table} ({columns.pk}, {columns.names}) FROM STDIN"
    try:
        # A savepoint: the failed COPY is undone and the transaction goes on.
        with (
            transaction.atomic(using=cursor.db.alias),
            connection.wrap_database_errors,
            cursor.cursor.copy(statement) as copy,
        ):
            for row_id, row in zip(ids, rows, strict=True):
                copy.write_row([row_id, *row])
    except IntegrityError:
        return None
    return dict(zip(request_ids, ids, strict=True))


# The raw connections that have made their staging table (a temporary table lives as long as its
# connection; a new connection is a new object here).
_staged_connections: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
_staged_lock = threading.Lock()


def _staged_insert(cursor: Any, columns: _Columns, rows: list[list[Any]]) -> dict[uuid.UUID, int]:
    """COPY the rows into this connection's staging table, then move them into the table in one
    INSERT … SELECT … ORDER BY request_id ON CONFLICT DO NOTHING RETURNING. Inside a transaction.

    The staging table is emptied by the move itself (DELETE … RETURNING), so a caller's outer
    transaction that stores twice never moves a row twice, and at every commit (ON COMMIT DELETE
    ROWS: no dead rows pile up in a table autovacuum never visits)."""
    with _staged_lock:
        made = _staged_connections.setdefault(cursor.cursor.connection, set())
    if columns.staging not in made:
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {columns.staging} ON COMMIT DELETE ROWS "  # noqa: S608
            f"AS SELECT {columns.names} FROM {columns.table} WITH NO DATA"
        )
        # Known to exist once committed: a rollback (a failed COPY, a test's transaction) undoes it.
        transaction.on_commit(lambda: made.add(columns.staging), using=cursor.db.alias)
    with cursor.cursor.copy(f"COPY {columns.staging} ({columns.names}) FROM STDIN") as copy:  # noqa: S608
        for row in rows:
            copy.write_row(row)
    cursor.execute(
        f"WITH moved AS (DELETE FROM {columns.staging} RETURNING *) "  # noqa: S608 - the model's own names
        f"INSERT INTO {columns.table} ({columns.names}) SELECT {columns.names} FROM moved "
        f"ORDER BY {columns.unique} ON CONFLICT ({columns.unique}) DO NOTHING RETURNING {columns.pk}, {columns.unique}"
    )
    return {as_uuid(request_id): pk for pk, request_id in cursor.fetchall()}


# SQLite has one writer at a time; the others poll for the lock (sleeping up to 100 ms between
# tries), so under load some lose many times in a row and wait seconds. Within one process the
# writers queue on this lock instead, and only one of them polls SQLite. Not inside an outer
# transaction, which may hold SQLite's lock already while another thread holds this one.
_SQLITE_WRITERS = threading.Lock()


@contextmanager
def writer_turn(connection: Any) -> Iterator[None]:
    """Our turn to write, on SQLite; at once elsewhere."""
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        yield
        return
    with _SQLITE_WRITERS:
        yield
