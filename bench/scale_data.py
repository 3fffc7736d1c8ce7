"""Millions of realistic calls written straight into PostgreSQL by set-based SQL, for bench/scale_bench.py.

`generate_sample_data` goes through the app's write path one Python object per call: right for a
demo, hours for 10,000,000 rows. Here each chunk of hours is one `INSERT ... SELECT` over
`generate_series`, with every column drawn from `random()` after `setseed` (the same rows for the
same seed and row count), so PostgreSQL does the work in minutes.

The traffic has the shape of the sample data (its models, hourly rhythm, weekend dip, error kinds
and topics: `llm/management/commands/generate_sample_data.py`), scaled up: ~500 users with a few
heavy ones, sessions, ~3 % errors (30 % in a few incident hours), log-normal latency per model with
spikes, time to first token for streamed calls, tags on a share of calls, cost from the ModelPrice
rows, and feedback on ~1 % of calls. Rows written this way bypass the app's write path, so the
caller runs `make_app_consistent()` afterwards.

Importing this module sets nothing up: the bench and tests/test_scale_bench.py bring Django.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.management import call_command, get_commands
from django.db import connection
from django.utils import timezone

from llm.management.commands.generate_sample_data import (
    ERROR_KINDS,
    HOURLY_RHYTHM,
    MODELS,
    TOPICS,
    WEEKEND_FACTOR,
    ModelProfile,
)
from llm.models import LLMRequestLog, ModelPrice, UserFeedback

# The sample data's six priced models, and one without a price: its calls cost 0 and model-usage
# answers priced=false for it, as for a model someone adds before its price.
SCALE_MODELS = [*MODELS, ModelProfile("mistral-saba-24b", 0.02, 380, 2.0)]
USERS = 500
CALLS_WITHOUT_USER = 0.05
ERROR_SHARE = 0.03
INCIDENT_ERROR_SHARE = 0.3
STREAMED_SHARE = 0.4
TAGGED_SHARE = 0.6
FEEDBACK_SHARE = 0.01
# One INSERT per run of hours holding about this many calls: bounded memory and a progress line.
CHUNK_ROWS = 500_000
LOG_TABLE = LLMRequestLog._meta.db_table
FEEDBACK_TABLE = UserFeedback._meta.db_table
PRICE_TABLE = ModelPrice._meta.db_table


@dataclass(frozen=True)
class Hour:
    start: datetime
    calls: int
    incident: bool


def traffic_hours(rows: int, days: int, end: datetime, seed: int) -> list[Hour]:
    """`rows` calls spread over the `days` before `end` (whole hours): the sample data's daily and
    weekly rhythm with ±15 % noise per hour, and a few incident hours (one every ten days)."""
    rng = random.Random(seed)
    first = end.replace(minute=0, second=0, microsecond=0) - timedelta(days=days)
    starts = [first + timedelta(hours=index) for index in range(days * 24)]
    weights = [
        HOURLY_RHYTHM[start.hour] * (WEEKEND_FACTOR if start.weekday() >= 5 else 1.0) * rng.uniform(0.85, 1.15)
        for start in starts
    ]
    incidents = {rng.randrange(len(starts)) for _ in range(max(1, days // 10))}
    # Cumulative rounding: the hours add up to exactly `rows`.
    total_weight = sum(weights)
    hours, running_weight, placed = [], 0.0, 0
    for index, (start, weight) in enumerate(zip(starts, weights, strict=True)):
        running_weight += weight
        target = rows if index == len(starts) - 1 else round(rows * running_weight / total_weight)
        hours.append(Hour(start, target - placed, index in incidents))
        placed = target
    return hours


def chunks(hours: list[Hour], rows_per_chunk: int = CHUNK_ROWS) -> list[list[Hour]]:
    """Consecutive hours grouped into chunks of about `rows_per_chunk` calls."""
    grouped: list[list[Hour]] = [[]]
    in_chunk = 0
    for hour in hours:
        if in_chunk >= rows_per_chunk:
            grouped.append([])
            in_chunk = 0
        grouped[-1].append(hour)
        in_chunk += hour.calls
    return grouped


def literal(value: str) -> str:
    """A SQL string literal for the constants below (written in this file, never user input)."""
    return "'" + value.replace("'", "''") + "'"


def pick(uniform: str, choices: Sequence[tuple[str, float]]) -> str:
    """A CASE expression: `uniform` (a column in [0, 1)) picks one of the SQL expressions by weight."""
    total = sum(weight for _, weight in choices)
    branches, cumulative = [], 0.0
    for expression, weight in choices[:-1]:
        cumulative += weight / total
        branches.append(f"WHEN {uniform} < {cumulative!r} THEN {expression}")
    return f"CASE {' '.join(branches)} ELSE {choices[-1][0]} END"


def normal(first: str, second: str) -> str:
    """A standard normal draw from two uniforms in (0, 1] (Box-Muller)."""
    return f"(sqrt(-2 * ln({first})) * cos(2 * pi() * {second}))"


def lognormal(mu: float, sigma: float, first: str, second: str) -> str:
    return f"exp({mu!r} + {sigma!r} * {normal(first, second)})"


UNIFORMS = [
    "u_time", "u_model", "u_user", "u_user_present", "u_error", "u_error_kind", "u_prompt_1", "u_prompt_2",
    "u_completion_1", "u_completion_2", "u_latency_1", "u_latency_2", "u_spike", "u_spike_size", "u_stream",
    "u_ttft_1", "u_ttft_2", "u_topic", "u_source", "u_tagged", "u_feature", "u_env", "u_finish", "u_temperature",
    "u_max_tokens",
]  # fmt: skip


def model_expression(field: str) -> str:
    """A model's property (name, base latency, ms per output token) by the draw u_model."""
    values = {
        "name": [literal(model.name) for model in SCALE_MODELS],
        "base_latency_ms": [repr(float(model.base_latency_ms)) for model in SCALE_MODELS],
        "ms_per_output_token": [repr(float(model.ms_per_output_token)) for model in SCALE_MODELS],
    }[field]
    return pick("u_model", list(zip(values, [model.share for model in SCALE_MODELS], strict=True)))


def insert_calls_sql(seed: int) -> str:
    """One INSERT of the calls of a run of hours, given as three arrays (start, calls, incident)."""
    prompts = ", ".join(literal(prompt) for prompt, _ in TOPICS)
    responses = ", ".join(literal(response) for _, response in TOPICS)
    features = ", ".join(literal(name) for name in ("support", "search", "summaries", "translate"))
    # Every draw is 1 - random(): in (0, 1], so ln() never sees 0; `1 - u` is in [0, 1) for indexes.
    draws = ",\n                ".join(f"1 - random() AS {name}" for name in UNIFORMS)
    return f"""
    INSERT INTO {LOG_TABLE} (
        request_id, timestamp, source, provider, model_name, user_id, session_id, trace_id, span_id,
        parent_span_id, prompt_text, response_text, prompt_tokens, completion_tokens, total_tokens,
        latency_ms, ttft_ms, cost_estimate, status, error_type, error_message, finish_reason,
        temperature, max_tokens, tags, cached_tokens, tokens_estimated
    )
    SELECT
        request_id, timestamp, source, 'groq', calls.model_name, user_id,
        -- A session: one user's calls in the same half hour.
        CASE WHEN user_id = '' THEN '' ELSE user_id || '-' || (extract(epoch FROM timestamp) / 1800)::bigint END,
        CASE WHEN source = 'otlp' THEN replace(request_id::text, '-', '') ELSE '' END,
        CASE WHEN source = 'otlp' THEN left(md5(request_id::text), 16) ELSE '' END,
        '',
        (ARRAY[{prompts}])[1 + floor((1 - u_topic) * {len(TOPICS)})::int],
        CASE WHEN failed THEN '' ELSE (ARRAY[{responses}])[1 + floor((1 - u_topic) * {len(TOPICS)})::int] END,
        prompt_tokens, completion_tokens, prompt_tokens + completion_tokens,
        round(latency::numeric, 3)::float8,
        CASE WHEN NOT failed AND u_stream <= {STREAMED_SHARE}
            THEN round(least(latency, 60 + {lognormal(4.6, 0.5, "u_ttft_1", "u_ttft_2")})::numeric, 3)::float8
        END,
        -- ModelPrice.cost: (prompt x input + completion x output) / 1e6 at 10 places; no price, no cost.
        coalesce(round((prompt_tokens * price.input_per_million
                        + completion_tokens * price.output_per_million) / 1000000, 10), 0),
        CASE WHEN failed THEN 'error' ELSE 'success' END,
        error_type,
        CASE WHEN failed THEN {pick("u_error_kind", [(literal(message), share) for _, share, message in ERROR_KINDS])}
                              || ' (' || calls.model_name || ')'
             ELSE '' END,
        CASE WHEN failed THEN '' WHEN u_finish <= 0.04 THEN 'length' ELSE 'stop' END,
        (ARRAY[0.0, 0.2, 0.7, 1.0])[1 + floor((1 - u_temperature) * 4)::int],
        (ARRAY[NULL, 512, 1024, 4096]::int[])[1 + floor((1 - u_max_tokens) * 4)::int],
        CASE WHEN u_tagged <= {TAGGED_SHARE}
            THEN jsonb_build_object(
                'feature', (ARRAY[{features}])[1 + floor((1 - u_feature) * 4)::int],
                'env', CASE WHEN u_env <= 0.9 THEN 'production' ELSE 'staging' END)
            ELSE '{{}}'::jsonb
        END,
        0, false  -- columns with a default in Django only, none in the database
    FROM (
        SELECT
            *,
            CASE WHEN failed THEN 0 ELSE least({lognormal(5.6, 0.7, "u_prompt_1", "u_prompt_2")}, 12000)::int + 8
            END AS prompt_tokens,
            CASE WHEN failed THEN 0 ELSE drawn_completion_tokens END AS completion_tokens,
            -- generate_sample_data's latency: base + per output token, log-normal noise, spikes of
            -- 4-10x in one call of a hundred, 3x in an incident; a timeout waited 4x as long, other
            -- errors answer in a third of the time.
            (base_latency_ms + ms_per_output_token * drawn_completion_tokens)
                * {lognormal(0, 0.25, "u_latency_1", "u_latency_2")}
                * CASE WHEN u_spike <= 0.01 THEN 4 + 6 * u_spike_size ELSE 1 END
                * CASE WHEN incident THEN 3 ELSE 1 END
                * CASE WHEN NOT failed THEN 1 WHEN error_type = 'timeout' THEN 4 ELSE 1.0 / 3 END AS latency
        FROM (
            SELECT
                *,
                md5({seed} || ':' || extract(epoch FROM hour_start) || ':' || call_number)::uuid AS request_id,
                hour_start + (1 - u_time) * interval '1 hour' AS timestamp,
                {model_expression("name")} AS model_name,
                {model_expression("base_latency_ms")} AS base_latency_ms,
                {model_expression("ms_per_output_token")} AS ms_per_output_token,
                least({lognormal(5.2, 0.8, "u_completion_1", "u_completion_2")}, 4000)::int + 1
                    AS drawn_completion_tokens,
                -- A few heavy users: user-001 sends about 6 percent of the calls, the first 50 users 35.
                CASE WHEN u_user_present <= {CALLS_WITHOUT_USER} THEN ''
                     ELSE 'user-' || lpad((1 + floor({USERS} * (1 - u_user) ^ 2.2))::int::text, 3, '0')
                END AS user_id,
                u_error <= CASE WHEN incident THEN {INCIDENT_ERROR_SHARE} ELSE {ERROR_SHARE} END AS failed,
                CASE WHEN u_error <= CASE WHEN incident THEN {INCIDENT_ERROR_SHARE} ELSE {ERROR_SHARE} END
                     THEN {pick("u_error_kind", [(literal(kind), share) for kind, share, _ in ERROR_KINDS])}
                     ELSE ''
                END AS error_type,
                {pick("u_source", [("'proxy'", 0.6), ("'api'", 0.3), ("'otlp'", 0.1)])} AS source
            FROM (
                SELECT
                hours.hour_start, hours.incident, call_number,
                {draws}
                FROM unnest(%s::timestamptz[], %s::int[], %s::bool[]) AS hours(hour_start, calls, incident)
                CROSS JOIN LATERAL generate_series(1, hours.calls) AS call_number
                OFFSET 0  -- keeps each random() drawn once per row
            ) AS draws
        ) AS picked
    ) AS calls
    LEFT JOIN {PRICE_TABLE} AS price ON price.model_name = calls.model_name
    """  # noqa: S608 (every interpolated piece is a constant of this file)


def insert_feedback_sql() -> str:
    """Ratings for ~1 % of the calls, by the call's user, a few minutes after it; failed and slow
    calls get more thumbs down."""
    return f"""
    INSERT INTO {FEEDBACK_TABLE} (request_id, rating, comment, rater, created_at)
    SELECT id,
           CASE WHEN u_rating < 0.12 + CASE WHEN status = 'error' THEN 0.6 ELSE 0 END
                                     + CASE WHEN latency_ms > 3000 THEN 0.15 ELSE 0 END
                THEN 'thumbs_down' ELSE 'thumbs_up' END,
           CASE WHEN u_comment < 0.3 THEN 'Rated from the app' ELSE '' END,
           user_id,
           least(timestamp + (5 + u_delay * 600) * interval '1 second', %s)
    FROM (
        SELECT id, status, latency_ms, user_id, timestamp,
               random() AS u_sample, random() AS u_rating, random() AS u_comment, random() AS u_delay
        FROM {LOG_TABLE}
        OFFSET 0
    ) AS calls
    WHERE u_sample < {FEEDBACK_SHARE}
    """  # noqa: S608 (table names and constants only)


def seed_fraction(seed: int, part: int) -> float:
    """setseed() takes a number in [-1, 1]: one per (seed, part), so each chunk is reproducible alone."""
    return random.Random(f"{seed}:{part}").uniform(-1, 1)


def plain_indexes() -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) of the call table's indexes that back no constraint."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT index_class.relname, pg_get_indexdef(index.indexrelid)
            FROM pg_index AS index
            JOIN pg_class AS index_class ON index_class.oid = index.indexrelid
            WHERE index.indrelid = %s::regclass
              AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = index.indexrelid)
            ORDER BY 1
            """,
            [LOG_TABLE],
        )
        return list(cursor.fetchall())


def load_calls(
    rows: int,
    *,
    days: int = 90,
    seed: int = 1,
    end: datetime | None = None,
    rebuild_indexes: bool = False,
    progress: Callable[[str], None] = lambda message: None,
) -> datetime:
    """Insert `rows` calls over the `days` before `end` (default now); answers `end`.

    rebuild_indexes: drop the indexes that back no constraint first and build them again at the
    end (the same definitions, read from the catalogue): much faster for an empty table than
    keeping five indexes up to date row by row.
    """
    if connection.vendor != "postgresql":
        raise RuntimeError("The scale loader writes PostgreSQL SQL; run it under scripts/with-postgres.")
    end = end or timezone.now().replace(second=0, microsecond=0)
    hours = traffic_hours(rows, days, end, seed)
    sql = insert_calls_sql(seed)
    indexes = plain_indexes() if rebuild_indexes else []
    with connection.cursor() as cursor:
        # The planner guesses 1,000 rows per generate_series and JIT-compiles even a small load
        # (a second or two per statement); the expressions are cheap to interpret.
        cursor.execute("SET jit = off")
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        written = 0
        started = time.perf_counter()
        for part, chunk in enumerate(chunks(hours)):
            cursor.execute("SELECT setseed(%s)", [seed_fraction(seed, part)])
            cursor.execute(
                sql, [[hour.start for hour in chunk], [hour.calls for hour in chunk], [hour.incident for hour in chunk]]
            )
            written += cursor.rowcount
            progress(f"calls: {written:,} of {rows:,} ({time.perf_counter() - started:,.0f} s)")
        if indexes:
            cursor.execute("SET maintenance_work_mem = '512MB'")
            for name, definition in indexes:
                cursor.execute(definition)
                progress(f"index {name} rebuilt ({time.perf_counter() - started:,.0f} s)")
        cursor.execute("RESET jit")
    return end


def load_feedback(*, seed: int = 1, end: datetime | None = None) -> int:
    """Rate ~1 % of the calls already stored; answers how many ratings were written."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(%s)", [seed_fraction(seed, -1)])
        cursor.execute(insert_feedback_sql(), [end or timezone.now()])
        return cursor.rowcount


def vacuum_analyze() -> None:
    """Statistics and the visibility map, as autovacuum would leave a table that grew over months.
    VACUUM cannot run in a transaction: call it in autocommit mode."""
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {LOG_TABLE}")
        cursor.execute(f"VACUUM ANALYZE {FEEDBACK_TABLE}")


def make_app_consistent(progress: Callable[[str], None] = lambda message: None) -> list[str]:
    """Run what the app needs after rows were written behind its back; answers the commands run.

    Today nothing keeps state derived from the rows. Once roll-up tables exist (issue 14),
    `rebuild_rollups` fills them from the raw rows; detected by name, so the bench runs before
    and after they land.
    """
    ran = []
    if "rebuild_rollups" in get_commands():
        started = time.perf_counter()
        call_command("rebuild_rollups")
        progress(f"rebuild_rollups: {time.perf_counter() - started:,.0f} s")
        ran.append("rebuild_rollups")
    return ran
