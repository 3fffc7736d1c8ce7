"""Time / (and others) through the test client on DATABASE_URL; print per-window medians and a profile.
/work/coord/page_prof.py plus: the API paths without `range`, END_MINUTES_AGO (windows ending that
many minutes before now), RUNS, and the median CPU time of this process per request."""
import cProfile, pstats, sys, time, statistics, os
sys.path.insert(0, "bench")
from common import logged_in_client
from django.db import connection, reset_queries
from django.conf import settings
from django.utils import timezone
from datetime import timedelta
from urllib.parse import urlencode
client = logged_in_client()
end = timezone.now() - timedelta(minutes=float(os.environ.get("END_MINUTES_AGO", "0")))
path = os.environ.get("PAGE", "/")
model = os.environ.get("MODEL", "")
for days in (1, 7, 30, 90):
    params = ({} if path.startswith("/api/") else {"range": "custom"}) | {"start_date": (end - timedelta(days=days)).isoformat(), "end_date": end.isoformat()}
    if model:
        params["model"] = model
    url = path + "?" + urlencode(params)
    times, cpu = [], []
    for _ in range(int(os.environ.get("RUNS", "5"))):
        c = time.process_time(); t = time.perf_counter(); r = client.get(url); times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
        assert r.status_code == 200, r.status_code
    print(f"{path} {days}d model={model or 'all'}: median {statistics.median(times):.0f} ms (min {min(times):.0f}), CPU {statistics.median(cpu):.0f} ms, load {os.getloadavg()[0]:.1f}", flush=True)
if os.environ.get("PROFILE"):
    days = int(os.environ["PROFILE"])
    params = ({} if path.startswith("/api/") else {"range": "custom"}) | {"start_date": (end - timedelta(days=days)).isoformat(), "end_date": end.isoformat()}
    if model: params["model"] = model
    url = path + "?" + urlencode(params)
    settings.DEBUG = True
    reset_queries()
    prof = cProfile.Profile(); prof.enable(); client.get(url); prof.disable()
    qs = sorted(connection.queries, key=lambda q: -float(q["time"]))
    print(len(connection.queries), "queries; slowest:")
    for q in qs[:12]:
        print(f"  {float(q['time'])*1000:.1f} ms  {q['sql'][:230]}")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
