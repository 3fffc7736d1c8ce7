"""Fixed-shape readings written as plain SQL, on SQLite and PostgreSQL, parameters bound.

Building a query through the ORM costs ~0.5-1.5 ms of Python a query (resolving expressions,
compiling them), more than PostgreSQL takes to answer the overview's small roll-up readings (a
few hundred rows by index). The readings whose shape never changes (the overview's previous
window, the month's forecast) are written here once; the values are adapted as the ORM adapts
them (`connection.ops`), so a datetime compares with the stored text on SQLite as a filter does.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from django.db import connection


def table(model: type) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def quoted(name: str) -> str:
    """A column's name as the ORM writes it (some, like `by` and `key`, are SQL keywords)."""
    return connection.ops.quote_name(name)


def epoch_seconds(column: str) -> str:
    """Whole seconds since 1970 of a timestamp column (metrics.EpochSeconds, as text)."""
    if connection.vendor == "sqlite":
        return f"CAST(strftime('%%s', {column}) AS INTEGER)"
    return f"CAST(FLOOR(date_part('epoch', {column})) AS BIGINT)"


def moment(value: datetime) -> Any:
    """A datetime as a filter binds it (naive UTC text on SQLite)."""
    return connection.ops.adapt_datetimefield_value(value)


def day_value(value: date) -> Any:
    return connection.ops.adapt_datefield_value(value)


def as_date(value: Any) -> date:
    """A date column as the driver returns it (SQLite: ISO text)."""
    return date.fromisoformat(value) if isinstance(value, str) else value


def within(column: str, spans: Sequence[tuple[datetime, datetime]]) -> tuple[str, list[Any]]:
    """`column` in any of the half-open spans [start, end), as SQL and its parameters (no span: false)."""
    if not spans:
        return "1 = 0", []
    conditions = " OR ".join(f"({column} >= %s AND {column} < %s)" for _ in spans)
    return f"({conditions})", [moment(value) for span in spans for value in span]


def in_list(column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    """`column` equal to one of `values`, as SQL and its parameters (no value: false)."""
    if not values:
        return "1 = 0", []
    return f"{column} IN ({', '.join(['%s'] * len(values))})", list(values)


def fetch(sql: str, params: Sequence[Any], *, binary: bool = False) -> list[tuple]:
    """The rows of `sql` as the driver answers them; `binary`: in PostgreSQL's binary format (a
    cursor binding its parameters on the server, which binary results need; Django's own cursors
    bind on the client). Either way through Django's cursor wrapper: logged and counted as any query."""
    if binary and connection.vendor == "postgresql":
        import psycopg  # the PostgreSQL driver: only here

        connection.ensure_connection()
        raw = psycopg.Cursor(connection.connection)
        raw.format = psycopg.pq.Format.BINARY
        cursor = connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)
    else:
        cursor = connection.cursor()
    with cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()
