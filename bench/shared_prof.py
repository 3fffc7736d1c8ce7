"""Time the overview page's shared reading alone (metrics.share and the figures derived from it:
overview_figures, timeseries, errors, cost_by_model) on DATABASE_URL, in process: median of RUNS
warm runs per window (1, 7, 30, 90 days), with and without MODEL. END_MINUTES_AGO: windows end
that many minutes before now (default 0; a non-round value gives windows ending at an arbitrary
minute). PROFILE=N: a cProfile of the N-day reading. SPLIT=1: the share and the figures apart."""

from __future__ import annotations

import cProfile
import os
import pstats
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402, F401  (sets Django up)
from django.conf import settings  # noqa: E402
from django.db import connection, reset_queries  # noqa: E402
from django.utils import timezone  # noqa: E402

from llm import dashboard, metrics  # noqa: E402

RUNS = int(os.environ.get("RUNS", "9"))
MODEL = os.environ.get("MODEL", "")
END = timezone.now() - timedelta(minutes=float(os.environ.get("END_MINUTES_AGO", "0")))


def window(days: int) -> dashboard.TimeRange:
    return dashboard.TimeRange("custom", END - timedelta(days=days), END, MODEL)


def reading(days: int) -> tuple[float, float, float]:
    chosen_window = window(days)
    cpu = time.process_time()
    started = time.perf_counter()
    state = metrics.rollup_state()
    recent = metrics.recent_rows(state.last_id, state)
    chosen = metrics.share(chosen_window.selection(), chosen_window.group_by, recent)
    shared = time.perf_counter()
    metrics.overview_figures(chosen)
    metrics.timeseries(chosen, chosen_window.group_by, start=chosen_window.start, end=chosen_window.end)
    metrics.errors(chosen, recent)
    metrics.cost_by_model(chosen)
    done = time.perf_counter()
    return (shared - started) * 1000, (done - started) * 1000, (time.process_time() - cpu) * 1000


for days in (1, 7, 30, 90):
    reading(days)
    runs = [reading(days) for _ in range(RUNS)]
    share_ms = statistics.median(run[0] for run in runs)
    total_ms = statistics.median(run[1] for run in runs)
    print(
        f"{days:>2} d model={MODEL or 'all'}: recent+share {share_ms:.1f} ms, with figures {total_ms:.1f} ms "
        f"(min {min(run[1] for run in runs):.1f}), CPU {statistics.median(run[2] for run in runs):.1f} ms"
        f" load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
if os.environ.get("PROFILE"):
    days = int(os.environ["PROFILE"])
    settings.DEBUG = True
    reset_queries()
    profile = cProfile.Profile()
    repeats = int(os.environ.get("PROFILE_RUNS", "1"))  # several: the profile's figures summed
    profile.enable()
    for _ in range(repeats):
        reading(days)
    profile.disable()
    print(len(connection.queries), "queries; slowest:")
    for query in sorted(connection.queries, key=lambda q: -float(q["time"]))[:10]:
        print(f"  {float(query['time']) * 1000:.1f} ms  {query['sql'][:200]}")
    stats = pstats.Stats(profile).sort_stats(os.environ.get("SORT", "cumulative"))
    stats.print_stats(int(os.environ.get("LINES", "50")))
