"""Time a page (PAGE, default /) through the test client on DATABASE_URL: the median of RUNS warm
requests (default 5) and their median CPU time in this process, at windows of 1, 7, 30 and 90 days
ending END_MINUTES_AGO minutes before now (default 0; a non-round value ends them at an arbitrary
minute), of one MODEL or all; PROFILE=N: the slowest queries and a cProfile of the N-day request.
The coordinator's page timer plus API paths (no `range`), the window's end, RUNS and the CPU time.

    DATABASE_URL=postgres://... PAGE=/ MODEL=llama-3.1-8b-instant PROFILE=7 .venv/bin/python bench/page_prof.py
"""

from __future__ import annotations

import cProfile
import os
import pstats
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import logged_in_client  # noqa: E402  (sets Django up)
from django.conf import settings  # noqa: E402
from django.db import connection, reset_queries  # noqa: E402
from django.utils import timezone  # noqa: E402

PATH = os.environ.get("PAGE", "/")
MODEL = os.environ.get("MODEL", "")
RUNS = int(os.environ.get("RUNS", "5"))
END = timezone.now() - timedelta(minutes=float(os.environ.get("END_MINUTES_AGO", "0")))


def url_of(days: int) -> str:
    params = {} if PATH.startswith("/api/") else {"range": "custom"}
    params |= {"start_date": (END - timedelta(days=days)).isoformat(), "end_date": END.isoformat()}
    if MODEL:
        params["model"] = MODEL
    return PATH + "?" + urlencode(params)


def main() -> None:
    client = logged_in_client()
    for days in (1, 7, 30, 90):
        url = url_of(days)
        times, cpu = [], []
        for _ in range(RUNS):
            cpu_started, started = time.process_time(), time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - cpu_started) * 1000)
            assert response.status_code == 200, response.status_code
        print(
            f"{PATH} {days}d model={MODEL or 'all'}: median {statistics.median(times):.0f} ms "
            f"(min {min(times):.0f}), CPU {statistics.median(cpu):.0f} ms, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    if os.environ.get("PROFILE"):
        url = url_of(int(os.environ["PROFILE"]))
        settings.DEBUG = True
        reset_queries()
        profile = cProfile.Profile()
        profile.enable()
        client.get(url)
        profile.disable()
        print(len(connection.queries), "queries; slowest:")
        for query in sorted(connection.queries, key=lambda q: -float(q["time"]))[:12]:
            print(f"  {float(query['time']) * 1000:.1f} ms  {query['sql'][:230]}")
        pstats.Stats(profile).sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
