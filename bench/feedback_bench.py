"""The cells issue 14 still missed after the roll-ups, timed on one loaded PostgreSQL: the feedback
page and API at 24 h to 90 d (with and without a model), the 90-day overview of one model, the 7-day
timeseries and the logs search with a model.

    scripts/with-postgres sh -c '
        BENCH_SCALE_ROWS=2000000 .venv/bin/python bench/feedback_bench.py load &&
        .venv/bin/python bench/feedback_bench.py time > after.json &&
        (cd /tmp/before && .venv/bin/python bench/feedback_bench.py time) > before.json'

`load` migrates and writes BENCH_SCALE_ROWS calls over 90 days and ~1 % ratings with
bench/scale_data.py (then VACUUM ANALYZE and whatever makes the app consistent, rebuild_rollups).
`time` measures each cell (median of 5 GETs through Django's test client, logged in) and prints
one JSON object: {cell: {"ms": median, "answer": a digest of the JSON answer}} plus the load
average, so runs of two versions of the code over the same rows compare both time and answers.
Windows end one minute after the newest call, the same instant in every run. BENCH_ONLY=text
keeps the cells whose name holds it; BENCH_RUNS sets the GETs per cell.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from typing import Any

from common import logged_in_client  # noqa: E402 - sets Django up

# isort: split
from django.db import connection  # noqa: E402
from django.db.models import Max  # noqa: E402

from llm.models import LLMRequestLog  # noqa: E402

ROWS = int(os.environ.get("BENCH_SCALE_ROWS", "2000000"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
MODEL = "llama-3.1-8b-instant"
WINDOWS = {"24 h": timedelta(hours=24), **{f"{days} d": timedelta(days=days) for days in (7, 30, 90)}}


def load() -> None:
    import scale_data  # the loader only: `time` also runs from an older checkout
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    if LLMRequestLog.objects.exists():
        return
    started = time.perf_counter()
    end = scale_data.load_calls(ROWS, rebuild_indexes=True, progress=lambda message: print(message, file=sys.stderr))
    ratings = scale_data.load_feedback(end=end)
    scale_data.vacuum_analyze()
    scale_data.make_app_consistent()
    print(f"{ROWS:,} calls, {ratings:,} ratings in {time.perf_counter() - started:,.0f} s", file=sys.stderr)


def cells() -> list[tuple[str, str, dict[str, str]]]:
    """(name, path, params) of every cell, windows ending one minute after the newest call."""
    end = LLMRequestLog.objects.aggregate(end=Max("timestamp"))["end"].replace(microsecond=0) + timedelta(minutes=1)
    found = []
    for label, length in WINDOWS.items():
        window = {"start_date": (end - length).isoformat(), "end_date": end.isoformat()}
        for model in ("", MODEL):
            picked = {**window, "model": model} if model else window
            name = f"{label} {model or 'all'}"
            found.append((f"/feedback/ {name}", "/feedback/", {"range": "custom", **picked}))
            found.append((f"/api/feedback/analytics/ {name}", "/api/feedback/analytics/", picked))
            found.append((f"/api/feedback/ {name}", "/api/feedback/", picked))
            if label == "7 d":
                found.append((f"/api/metrics/timeseries/ {name}", "/api/metrics/timeseries/", picked))
            if label == "90 d" and model:
                found.append((f"/api/metrics/overview/ {name}", "/api/metrics/overview/", picked))
            if model and label != "24 h":
                found.append((f"/api/logs/?search=refund {name}", "/api/logs/", {**picked, "search": "refund"}))
    return found


def rounded(value: Any) -> Any:
    """Floats to 9 significant digits: a float sum's last bits depend on the order rows are added."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def digest(response) -> str:
    """A short digest of a JSON answer (pages: none), to compare the answers of two runs."""
    if not response["Content-Type"].startswith("application/json"):
        return ""
    canonical = json.dumps(rounded(json.loads(response.content)), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def measure() -> None:
    client = logged_in_client()
    results: dict[str, object] = {"vendor": connection.vendor, "load_before": os.getloadavg()[0]}
    only = os.environ.get("BENCH_ONLY", "")
    for name, path, params in cells():
        if only not in name:
            continue
        times = []
        for _ in range(RUNS):
            started = time.perf_counter()
            response = client.get(path, params)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (name, response.status_code, response.content[:300])
        results[name] = {"ms": round(statistics.median(times), 1), "answer": digest(response)}
        print(f"{name}: {results[name]['ms']} ms", file=sys.stderr)
    results["load_after"] = os.getloadavg()[0]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    {"load": load, "time": measure}[sys.argv[1]]()
