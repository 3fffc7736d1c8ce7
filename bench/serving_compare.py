"""Pages and ingest under the ASGI serving (core/gunicorn.conf.py) and under gunicorn's gthread
workers as before: requests/s with 8 clients for the overview page and POST /api/events/.

    scripts/with-postgres .venv/bin/python bench/serving_compare.py
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hotpath_bench as hb  # noqa: E402

SERVINGS = {
    "gthread (before)": "gunicorn core.wsgi --workers 2 --threads 8 --timeout 120 --access-logfile -",
    "uvicorn workers + core/asgi.py": hb.SERVE_COMMAND,
}
if os.environ.get("BENCH_ASGI_FIRST"):
    SERVINGS = dict(reversed(SERVINGS.items()))
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
CLIENTS = 8


def session_cookie() -> str:
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_staff": True})
    session = SessionStore()
    session["_auth_user_id"] = str(user.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = user.get_session_auth_hash()
    session.save()
    return f"Cookie: sessionid={session.session_key}\r\n"


def events(count: int) -> bytes:
    now = datetime.now(UTC).isoformat()
    return json.dumps(
        {
            "events": [
                {
                    "request_id": str(uuid.uuid4()),
                    "model": "llama-3.1-8b-instant",
                    "prompt_tokens": 10,
                    "completion_tokens": 5,
                    "latency_ms": 120.5,
                    "status": "success",
                    "timestamp": now,
                }
                for _ in range(count)
            ]
        }
    ).encode()


async def get_loop(port: int, path: str, headers: str) -> float:
    done = 0
    deadline = time.perf_counter() + SECONDS

    async def client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            connection = hb.Connection(port)
            connection.reader, connection.writer = reader, writer
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            lower = head.lower()
            start = lower.index(b"content-length:") + 15
            await reader.readexactly(int(lower[start : lower.index(b"\r\n", start)]))
            done += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return done / (time.perf_counter() - started)


async def post_loop(port: int, auth: str, batch: int) -> float:
    done = 0
    deadline = time.perf_counter() + SECONDS

    async def client() -> None:
        nonlocal done
        connection = hb.Connection(port)
        while time.perf_counter() < deadline:
            status, body = await connection.post("/api/events/", events(batch), auth)
            assert status == 201, body[:300]
            done += batch
        connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return done / (time.perf_counter() - started)


def main() -> None:
    # The servers' production settings here too: the session is signed with their key, and
    # collectstatic writes the manifest they read.
    os.environ.update(DJANGO_SECRET_KEY=hb.SECRET_KEY, DEBUG="False", ALLOWED_HOSTS="127.0.0.1")
    raw_key = hb.prepare_database()
    from django.core.management import call_command

    call_command("generate_sample_data", count=20000, days=30, seed=1, if_empty=True, verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)  # as `make run` does
    cookie = session_cookie()
    auth = f"Authorization: Bearer {raw_key}\r\n"
    logs = Path(tempfile.mkdtemp(prefix="llm-serving-"))
    run = hb._loop_runner()
    engine = "PostgreSQL" if os.environ["DATABASE_URL"].startswith("postgres") else "SQLite"
    print(f"\n{engine}, {CLIENTS} clients, {SECONDS:g} s each, 20,000 sample calls")
    print("serving | overview page/s | /api/metrics/overview/ /s | events/s (batches of 100)")
    figures: dict[str, list[float]] = {label: [] for label in SERVINGS}
    # Reads for both servings first: the events posted afterwards grow the table the pages read.
    for phase in ("read", "ingest"):
        for label, command in SERVINGS.items():
            os.environ["BENCH_SERVE"] = command
            port = hb.free_port()
            with hb.app_server(port, "http://127.0.0.1:9", logs / "app.log"):
                if phase == "read":
                    figures[label].append(run(get_loop(port, "/?range=24h", cookie)))
                    figures[label].append(run(get_loop(port, "/api/metrics/overview/", auth)))
                else:
                    figures[label].append(run(post_loop(port, auth, 100)))
    for label, (page, api, ingest) in figures.items():
        print(f"{label} | {page:,.0f} | {api:,.0f} | {ingest:,.0f}")


if __name__ == "__main__":
    main()
