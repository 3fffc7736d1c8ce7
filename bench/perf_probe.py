"""Every metrics endpoint and page at 24 h, 7 d, 30 d and 90 d, timed on a database that already
holds calls (or on 1,000,000 made-up calls in SQLite): the quick loop for tuning the roll-ups, and
the SQLite half of issue 14's targets (300 ms at 1,000,000 calls), which bench/scale_bench.py
(PostgreSQL only) does not measure.

    .venv/bin/python bench/perf_probe.py                          # SQLite: a temporary file, 1M calls
    BENCH_SQLITE=/tmp/probe.sqlite3 .venv/bin/python bench/perf_probe.py   # kept between runs
    DATABASE_URL=postgres://... .venv/bin/python bench/perf_probe.py       # a loaded PostgreSQL
    PROBE_PROFILE="/ 90 d" ...                                    # cProfile of that cell too
    PROBE_INGEST=1 ...                                            # ingest with and without roll-ups

Loading (SQLite, or an empty PostgreSQL): bench/rollup_bench.py's one INSERT of BENCH_ROWS calls
over 90 days (six models, 500 users), then rebuild_rollups. Each cell is the median of 3 GETs
through Django's test client as a logged-in user; the figure a page or endpoint gives is not
checked here (bench/scale_bench.py and tests/test_rollups.py do that).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

if os.environ.get("BENCH_SQLITE") and "DATABASE_URL" not in os.environ:
    os.environ["DATABASE_URL"] = f"sqlite:///{os.environ['BENCH_SQLITE']}"

from common import logged_in_client  # noqa: E402 - sets Django up

# isort: split
import rollup_bench  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from llm import rollups  # noqa: E402
from llm.models import LLMRequestLog, calls_recorded  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
WINDOWS = {"24 h": 1, "7 d": 7, "30 d": 30, "90 d": 90}
ENDPOINTS = [
    "/api/metrics/overview/",
    "/api/metrics/token-usage/",
    "/api/metrics/latency/",
    "/api/metrics/errors/",
    "/api/metrics/model-usage/",
    "/api/metrics/daily-stats/",
    "/api/metrics/timeseries/",
    "/api/logs/",
]
PAGES = ["/", "/analytics/", "/logs/", "/feedback/"]


def prepare() -> int:
    call_command("migrate", verbosity=0)
    if not LLMRequestLog.objects.exists():
        started = time.perf_counter()
        rollup_bench.insert_rows(ROWS)
        print(f"inserted {ROWS:,} calls in {time.perf_counter() - started:,.0f} s", file=sys.stderr)
        started = time.perf_counter()
        call_command("rebuild_rollups", verbosity=0)
        print(f"rebuild_rollups: {time.perf_counter() - started:,.0f} s", file=sys.stderr)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE")
        else:
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
    return LLMRequestLog.objects.count()


def model_name() -> str:
    return (
        LLMRequestLog.objects.filter(timestamp__gte=timezone.now() - timezone.timedelta(days=1))
        .values_list("model_name", flat=True)
        .first()
    )


def median_ms(client, path: str, params: dict[str, str]) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        response = client.get(path, params)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, params, response.status_code, response.content[:300])
    return statistics.median(times)


def profile(client, path: str, params: dict[str, str]) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(3):
        client.get(path, params)
    profiler.disable()
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(35)


def alerts_ms() -> float:
    sys.path.insert(0, str(Path(__file__).parent))
    import scale_bench  # noqa: PLC0415 - only for its 25 rules

    scale_bench.FILTER_MODEL = model_name()
    scale_bench.create_alert_rules()
    from io import StringIO  # noqa: PLC0415

    times = []
    for _ in range(3):
        started = time.perf_counter()
        call_command("check_alerts", stdout=StringIO())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def ingest() -> None:
    """record_many of 500-event batches without the roll-up after writes and with it, interleaved
    (PROBE_ROUNDS rounds, default 3).

    "with" starts with every row rolled up (an untimed catch_up) and ends with the roll-up of the
    rows its last after-write roll-up left (timed): each row it writes is rolled up once inside
    its time, as at a steady rate. "with, backlog" (the figure this probe gave before) follows a
    "without" round, so its roll-ups also add that round's 10,000 rows: twice the rows it writes.
    On a busy machine rounds of a second vary by half; the time the roll-ups take within the
    "with" rounds, over the rest of those rounds' time, is the steadier figure (both halves see
    the same load).
    """
    rates: dict[str, list[float]] = {"without": [], "with": [], "with, backlog": []}
    spent = {"roll-ups": 0.0, "rounds": 0.0}

    def timed_after_write(**kwargs: object) -> None:
        started = time.perf_counter()
        rollups.after_write(**kwargs)
        spent["roll-ups"] += time.perf_counter() - started

    def tail() -> None:
        started = time.perf_counter()
        rollups.roll_up(limit=rollups.AFTER_WRITE_LIMIT)
        spent["roll-ups"] += time.perf_counter() - started

    for _ in range(int(os.environ.get("PROBE_ROUNDS", "3"))):
        calls_recorded.disconnect(dispatch_uid="llm_rollups_after_write")
        rates["without"].append(rollup_bench.ingest_rate())
        calls_recorded.connect(rollups.after_write, dispatch_uid="llm_rollups_after_write")
        rollups._last_after_write = 0.0
        rates["with, backlog"].append(rollup_bench.ingest_rate())
        rollups.catch_up()
        rollups._last_after_write = 0.0
        calls_recorded.disconnect(dispatch_uid="llm_rollups_after_write")
        calls_recorded.connect(timed_after_write, dispatch_uid="llm_rollups_after_write", weak=False)
        started = time.perf_counter()
        rates["with"].append(rollup_bench.ingest_rate(finish=tail))
        spent["rounds"] += time.perf_counter() - started
        calls_recorded.disconnect(dispatch_uid="llm_rollups_after_write")
    calls_recorded.connect(rollups.after_write, dispatch_uid="llm_rollups_after_write")
    told = [f"{name}: {', '.join(f'{rate:,.0f}' for rate in values)} events/s" for name, values in rates.items()]
    without = statistics.median(rates["without"])
    print(
        "ingest (record_many, 20 batches of 500, rounds interleaved): "
        + "; ".join(told)
        + f"; medians {statistics.median(rates['with']) / without - 1:+.1%} with roll-ups, "
        + f"{statistics.median(rates['with, backlog']) / without - 1:+.1%} with a backlog; "
        + f"roll-ups took {spent['roll-ups'] / (spent['rounds'] - spent['roll-ups']):.1%} "
        + "of the with rounds' writing time"
    )


def main() -> None:
    calls = prepare()
    client = logged_in_client()
    model = model_name()
    wanted = os.environ.get("PROBE_PROFILE", "")
    only = os.environ.get("PROBE_ONLY", "")
    end = timezone.now()
    load = os.getloadavg()[0]
    print(f"{calls:,} calls, {connection.vendor}, load average {load:.1f}; one model: {model}")
    print("| endpoint or page | " + " | ".join(f"{w} all | {w} model" for w in WINDOWS) + " |")
    print("| --- |" + " ---: |" * (2 * len(WINDOWS)))
    for path in [*ENDPOINTS, *PAGES]:
        if only and only not in path:
            continue
        cells = []
        for label, days in WINDOWS.items():
            for chosen in ("", model):
                start = end - timezone.timedelta(days=days)
                params = {"start_date": start.isoformat(), "end_date": end.isoformat()}
                if path in PAGES:
                    params["range"] = "custom"
                if chosen:
                    params["model"] = chosen
                milliseconds = median_ms(client, path, params)
                cells.append(f"{milliseconds:,.0f}")
                if wanted == f"{path} {label}" and not chosen:
                    profile(client, path, params)
        print(f"| {path} | " + " | ".join(cells) + " |", flush=True)
    if not only:
        print(f"check_alerts, 25 rules: {alerts_ms():,.0f} ms (median of 3)")
        print(f"/alerts/: {median_ms(client, '/alerts/', {}):,.0f} ms")
    if os.environ.get("PROBE_INGEST"):
        ingest()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
