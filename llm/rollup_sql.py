"""The fixed-shape readings of a page's shared reading (llm.metrics.read_shared), written out as SQL.

Why not the ORM: the overview reads the same few shapes on every request, and Django building
their SQL (resolving expressions, compiling Q trees, converters) cost about as much as PostgreSQL
answering them (at 10,000,000 calls: ~1-2 ms of compiling per query). Each reading here is one
query over both roll-up tables (days, then hours: UNION ALL), its parameters bound, on SQLite and
PostgreSQL alike. The latency histograms (~1 MB of a 7-day reading by hour) are fetched in
PostgreSQL's binary format: as text they travel hex-encoded, twice the bytes, and psycopg decodes
them in Python time (~7 ms against ~3 ms for 1,134 rows).

Imports the models and llm.rollups' names only (llm.metrics imports this).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from django.db import connections

from llm import rollups
from llm.models import DailyLatency, DailyRollup, HourlyLatency, HourlyRollup, LLMRequestLog, MetricWatermark

# The sums of a roll-up row as llm.rollups.Figures.SUMS names them, in that order.
SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_units",
    "latency_sum_ms",
    "ttft_count",
    "ttft_sum_ms",
    "speed_count",
    "speed_sum",
    "queue_count",
    "queue_sum_ms",
)


def _epoch(connection: Any, column: str) -> str:
    """Whole seconds since 1970 of a timestamp column (as llm.metrics.EpochSeconds)."""
    if connection.vendor == "sqlite":
        return f"CAST(strftime('%%s', {column}) AS INTEGER)"
    return f"CAST(FLOOR(date_part('epoch', {column})) AS BIGINT)"


def _where(
    connection: Any, column: str, days: list[date], hours: list[tuple[datetime, datetime]], model: str
) -> tuple[str, list[Any]]:
    """The WHERE clause of a daily (`days`, first to last) or hourly (`hours`, [start, end) spans)
    roll-up table, of one model when `model`."""
    ops = connection.ops
    if days:
        condition, params = (
            f"{column} >= %s AND {column} <= %s",
            [
                ops.adapt_datefield_value(days[0]),
                ops.adapt_datefield_value(days[-1]),
            ],
        )
    else:
        condition = " OR ".join(f"({column} >= %s AND {column} < %s)" for _span in hours)
        params = [ops.adapt_datetimefield_value(moment) for span in hours for moment in span]
        condition = f"({condition})"
    if model:
        condition += " AND model_name = %s"
        params.append(model)
    return condition, params


def fetch(using: str, sql: str, params: list[Any], *, binary: bool = False) -> list[tuple]:
    """The rows of `sql` as the driver answers them; `binary`: in PostgreSQL's binary format (a
    cursor binding its parameters on the server, which binary results need; Django's own cursors
    bind on the client). Either way through Django's cursor wrapper: logged and counted as any query."""
    connection = connections[using]
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


def watermark() -> int:
    """The roll-ups' watermark (MetricWatermark "rollups".last_id; 0 before the first roll-up), read
    after every shared reading to tell it held still (llm.metrics.consistent): one column, not a
    model instance (~2 ms of the ORM's a reading at 10,000,000 calls, twice per page)."""
    using = MetricWatermark.objects.db
    table = connections[using].ops.quote_name(MetricWatermark._meta.db_table)
    rows = fetch(using, f"SELECT last_id FROM {table} WHERE name = %s", [rollups.ROLLUPS])  # noqa: S608 - our names
    return int(rows[0][0]) if rows else 0


def newest_id() -> int:
    """The largest id of the log table (0 when empty): an index lookup, its SQL written out."""
    using = LLMRequestLog.objects.db
    table = connections[using].ops.quote_name(LLMRequestLog._meta.db_table)
    rows = fetch(using, f"SELECT MAX(id) FROM {table}", [])  # noqa: S608 - our names
    return int(rows[0][0] or 0)


def latency_rows(days: list[date], hours: list[tuple[datetime, datetime]], model: str) -> list[tuple]:
    """The rows of DailyLatency for `days` (first to last) and of HourlyLatency within `hours`, of
    `model` when given, days first: (day or None, hour as epoch seconds or None, model_name,
    *SUMS, errors, latency histogram as bytes). The day is a date on both databases."""
    using = HourlyLatency.objects.db
    connection = connections[using]
    columns = ", ".join(("model_name", *SUMS, "errors", "latency_histogram"))
    parts, params = [], []
    if days:
        where, values = _where(connection, "day", days, [], model)
        table = connection.ops.quote_name(DailyLatency._meta.db_table)
        parts.append(f"SELECT day, NULL, {columns} FROM {table} WHERE {where}")  # noqa: S608 - our names
        params += values
    if hours:
        where, values = _where(connection, "hour", [], hours, model)
        epoch = _epoch(connection, "hour")
        table = connection.ops.quote_name(HourlyLatency._meta.db_table)
        parts.append(f"SELECT NULL, {epoch}, {columns} FROM {table} WHERE {where}")  # noqa: S608 - our names
        params += values
    if not parts:
        return []
    rows = fetch(using, " UNION ALL ".join(parts), params, binary=True)
    if connection.vendor != "sqlite" or not days:
        return rows
    # SQLite may answer a date as its text: made a date once per distinct day.
    parsed: dict[Any, Any] = {}
    return [(parsed.setdefault(row[0], _date(row[0])), *row[1:]) for row in rows]


def failure_rows(
    days: list[date], hours: list[tuple[datetime, datetime]], model: str, edges: list[datetime]
) -> list[tuple]:
    """The failures per error type of DailyRollup's `days` and HourlyRollup's `hours` (of `model`
    when given), one query: (error_type, failures, latest day or None, edge, latest hour as epoch
    seconds or None), where `edge` is, for the hours among `edges` (whole hours reaching beyond a
    window), that hour as epoch seconds, each apart; 0 for the others (and for days)."""
    using = HourlyRollup.objects.db
    connection = connections[using]
    error = LLMRequestLog.Status.ERROR
    parts, params = [], []
    if days:
        where, values = _where(connection, "day", days, [], model)
        parts.append(
            "SELECT error_type, SUM(requests), MAX(day), 0, NULL"  # noqa: S608 - our names
            f" FROM {connection.ops.quote_name(DailyRollup._meta.db_table)}"
            f" WHERE status = %s AND {where} GROUP BY 1"
        )
        params += [error, *values]
    if hours:
        where, values = _where(connection, "hour", [], hours, model)
        epoch = _epoch(connection, "hour")
        # The edge hours' epochs are integers of ours: written in, so the CASE is one expression
        # in the SELECT list and in GROUP BY (by position) however the parameters are bound.
        cases = " ".join(f"WHEN hour = %s THEN {int(edge.timestamp())}" for edge in edges)
        edge_column = f"CASE {cases} ELSE 0 END" if edges else "0"
        parts.append(
            f"SELECT error_type, SUM(requests), NULL, {edge_column}, MAX({epoch})"  # noqa: S608 - our names
            f" FROM {connection.ops.quote_name(HourlyRollup._meta.db_table)}"
            f" WHERE status = %s AND {where} GROUP BY 1, 4"
        )
        params += [connection.ops.adapt_datetimefield_value(edge) for edge in edges]
        params += [error, *values]
    if not parts:
        return []
    rows = fetch(using, " UNION ALL ".join(parts), params)
    if connection.vendor != "sqlite" or not days:
        return rows
    return [(row[0], row[1], _date(row[2]), *row[3:]) for row in rows]


def _date(value: Any) -> date | None:
    """A date SQLite answers (its text, or a date where the column's declared type converts it)."""
    return date.fromisoformat(value) if isinstance(value, str) else value


def latest_failed_hours(spans: dict[str, tuple[datetime, datetime]], model: str) -> list[tuple[str, int]]:
    """Per error type, the latest hour of HourlyRollup within its span [start, end) with a failure
    of that type (of `model`, when given), as epoch seconds: (error_type, epoch) rows, one query."""
    using = HourlyRollup.objects.db
    connection = connections[using]
    adapt = connection.ops.adapt_datetimefield_value
    within = " OR ".join(["(error_type = %s AND hour >= %s AND hour < %s)"] * len(spans))
    params: list[Any] = [LLMRequestLog.Status.ERROR]
    for error_type, (start, end) in spans.items():
        params += [error_type, adapt(start), adapt(end)]
    by_model = ""
    if model:
        by_model = " AND model_name = %s"
        params.append(model)
    table = connection.ops.quote_name(HourlyRollup._meta.db_table)
    sql = (
        f"SELECT error_type, MAX({_epoch(connection, 'hour')}) FROM {table}"  # noqa: S608 - our names
        f" WHERE status = %s AND requests > 0 AND ({within}){by_model} GROUP BY 1"
    )
    return [(error_type, int(epoch)) for error_type, epoch in fetch(using, sql, params)]
