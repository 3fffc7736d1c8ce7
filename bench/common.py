"""What the 1,000,000-row benches share: Django set up on a throwaway database, the sample data,
a logged-in test client and the median of three timed requests.

Import it before anything from Django. Without DATABASE_URL the database is a temporary SQLite
file; `scripts/with-postgres` sets DATABASE_URL to a throwaway PostgreSQL cluster.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DATABASE_URL", f"sqlite:///{tempfile.mkdtemp(prefix='llm-bench-')}/bench.sqlite3")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402

from llm.models import LLMRequestLog  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))


def ensure_sample_data(rows: int = ROWS) -> None:
    """Migrate, then fill the table with `rows` calls over 30 days unless it already has them."""
    call_command("migrate", verbosity=0)
    if LLMRequestLog.objects.count() < rows:
        started = time.perf_counter()
        call_command("generate_sample_data", count=rows, days=30, seed=1, clear=True, verbosity=0)
        print(f"generate_sample_data: {rows:,} rows in {time.perf_counter() - started:,.0f} s", file=sys.stderr)


def logged_in_client() -> Client:
    # A superuser: every page and endpoint, `search` included (it needs the right to read text).
    user, _ = get_user_model().objects.update_or_create(
        username="bench", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    return client


def median_get_ms(client: Client, url: str, params: dict[str, str] | None = None) -> float:
    """Median wall time of three GETs through the whole Django stack; any status but 200 stops the bench."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        response = client.get(url, params)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code, response.content[:300])
    return statistics.median(times)
