"""Time the text search's worst cases on an existing database without writing to it.

    DATABASE_URL=postgres://... .venv/bin/python bench/search_bench.py

Calls the views directly (an existing superuser, no login, no session row): /api/logs/ (default),
the logs page (SEARCH_BENCH_KIND=page) or the CSV export (export), for each text of
SEARCH_BENCH_NEEDLES (|-separated) over windows of SEARCH_BENCH_DAYS (comma-separated) ending at
SEARCH_BENCH_END (default now), SEARCH_BENCH_RUNS times (median, min, max), with the 1-minute load
average. SEARCH_BENCH_EXTRA adds filters (`user_id=u&model=m`). The answer's status and count show
what was answered: a 400 is a search that did not finish within SEARCH_TIMEOUT_MS.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.messages.storage.fallback import FallbackStorage  # noqa: E402
from django.contrib.sessions.backends.signed_cookies import SessionStore  # noqa: E402
from django.test import RequestFactory  # noqa: E402
from django.utils import timezone  # noqa: E402
from rest_framework.test import APIRequestFactory, force_authenticate  # noqa: E402

from llm import views  # noqa: E402
from llm.api.export import CSVExport  # noqa: E402
from llm.api.logs import LogList  # noqa: E402

settings.ALLOWED_HOSTS = ["*"]


def get(kind: str, user, params: dict[str, str]) -> tuple[int, str]:
    if kind == "page":
        request = RequestFactory().get("/logs/", {**params, "range": "custom"})
        request.user, request.session = user, SessionStore()
        request._messages = FallbackStorage(request)
        response = views.logs(request)
        return response.status_code, "did not finish" if b"did not finish" in response.content else ""
    request = APIRequestFactory().get(f"/api/{'export/csv' if kind == 'export' else 'logs'}/", params)
    force_authenticate(request, user=user)
    response = (CSVExport if kind == "export" else LogList).as_view()(request)
    if kind == "export" and response.status_code == 200:
        return 200, f"{sum(len(chunk) for chunk in response.streaming_content):,} bytes"
    response.render()
    return response.status_code, str(response.data.get("count", "")) if response.status_code == 200 else "search"


def main() -> None:
    user = get_user_model().objects.filter(is_superuser=True).first()
    if user is None:
        sys.exit("No superuser in this database: the bench writes nothing, so it needs one.")
    end = datetime.fromisoformat(os.environ["SEARCH_BENCH_END"]) if "SEARCH_BENCH_END" in os.environ else timezone.now()
    kind = os.environ.get("SEARCH_BENCH_KIND", "api")
    extra = dict(parse_qsl(os.environ.get("SEARCH_BENCH_EXTRA", "")))
    runs = int(os.environ.get("SEARCH_BENCH_RUNS", "5"))
    for needle in os.environ.get("SEARCH_BENCH_NEEDLES", "refund|your refund we|qz|退款").split("|"):
        for days in [float(day) for day in os.environ.get("SEARCH_BENCH_DAYS", "1,7,30,90").split(",")]:
            params = {
                "start_date": (end - timedelta(days=days)).isoformat(),
                "end_date": end.isoformat(),
                "search": needle,
                **extra,
            }
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                status, answer = get(kind, user, params)
                times.append((time.perf_counter() - started) * 1000)
            print(
                f"{kind} {needle!r} {days:g} d {extra or ''}: median {statistics.median(times):,.0f} ms "
                f"(min {min(times):,.0f}, max {max(times):,.0f}) -> {status} {answer}, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
