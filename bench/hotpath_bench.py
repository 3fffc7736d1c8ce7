"""The proxy's hot path through the server `make run` starts: what a prompt costs, how many go
through a second, and how many can be in flight at once.

    .venv/bin/python bench/hotpath_bench.py                         # SQLite (a temporary file)
    scripts/with-postgres .venv/bin/python bench/hotpath_bench.py   # PostgreSQL
    BENCH_LIMIT_OFF=1 ...                                           # and a row with the prompt limit off
    BENCH_PROXY=0 ...                                               # the ingest rows only (~40 s)
    BENCH_INGEST_CLIENTS=4 BENCH_OTLP=0 ...                         # of those, events with 4 clients only

It starts the fake Groq of tests/fake_groq.py in its asyncio form (one process holds thousands of
slow answers), then the app as `make run` serves it (core/gunicorn.conf.py), and talks
to both over raw HTTP/1.1 keep-alive sockets from an asyncio client, so that the client costs as
little CPU as possible on the same two cores. Prints one table.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", f"sqlite:///{tempfile.mkdtemp(prefix='llm-hotpath-')}/bench.sqlite3")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

OVERHEAD_CALLS = int(os.environ.get("BENCH_OVERHEAD_CALLS", "1000"))
THROUGHPUT_SECONDS = float(os.environ.get("BENCH_THROUGHPUT_SECONDS", "10"))
CLIENTS = 16
CONCURRENT = int(os.environ.get("BENCH_CONCURRENT", "1000"))
SLOW_SECONDS = 2.0
FAST_SECONDS = 0.001
# The server's, and this process's when it signs a session for it (bench/serving_compare.py).
SECRET_KEY = "hotpath-bench-" + "x" * 40
SERVE_COMMAND = "gunicorn --config core/gunicorn.conf.py core.asgi:application"
PROMPT = {"prompt": "What is the capital of France?", "model": "llama-3.1-8b-instant"}
# Ingest: POST /api/events/ in batches of EVENTS_PER_BATCH for INGEST_SECONDS with 1, 4 and 8
# clients; OTLP/JSON exports of SPANS_PER_EXPORT spans (the OTel SDK's batch size is 512).
INGEST_SECONDS = float(os.environ.get("BENCH_INGEST_SECONDS", "8"))
INGEST_CLIENTS = tuple(int(n) for n in os.environ.get("BENCH_INGEST_CLIENTS", "1,4,8").split(","))
EVENTS_PER_BATCH = 500
SPANS_PER_EXPORT = 500
COPY_ROWS = 20_000
# The rate limits are on, at a value never reached (what they cost is measured, not what they
# refuse), unless the environment sets them; BENCH_LIMIT_OFF=1 adds a row of prompts/s with
# PROMPT_RATE_LIMIT=0, from a server of its own.
RATE_LIMITS = {"PROMPT_RATE_LIMIT": "100000000", "INGEST_RATE_LIMIT": "1000000000"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {seconds} s")


@contextmanager
def running(command: list[str], port: int, env: dict[str, str], log: Path, cwd: Path = ROOT):
    with log.open("ab") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# CPU time per process tree, to show where a prompt's CPU goes on the shared cores.

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of a process and its live descendants, and of the children they reaped."""
    children = _children()
    total, pending = 0.0, [root]
    while pending:
        pid = pending.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15]) / CLOCK_TICKS  # utime stime cutime cstime
        pending.extend(children.get(pid, []))
    return total


def postgres_root() -> int | None:
    """The postmaster of DATABASE_URL's cluster (scripts/with-postgres): its backends do the writes."""
    url = os.environ["DATABASE_URL"]
    if not url.startswith("postgres"):
        return None
    port = url.rsplit(":", 1)[1].split("/")[0]
    for entry in Path("/proc").iterdir():
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if words and words[0].endswith(b"postgres") and b"-p" in words and port.encode() in words:
            return int(entry.name)
    return None


class CPUMeter:
    """CPU seconds spent by each named process tree (and this client) between start() and stop()."""

    def __init__(self, **roots: int | None) -> None:
        self.roots = {name: pid for name, pid in roots.items() if pid is not None}

    def read(self) -> dict[str, float]:
        own = os.times()
        return {"client": own.user + own.system} | {name: tree_cpu_seconds(pid) for name, pid in self.roots.items()}

    def start(self) -> None:
        self.started = self.read()

    def stop(self) -> dict[str, float]:
        ended = self.read()
        return {name: ended[name] - self.started[name] for name in ended}


def fake_groq(port: int, delay: float, log: Path):
    command = [sys.executable, "-m", "tests.fake_groq", "--fast", str(port), str(delay)]
    return running(command, port, dict(os.environ), log)


@contextmanager
def app_server(port: int, upstream: str, log: Path, **settings: str):
    with _app_process(port, upstream, log, **settings) as process:
        wait_for_workers(log, process)
        yield process


def wait_for_workers(log: Path, process: subprocess.Popen, seconds: float = 60) -> None:
    """Until every worker gunicorn has booted (the master logs each before the port answers) has
    finished its start-up. The workers open sockets of their own (reuse_port, core/gunicorn.conf.py)
    and the port answers as soon as the first one listens: prompts sent then all went to that
    worker (16 of 16 warm-up prompts), and the other met its first burst with no key cached, ~490
    of its 500 prompts on the ordinary path."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        booted = text.count("Booting worker with pid")
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        # No such line: not gunicorn (BENCH_SERVE), and the port's answer is all there is to wait for.
        if not booted or text.count("Application startup complete") >= booted:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the workers of {process.args} did not all start in {seconds} s")


def _app_process(port: int, upstream: str, log: Path, **settings: str):
    command = shlex.split(_serve_label()) + ["--bind", f"127.0.0.1:{port}"]
    command[0] = str(ROOT / ".venv" / "bin" / command[0]) if not os.path.isabs(command[0]) else command[0]
    return running(command, port, app_environment(upstream, **settings), log)


def app_environment(upstream: str, **settings: str) -> dict[str, str]:
    """The app server's environment: production settings (no debug bookkeeping, plain HTTP on the
    loopback), the rate limits out of the way, Groq at `upstream`, and `settings` over them."""
    return {
        **RATE_LIMITS,
        **os.environ,
        "DEBUG": "False",
        "DJANGO_SECRET_KEY": SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "False",
        "GROQ_API_KEY": "gsk_bench",
        "GROQ_BASE_URL": upstream,
        "GROQ_MAX_RETRIES": "0",
        "OBSERVATORY_ENV_FILE": "",
        **settings,
    }


# A minimal HTTP/1.1 client: keep-alive, Content-Length or chunked answers.


class Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        self.writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def post(self, path: str, body: bytes, headers: str = "") -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            content = b"".join(parts)
        else:
            start = lower.index(b"content-length:") + 15
            length = int(lower[start : lower.index(b"\r\n", start)])
            content = await self.reader.readexactly(length)
        if b"connection: close" in lower:
            self.close()
        return status, content

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def measure_overhead(app_port: int, upstream_port: int, auth: str) -> dict[str, float]:
    """One client, alternating: the upstream directly, then the same prompt through the proxy."""
    direct, through = Connection(upstream_port), Connection(app_port)
    upstream_body = json.dumps({"model": PROMPT["model"], "messages": [{"role": "user", "content": PROMPT["prompt"]}]})
    body = json.dumps(PROMPT).encode()
    times: dict[str, list[float]] = {"direct": [], "through": []}
    for index in range(OVERHEAD_CALLS + 50):
        started = time.perf_counter()
        status, _ = await direct.post("/openai/v1/chat/completions", upstream_body.encode())
        middle = time.perf_counter()
        status2, answer = await through.post("/api/llm/prompt/", body, auth)
        ended = time.perf_counter()
        assert status == 200 and status2 == 200, (status, status2, answer[:300])
        if index >= 50:  # warm-up
            times["direct"].append((middle - started) * 1000)
            times["through"].append((ended - middle) * 1000)
    direct.close()
    through.close()
    return {f"{name} {q}": percentile(values, q) for name, values in times.items() for q in (50, 99)}


async def warm_up(app_port: int, auth: str, prompts: int = 20) -> None:
    """What the overhead measure does for the main server: gunicorn listens seconds before its
    workers are up, and their first prompts open connections and import what they need."""
    body = json.dumps(PROMPT).encode()

    async def client() -> None:
        connection = Connection(app_port)
        for _ in range(prompts):
            await connection.post("/api/llm/prompt/", body, auth)
        connection.close()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))


async def measure_throughput(app_port: int, auth: str, stream: bool = False) -> dict[str, float]:
    """CLIENTS keep-alive connections, each sending prompts back to back for THROUGHPUT_SECONDS."""
    body = json.dumps({**PROMPT, "stream": stream}).encode()
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + THROUGHPUT_SECONDS

    async def client() -> None:
        nonlocal failures
        connection = Connection(app_port)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status, _ = await connection.post("/api/llm/prompt/", body, auth)
            latencies.append((time.perf_counter() - started) * 1000)
            failures += status != 200
        connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    elapsed = time.perf_counter() - started
    return {
        "per second": len(latencies) / elapsed,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "calls": len(latencies),
        "failures": failures,
    }


async def measure_concurrency(app_port: int, auth: str, stream: bool) -> dict[str, float]:
    """CONCURRENT prompts sent at once, each on its own connection; wall time until the last answer."""
    body = json.dumps({**PROMPT, "stream": stream}).encode()
    connections = [Connection(app_port) for _ in range(CONCURRENT)]
    await asyncio.gather(*(connection.open() for connection in connections))
    times: list[float] = []

    async def one(connection: Connection) -> int:
        sent = time.perf_counter()
        status, content = await connection.post("/api/llm/prompt/", body, auth)
        times.append(time.perf_counter() - sent)
        connection.close()
        ok = status == 200 and (not stream or b"event: done" in content)
        return int(ok)

    started = time.perf_counter()
    ok = sum(await asyncio.gather(*(one(connection) for connection in connections)))
    wall = time.perf_counter() - started
    return {"wall": wall, "median": statistics.median(times), "ok": ok}


def event_batch() -> bytes:
    """EVENTS_PER_BATCH new events (fresh request ids) as one body, like an SDK's batch."""
    now = datetime.now(UTC)
    return json.dumps(
        {
            "events": [
                {
                    "request_id": str(uuid.uuid4()),
                    "timestamp": (now - timedelta(milliseconds=index)).isoformat(),
                    "model": "llama-3.1-8b-instant",
                    "provider": "groq",
                    "prompt_tokens": 120 + index % 50,
                    "completion_tokens": 40 + index % 30,
                    "latency_ms": 250.5 + index,
                    "ttft_ms": 80.25,
                    "status": "success",
                    "user_id": f"user-{index % 20}",
                    "prompt": "What is the capital of France?",
                    "response": "Paris.",
                    "finish_reason": "stop",
                    "tags": {"team": "search"},
                }
                for index in range(EVENTS_PER_BATCH)
            ]
        }
    ).encode()


def otlp_export() -> bytes:
    """SPANS_PER_EXPORT GenAI client spans (OTLP/JSON), fresh ids."""
    start = time.time_ns() - 10**9

    def span(index: int) -> dict:
        def attribute(key: str, value: dict) -> dict:
            return {"key": key, "value": value}

        return {
            "traceId": uuid.uuid4().hex,
            "spanId": uuid.uuid4().hex[:16],
            "name": "chat llama-3.1-8b-instant",
            "kind": 3,
            "startTimeUnixNano": str(start + index),
            "endTimeUnixNano": str(start + index + 250_000_000),
            "attributes": [
                attribute("gen_ai.operation.name", {"stringValue": "chat"}),
                attribute("gen_ai.provider.name", {"stringValue": "groq"}),
                attribute("gen_ai.request.model", {"stringValue": "llama-3.1-8b-instant"}),
                attribute("gen_ai.usage.input_tokens", {"intValue": str(120 + index % 50)}),
                attribute("gen_ai.usage.output_tokens", {"intValue": str(40 + index % 30)}),
            ],
            "status": {},
        }

    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "bench"}}]}
    spans = [span(index) for index in range(SPANS_PER_EXPORT)]
    return json.dumps({"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": spans}]}]}).encode()


async def measure_ingest(app_port: int, auth: str, path: str, bodies: list[bytes], clients: int, per_body: int):
    """`clients` connections posting the prepared bodies back to back for INGEST_SECONDS."""
    posted = 0
    failures = 0
    deadline = time.perf_counter() + INGEST_SECONDS

    async def client() -> None:
        nonlocal posted, failures
        connection = Connection(app_port)
        while time.perf_counter() < deadline and bodies:
            status, answer = await connection.post(path, bodies.pop(), auth)
            if status in (200, 201):
                posted += per_body
            else:
                failures += 1
                print(status, answer[:300], file=sys.stderr)
        connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return {
        "per second": posted / (time.perf_counter() - started),
        "posted": posted,
        "failures": failures,
        "ran out": not bodies,
    }


async def warm_up_ingest(app_port: int, auth: str) -> None:
    """One batch per worker thread's first request, so that the clock does not time imports."""
    bodies = prepared(event_batch, 8)
    await measure_ingest(app_port, auth, "/api/events/", bodies, 4, EVENTS_PER_BATCH)


def prepared(make, count: int) -> list[bytes]:
    return [make() for _ in range(count)]


def copy_rate() -> float | None:
    """Rows/s of a raw COPY of rows like the events' (as record_many would store them) into the
    log table, on PostgreSQL; None on SQLite."""
    from django.db import connection

    from llm import events as event_ingest
    from llm.models import LLMRequestLog, ModelPrice

    if connection.vendor != "postgresql":
        return None
    prices = ModelPrice.objects.price_table()
    logs = []
    while len(logs) < COPY_ROWS:
        for data in event_ingest.parse_events(json.loads(event_batch())):
            log = event_ingest.log_from_event(data)
            log.prepare_for_storage(prices)
            logs.append(log)
    fields = [field for field in LLMRequestLog._meta.concrete_fields if not field.primary_key]
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    rows = [[field.get_db_prep_save(getattr(log, field.attname), connection) for field in fields] for log in logs]
    with connection.cursor() as cursor:
        started = time.perf_counter()
        with cursor.cursor.copy(f"COPY {LLMRequestLog._meta.db_table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        elapsed = time.perf_counter() - started
    return len(rows) / elapsed


def run_ingest(app_port: int, auth: str, loop_run, app_pid: int | None = None) -> dict[str, dict]:
    results: dict[str, dict] = {}
    meter = CPUMeter(app=app_pid, database=postgres_root())
    for clients in INGEST_CLIENTS:
        # Enough bodies for 25,000 events/s per run, prepared before the clock starts.
        bodies = prepared(event_batch, int(25_000 * INGEST_SECONDS / EVENTS_PER_BATCH))
        meter.start()
        results[f"events {clients}"] = loop_run(
            measure_ingest(app_port, auth, "/api/events/", bodies, clients, EVENTS_PER_BATCH)
        )
        results[f"events {clients}"]["cpu"] = meter.stop()
    if os.environ.get("BENCH_OTLP", "1") == "1":
        bodies = prepared(otlp_export, int(25_000 * INGEST_SECONDS / SPANS_PER_EXPORT))
        meter.start()
        results["otlp"] = loop_run(measure_ingest(app_port, auth, "/v1/traces", bodies, 4, SPANS_PER_EXPORT))
        results["otlp"]["cpu"] = meter.stop()
    results["copy"] = {"per second": copy_rate()}
    return results


def prepare_database() -> str:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from llm.models import APIKey

    _, raw_key = APIKey.generate("hotpath-bench", APIKey.ALL_SCOPES)
    return raw_key


def row_count() -> int:
    from django.db import connection

    from llm.models import LLMRequestLog

    connection.close()
    return LLMRequestLog.objects.count()


def settle_database() -> dict[str, float]:
    """Before the bursts, what the earlier rows (the ingest rows: ~300,000) leave to do: the roll-ups
    not yet made (20,000-25,000 rows; else the workers' roll-ups after writes) and, on PostgreSQL,
    the autovacuum and autoanalyze that so many inserts set off, on the cores the bursts measure.
    In full runs one burst of most runs had database CPU of 0.67-1.12 s against ~0.1 s in runs
    without ingest (that burst 3.1-3.4 s wall against ~2.7); an instrumented run saw autovacuum
    of the log table seconds before the bursts and its autoanalyze still to come."""
    from django.db import connection

    from llm.models import LLMRequestLog
    from llm.rollups import ROLLUPS, catch_up
    from llm.watermarks import counted_up_to

    connection.close()
    backlog = LLMRequestLog.objects.filter(id__gt=counted_up_to(ROLLUPS)).count()
    started = time.perf_counter()
    catch_up()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    elapsed = time.perf_counter() - started
    connection.close()
    return {"rows": backlog, "seconds": elapsed}


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    raw_key = prepare_database()
    auth = f"Authorization: Bearer {raw_key}\r\n"
    engine = "PostgreSQL" if os.environ["DATABASE_URL"].startswith("postgres") else "SQLite"
    logs = Path(tempfile.mkdtemp(prefix="llm-hotpath-logs-"))
    results: dict[str, dict] = {"load": {"before": load_average()}}
    fast_port, slow_port, app_port = free_port(), free_port(), free_port()
    loop_run = _loop_runner()
    if os.environ.get("BENCH_PROXY", "1") == "0":
        with app_server(app_port, f"http://127.0.0.1:{fast_port}", logs / "app.log") as app:
            loop_run(warm_up_ingest(app_port, auth))
            results.update(run_ingest(app_port, auth, loop_run, app.pid))
        print_ingest_table(results, engine)
        return

    with (
        fake_groq(fast_port, FAST_SECONDS, logs / "fake.log") as upstream,
        app_server(app_port, f"http://127.0.0.1:{fast_port}", logs / "app.log") as app,
    ):
        before = row_count()
        results["overhead"] = loop_run(measure_overhead(app_port, fast_port, auth))
        meter = CPUMeter(app=app.pid, upstream=upstream.pid, database=postgres_root())
        meter.start()
        results["throughput"] = loop_run(measure_throughput(app_port, auth))
        results["cpu"] = meter.stop()
        results["throughput stream"] = loop_run(measure_throughput(app_port, auth, stream=True))
        written = row_count() - before
        expected = OVERHEAD_CALLS + 50 + results["throughput"]["calls"] + results["throughput stream"]["calls"]
        results["rows"] = {"written": written, "expected": expected}
        if os.environ.get("BENCH_INGEST", "1") == "1":
            results.update(run_ingest(app_port, auth, loop_run, app.pid))
    if os.environ.get("BENCH_LIMIT_OFF") == "1":
        with (
            fake_groq(fast_port, FAST_SECONDS, logs / "fake-limit-off.log"),
            app_server(app_port, f"http://127.0.0.1:{fast_port}", logs / "app-limit-off.log", PROMPT_RATE_LIMIT="0"),
        ):
            loop_run(warm_up(app_port, auth))
            results["throughput limit off"] = loop_run(measure_throughput(app_port, auth))
    results["settled"] = settle_database()
    with (
        fake_groq(slow_port, SLOW_SECONDS, logs / "fake-slow.log") as upstream,
        app_server(app_port, f"http://127.0.0.1:{slow_port}", logs / "app-slow.log") as app,
    ):
        # A running server's figure, not a booting one's: gunicorn listens before its workers have
        # imported the app (seconds of CPU each, more with PYTHONDONTWRITEBYTECODE), so a thousand
        # prompts sent at once would also wait for that. One prompt per client first (2 s).
        loop_run(warm_up(app_port, auth, prompts=1))
        before = row_count()
        # CPU seconds of each process tree during each burst: taking in a thousand prompts is
        # CPU-bound, and this client's share is taken on the same two cores.
        meter = CPUMeter(app=app.pid, upstream=upstream.pid, database=postgres_root())
        for key, stream in (("concurrent", False), ("concurrent stream", True)):
            meter.start()
            results[key] = loop_run(measure_concurrency(app_port, auth, stream=stream))
            results[key]["cpu"] = meter.stop()
        results["rows slow"] = {"written": row_count() - before, "expected": 2 * CONCURRENT}
    print_table(results, engine)
    print(f"server logs: {logs}", file=sys.stderr)


def _loop_runner():
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def print_table(results: dict[str, dict], engine: str) -> None:
    overhead = results["overhead"]
    plain, streamed = results["throughput"], results["throughput stream"]
    slow, slow_stream = results["concurrent"], results["concurrent stream"]
    rows = [
        (
            "proxy overhead p50 (through - direct)",
            f"{overhead['through 50'] - overhead['direct 50']:.2f} ms",
            f"direct {overhead['direct 50']:.2f} ms, through {overhead['through 50']:.2f} ms",
            "< 2 ms",
        ),
        (
            "proxy overhead p99 (through - direct)",
            f"{overhead['through 99'] - overhead['direct 99']:.2f} ms",
            f"direct {overhead['direct 99']:.2f} ms, through {overhead['through 99']:.2f} ms",
            "",
        ),
        (
            f"prompts/s, {CLIENTS} clients (upstream ~1 ms)",
            f"{plain['per second']:,.0f}/s",
            f"p50 {plain['p50']:.1f} ms, p99 {plain['p99']:.1f} ms, {plain['failures']} failed",
            ">= 1,000/s, p99 < 50 ms",
        ),
        (
            f"prompts/s, {CLIENTS} clients, streamed",
            f"{streamed['per second']:,.0f}/s",
            f"p50 {streamed['p50']:.1f} ms, p99 {streamed['p99']:.1f} ms, {streamed['failures']} failed",
            "",
        ),
        (
            f"{CONCURRENT:,} concurrent {SLOW_SECONDS:g} s prompts",
            f"{slow['wall']:.2f} s wall",
            f"median {slow['median']:.2f} s, {slow['ok']:,} answered 200; {burst_cpu(slow)}",
            "< 3 s",
        ),
        (
            f"{CONCURRENT:,} concurrent {SLOW_SECONDS:g} s prompts, streamed",
            f"{slow_stream['wall']:.2f} s wall",
            f"median {slow_stream['median']:.2f} s, {slow_stream['ok']:,} ended with done; {burst_cpu(slow_stream)}",
            "< 3 s",
        ),
        (
            "rows logged (each call exactly once)",
            f"{results['rows']['written'] + results['rows slow']['written']:,}",
            f"expected {results['rows']['expected'] + results['rows slow']['expected']:,}",
            "equal",
        ),
        cpu_row(results),
        *limit_rows(results),
        *ingest_rows(results),
    ]
    print(f"\nHot path on {engine}, {os.cpu_count()} cores, served by: {_serve_label()}")
    print(f"1-minute load average: {results['load']['before']} before, {load_average()} after (a shared machine)")
    settled = results["settled"]
    print(f"Before the bursts: {settled['rows']:,} rows rolled up (and VACUUM ANALYZE) in {settled['seconds']:.1f} s")
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    header = ("measure", "result", "detail", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def burst_cpu(result: dict) -> str:
    """CPU seconds per process tree during a burst (the client's own included: same cores)."""
    cpu = result.get("cpu") or {}
    return "CPU s " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu.items())


def cpu_row(results: dict[str, dict]) -> tuple[str, str, str, str]:
    """CPU per prompt of the 16-client run, by process: what 2 cores allow at most is
    2,000 ms / (the sum per prompt) prompts a second."""
    calls = results["throughput"]["calls"]
    per_prompt = {name: seconds * 1000 / calls for name, seconds in results["cpu"].items()}
    total = sum(per_prompt.values())
    parts = ", ".join(f"{name} {value:.2f}" for name, value in per_prompt.items())
    ceiling = f"2 cores allow {2000 / total:,.0f}/s" if total else ""
    return (f"CPU ms per prompt, {CLIENTS} clients", f"{total:.2f} ms", f"{parts}; {ceiling}", "<= 2 ms for 1,000/s")


def limit_rows(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    if "throughput limit off" not in results:
        return []
    off, on = results["throughput limit off"], results["throughput"]
    limit = os.environ.get("PROMPT_RATE_LIMIT", RATE_LIMITS["PROMPT_RATE_LIMIT"])
    return [
        (
            f"prompts/s, {CLIENTS} clients, PROMPT_RATE_LIMIT=0",
            f"{off['per second']:,.0f}/s",
            f"p50 {off['p50']:.1f} ms, p99 {off['p99']:.1f} ms; limit on ({int(limit):,}): {on['per second']:,.0f}/s",
            "",
        )
    ]


def ingest_rows(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    if "copy" not in results:
        return []
    rates = [results[f"events {clients}"] for clients in INGEST_CLIENTS]
    copy = results["copy"]["per second"]
    copy_text = f"raw COPY of the same rows {copy:,.0f} rows/s" if copy else "no COPY on SQLite"
    failed = sum(rate["failures"] for rate in rates)
    ran_out = " (ran out of prepared bodies)" if any(rate["ran out"] for rate in rates) else ""
    rows = [
        (
            f"events/s, {'/'.join(map(str, INGEST_CLIENTS))} clients, batches of {EVENTS_PER_BATCH}",
            "/".join(f"{rate['per second']:,.0f}" for rate in rates),
            f"{copy_text}; {failed} failed{ran_out}",
            ">= 10,000/s with 4 clients",
        )
    ]
    if otlp := results.get("otlp"):
        rows.append(
            (
                f"OTLP spans/s, 4 clients, exports of {SPANS_PER_EXPORT}",
                f"{otlp['per second']:,.0f}",
                f"{otlp['failures']} failed" + (" (ran out of prepared bodies)" if otlp["ran out"] else ""),
                "keeps pace with events",
            )
        )
    return rows


def print_ingest_table(results: dict[str, dict], engine: str) -> None:
    """BENCH_PROXY=0: the ingest rows, and CPU ms per 500 events by process (app, database, client)."""
    print(f"\nIngest on {engine}, {os.cpu_count()} cores, served by: {_serve_label()}")
    print(f"1-minute load average: {results['load']['before']} before, {load_average()} after (a shared machine)")
    for row in ingest_rows(results):
        print(" | ".join(row))
    for name in [f"events {clients}" for clients in INGEST_CLIENTS] + ["otlp"] * ("otlp" in results):
        result = results[name]
        per_batch = {
            key: seconds * 1000 * EVENTS_PER_BATCH / max(result["posted"], 1) for key, seconds in result["cpu"].items()
        }
        parts = ", ".join(f"{key} {value:.1f}" for key, value in per_batch.items())
        print(f"{name}: {result['per second']:,.0f}/s; CPU ms per {EVENTS_PER_BATCH}: {parts}")


def _serve_label() -> str:
    # What `make run` runs (BENCH_SERVE: another command, to compare).
    return os.environ.get("BENCH_SERVE", SERVE_COMMAND)


if __name__ == "__main__":
    main()
