"""The rule preview over 30 days of 1,000,000 calls, every 5 minutes (8,640 evaluations per rule).

    scripts/with-postgres .venv/bin/python bench/alert_preview_bench.py

The calls are written by set-based SQL (bench/scale_data.py: the sample data's shape, ~500 users,
ratings on ~1 % of calls). For each rule below: the median of three replays
(`alert_preview.replay`, what POST /api/alerts/rules/preview/ runs) and the CPU time this process
spent in them (the rest is PostgreSQL, and waiting for a core on a busy machine: the load average
is printed), one request through the whole API, and the agreement with check_alerts' own exact
evaluation (`alerts.evaluate`) at 20 instants spread over the period: the largest relative
difference of the value. Target: 2 s per preview.

With DATABASE_URL set to a database of your own instead of `scripts/with-postgres`, the calls are
loaded once and later runs reuse them.

Then (PostgreSQL, unless BENCH_INGEST=0) what the covering indexes cost a write: batches of 500
new calls written by one INSERT, the median per batch with the model and user indexes as migration
0027 and 0029 make them (INCLUDE the rule's columns), without the INCLUDE, and with
them again (both rebuilt between the rounds; the migration's definitions are left at the end).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from datetime import timedelta

# common first: it puts the project on sys.path and sets Django up, which scale_data needs.
from common import logged_in_client

# isort: split
import scale_data
from django.core.management import call_command
from django.db import connection, transaction

from llm import alert_preview, alerts
from llm.models import AlertRule, LLMRequestLog

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
DAYS = 30
STEP = 5
TARGET_MS = 2000
Metric = AlertRule.MetricType
RULES = [
    {"metric_type": Metric.ERROR_RATE, "threshold": 10, "warning_threshold": 5, "time_window_minutes": 15},
    {"metric_type": Metric.ERROR_RATE, "threshold": 20, "error_type": "rate_limit", "time_window_minutes": 15},
    {"metric_type": Metric.ERROR_RATE, "threshold": 10, "group_by": "model", "time_window_minutes": 15},
    {"metric_type": Metric.LATENCY_P95, "threshold": 3000, "time_window_minutes": 15},
    {"metric_type": Metric.LATENCY_P99, "threshold": 8000, "group_by": "model", "time_window_minutes": 60},
    {"metric_type": Metric.TTFT_P95, "threshold": 1000, "time_window_minutes": 15},
    {"metric_type": Metric.COST, "threshold": 0.5, "group_by": "user", "time_window_minutes": 60},
    # The same with levels a few heavy users reach (fires, escalations, resolves per user).
    {
        "metric_type": Metric.COST,
        "threshold": 0.04,
        "warning_threshold": 0.012,
        "group_by": "user",
        "time_window_minutes": 60,
    },
    # A percentile per user: ~500 groups x 8,640 windows (the wavelet matrix's case).
    {"metric_type": Metric.LATENCY_P95, "threshold": 5000, "group_by": "user", "time_window_minutes": 60},
    {"metric_type": Metric.TOKEN_SPIKE, "threshold": 2, "time_window_minutes": 60},
    {"metric_type": Metric.NO_TRAFFIC, "threshold": 5, "time_window_minutes": 15},
    {"metric_type": Metric.FEEDBACK, "threshold": 60, "min_ratings": 5, "time_window_minutes": 60},
]


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def describe(spec: dict) -> str:
    extra = [f"{key}={spec[key]}" for key in ("error_type", "group_by", "warning_threshold") if key in spec]
    return f"{spec['metric_type']} {spec['time_window_minutes']} min" + (f" ({', '.join(extra)})" if extra else "")


def agreement(rule: AlertRule, result: alert_preview.Replay, count: int = 20) -> float:
    """Largest relative difference between the replay's value of each group and check_alerts' own
    exact one (`alerts.evaluate_groups`, one query per window) at `count` instants."""
    rng = random.Random(1)
    worst = 0.0
    series = {key: group.series(len(result.times)) for key, group in result.groups.items()}
    for index in sorted(rng.sample(range(len(result.times)), count)):
        evaluations, _left_out = alerts.evaluate_groups(rule, result.times[index], states={})
        for evaluation in evaluations:
            replayed = series[evaluation.group_key][index] if evaluation.group_key in series else None
            exact = evaluation.value
            if exact is None or replayed is None:
                assert exact is None and replayed is None, (rule.metric_type, result.times[index], exact, replayed)
                continue
            worst = max(worst, abs(exact - replayed) / max(abs(exact), 1e-12))
    return worst


def main() -> None:
    call_command("migrate", verbosity=0)
    if LLMRequestLog.objects.count() < ROWS:
        started = time.perf_counter()
        end = scale_data.load_calls(ROWS, days=DAYS, rebuild_indexes=True, progress=progress)
        scale_data.load_feedback(end=end)
        scale_data.vacuum_analyze()
        progress(f"loaded in {time.perf_counter() - started:,.0f} s")
    now = LLMRequestLog.objects.latest("timestamp").timestamp + timedelta(minutes=1)
    client = logged_in_client()
    print(f"{ROWS:,} calls over {DAYS} days; every {STEP} min = {DAYS * 24 * 60 // STEP:,} evaluations per rule\n")
    print(
        "| rule | replay, median of 3 | its CPU in this process | API request | fires | notifications "
        "| max rel. diff vs check_alerts |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    slowest = 0.0
    for index, spec in enumerate(RULES):
        # Re-runnable on a kept database (DATABASE_URL set by hand): one rule per name.
        AlertRule.objects.filter(name=f"bench {index}").delete()
        rule = AlertRule.objects.create(name=f"bench {index}", **spec)
        times, cpu = [], []
        for _ in range(3):
            started, started_cpu = time.perf_counter(), time.process_time()
            result = alert_preview.replay(rule, now, DAYS, STEP)
            times.append((time.perf_counter() - started) * 1000)
            # The rest of the wall time is PostgreSQL's (and waiting for a core: note the load).
            cpu.append((time.process_time() - started_cpu) * 1000)
        body = {"rule_id": rule.pk, "days": DAYS, "step_minutes": STEP}
        started = time.perf_counter()
        response = client.post("/api/alerts/rules/preview/", json.dumps(body), content_type="application/json")
        api_ms = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, response.content[:300]
        fires = sum(event["kind"] == "fire" for event in result.events)
        difference = agreement(rule, result)
        median = statistics.median(times)
        slowest = max(slowest, median, api_ms)
        print(
            f"| {describe(spec)} | {median:,.0f} ms | {statistics.median(cpu):,.0f} ms | {api_ms:,.0f} ms "
            f"| {fires:,} | {result.notifications:,} "
            f"| {difference:.1e} |"
        )
    verdict = "within" if slowest <= TARGET_MS else "ABOVE"
    print(f"\nSlowest: {slowest:,.0f} ms, {verdict} the {TARGET_MS:,} ms target.")
    load = os.getloadavg()
    print(f"Load average during the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs.")


INGEST_BATCH = 500
INGEST_ROUNDS = int(os.environ.get("BENCH_INGEST_BATCHES", "10"))
# The covering indexes of migrations 0027 (rule_covering_indexes) and 0029 (model_time_user_index),
# and the plain ones they replaced.
RULE_COLUMNS = "status, error_type, total_tokens, cost_estimate, latency_ms, ttft_ms"
COVERED = {
    "llm_log_model_time_user": f"(model_name, timestamp, user_id) INCLUDE ({RULE_COLUMNS})",
    "llm_log_user_time": f"(user_id, timestamp) INCLUDE (model_name, {RULE_COLUMNS})",
}
PLAIN = {"llm_log_model_time_user": "(model_name, timestamp, user_id)", "llm_log_user_time": "(user_id, timestamp)"}


def build_indexes(definitions: dict[str, str]) -> None:
    with connection.cursor() as cursor:
        for name, columns in definitions.items():
            cursor.execute(f"DROP INDEX IF EXISTS {name}")
            cursor.execute(f"CREATE INDEX {name} ON {LLMRequestLog._meta.db_table} {columns}")
        cursor.execute(f"VACUUM ANALYZE {LLMRequestLog._meta.db_table}")


def insert_times() -> list[float]:
    """Each batch: 500 calls (copies of recent ones: a new request_id, a time in the last hour)
    written by one INSERT, in its own transaction: the table's and every index's share of a write."""
    table = LLMRequestLog._meta.db_table
    columns = [field.column for field in LLMRequestLog._meta.concrete_fields if field.column not in ("id",)]
    chosen = ", ".join(
        {
            "request_id": "gen_random_uuid()",
            "timestamp": "now() - random() * interval '1 hour'",
        }.get(column, f'"{column}"')
        for column in columns
    )
    names = ", ".join(f'"{column}"' for column in columns)
    sql = f"INSERT INTO {table} ({names}) SELECT {chosen} FROM {table} ORDER BY id DESC LIMIT {INGEST_BATCH}"  # noqa: S608
    times = []
    for _ in range(INGEST_ROUNDS):
        with transaction.atomic(), connection.cursor() as cursor:
            started = time.perf_counter()
            cursor.execute(sql)
        times.append((time.perf_counter() - started) * 1000)
    return times


def ingest_cost() -> None:
    """Median time of writing a 500-call batch with and without the INCLUDE columns (covered,
    plain, covered: the machine's load drifts). The SQL write alone, where the indexes' cost is:
    the events API adds validation, pricing and the roll-ups' bookkeeping, the same either way."""
    print(f"\nOne INSERT of {INGEST_BATCH} calls (commit included), median of {INGEST_ROUNDS}:\n")
    print("| model and user indexes | median per batch | load (1 min) |")
    print("|---|---:|---:|")
    for label, definitions in (("with INCLUDE", COVERED), ("plain", PLAIN), ("with INCLUDE, again", COVERED)):
        build_indexes(definitions)
        insert_times()  # warm-up
        median = statistics.median(insert_times())
        print(f"| {label} | {median:,.1f} ms | {os.getloadavg()[0]:.1f} |")


if __name__ == "__main__":
    main()
    if connection.vendor == "postgresql" and os.environ.get("BENCH_INGEST", "1") != "0":
        ingest_cost()
