"""The fixed-shape readings of a page's shared reading (llm.metrics.read_shared), written out as SQL.

Why not the ORM: the overview reads the same few shapes on every request, and Django building
their SQL (resolving expressions, compiling Q trees, converters) cost about as much as PostgreSQL
answering them (at 10,000,000 calls: ~1-2 ms of compiling per query). Each reading here is one
query over both roll-up tables (days, then hours: UNION ALL), its parameters bound, on SQLite and
PostgreSQL alike. The latency histograms (~1 MB of a 7-day reading by hour) are fetched in
PostgreSQL's binary format: as text they travel hex-encoded, twice the bytes, and psycopg decodes
them in Python time (~7 ms against ~3 ms for 1,134 rows).

Built on llm.plain_sql's helpers (quoting, adapting values, fetching); imports the models and
llm.rollups' names only (llm.metrics imports this).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from django.db import connection

from llm import plain_sql, rollups
from llm.models import DailyLatency, DailyRollup, HourlyLatency, HourlyRollup, LLMRequestLog, MetricWatermark

# The sums of a roll-up row, in llm.rollups.Figures' order (the rows are read into its arrays).
SUMS = rollups.Figures.SUMS


def _where(
    column: str, days: list[date], hours: list[tuple[datetime, datetime]], models: Sequence[str]
) -> tuple[str, list[Any]]:
    """The WHERE clause of a daily (`days`, first to last) or hourly (`hours`, [start, end) spans)
    roll-up table, of `models` when given."""
    if days:
        condition, params = (
            f"{column} >= %s AND {column} <= %s",
            [plain_sql.day_value(days[0]), plain_sql.day_value(days[-1])],
        )
    else:
        condition, params = plain_sql.within(column, hours)
    if models:
        of_models, model_params = plain_sql.in_list("model_name", models)
        condition += f" AND {of_models}"
        params += model_params
    return condition, params


def watermark() -> int:
    """The roll-ups' watermark (MetricWatermark "rollups".last_id; 0 before the first roll-up), read
    after every shared reading to tell it held still (llm.metrics.consistent): one column, not a
    model instance (~2 ms of the ORM's a reading at 10,000,000 calls, twice per page)."""
    table = plain_sql.table(MetricWatermark)
    rows = plain_sql.fetch(f"SELECT last_id FROM {table} WHERE name = %s", [rollups.ROLLUPS])  # noqa: S608 - our names
    return int(rows[0][0]) if rows else 0


def newest_id() -> int:
    """The largest id of the log table (0 when empty): an index lookup, its SQL written out."""
    rows = plain_sql.fetch(f"SELECT MAX(id) FROM {plain_sql.table(LLMRequestLog)}", [])  # noqa: S608 - our names
    return int(rows[0][0] or 0)


def latency_rows(days: list[date], hours: list[tuple[datetime, datetime]], model: str) -> list[tuple]:
    """The rows of DailyLatency for `days` (first to last) and of HourlyLatency within `hours`, of
    `model` when given, days first: (day or None, hour as epoch seconds or None, model_name,
    *SUMS, errors, latency histogram as bytes). The day is a date on both databases."""
    columns = ("model_name", *SUMS, "errors", "latency_histogram")
    return latency_union(columns, days, hours, [model] if model else [], binary=True)


def latency_union(
    columns: Sequence[str],
    days: list[date],
    hours: list[tuple[datetime, datetime]],
    models: Sequence[str],
    *,
    binary: bool = False,
) -> list[tuple]:
    """`columns` of DailyLatency's `days` (first to last) and HourlyLatency's `hours` ([start, end)
    spans) of `models` (every model when none), one query, days first: (day or None, hour as epoch
    seconds or None, *columns), the day a date on both databases; `binary` as plain_sql.fetch."""
    listed = ", ".join(columns)
    parts, params = [], []
    if days:
        where, values = _where("day", days, [], models)
        table = plain_sql.table(DailyLatency)
        parts.append(f"SELECT day, NULL, {listed} FROM {table} WHERE {where}")  # noqa: S608 - our names
        params += values
    if hours:
        where, values = _where("hour", [], hours, models)
        epoch = plain_sql.epoch_seconds("hour")
        table = plain_sql.table(HourlyLatency)
        parts.append(f"SELECT NULL, {epoch}, {listed} FROM {table} WHERE {where}")  # noqa: S608 - our names
        params += values
    if not parts:
        return []
    rows = plain_sql.fetch(" UNION ALL ".join(parts), params, binary=binary)
    if connection.vendor != "sqlite" or not days:
        return rows
    # SQLite may answer a date as its text: made a date once per distinct day.
    parsed: dict[Any, Any] = {}
    return [(parsed.setdefault(row[0], plain_sql.as_date(row[0])), *row[1:]) for row in rows]


def failure_rows(
    days: list[date], hours: list[tuple[datetime, datetime]], model: str, edges: list[datetime]
) -> list[tuple]:
    """The failures per error type of DailyRollup's `days` and HourlyRollup's `hours` (of `model`
    when given), one query: (error_type, failures, latest day or None, edge, latest hour as epoch
    seconds or None), where `edge` is, for the hours among `edges` (whole hours reaching beyond a
    window), that hour as epoch seconds, each apart; 0 for the others (and for days)."""
    error = LLMRequestLog.Status.ERROR
    parts, params = [], []
    if days:
        where, values = _where("day", days, [], [model] if model else [])
        parts.append(
            "SELECT error_type, SUM(requests), MAX(day), 0, NULL"  # noqa: S608 - our names
            f" FROM {plain_sql.table(DailyRollup)}"
            f" WHERE status = %s AND {where} GROUP BY 1"
        )
        params += [error, *values]
    if hours:
        where, values = _where("hour", [], hours, [model] if model else [])
        epoch = plain_sql.epoch_seconds("hour")
        # The edge hours' epochs are integers of ours: written in, so the CASE is one expression
        # in the SELECT list and in GROUP BY (by position) however the parameters are bound.
        cases = " ".join(f"WHEN hour = %s THEN {int(edge.timestamp())}" for edge in edges)
        edge_column = f"CASE {cases} ELSE 0 END" if edges else "0"
        parts.append(
            f"SELECT error_type, SUM(requests), NULL, {edge_column}, MAX({epoch})"  # noqa: S608 - our names
            f" FROM {plain_sql.table(HourlyRollup)}"
            f" WHERE status = %s AND {where} GROUP BY 1, 4"
        )
        params += [plain_sql.moment(edge) for edge in edges]
        params += [error, *values]
    if not parts:
        return []
    rows = plain_sql.fetch(" UNION ALL ".join(parts), params)
    if connection.vendor != "sqlite" or not days:
        return rows
    return [(row[0], row[1], plain_sql.as_date(row[2]), *row[3:]) for row in rows]


def latest_failed_hours(spans: dict[str, tuple[datetime, datetime]], model: str) -> list[tuple[str, int]]:
    """Per error type, the latest hour of HourlyRollup within its span [start, end) with a failure
    of that type (of `model`, when given), as epoch seconds: (error_type, epoch) rows, one query."""
    within = " OR ".join(["(error_type = %s AND hour >= %s AND hour < %s)"] * len(spans))
    params: list[Any] = [LLMRequestLog.Status.ERROR]
    for error_type, (start, end) in spans.items():
        params += [error_type, plain_sql.moment(start), plain_sql.moment(end)]
    by_model = ""
    if model:
        by_model = " AND model_name = %s"
        params.append(model)
    table = plain_sql.table(HourlyRollup)
    sql = (
        f"SELECT error_type, MAX({plain_sql.epoch_seconds('hour')}) FROM {table}"  # noqa: S608 - our names
        f" WHERE status = %s AND requests > 0 AND ({within}){by_model} GROUP BY 1"
    )
    return [(error_type, int(epoch)) for error_type, epoch in plain_sql.fetch(sql, params)]
