"""The server `make run` starts (gunicorn, uvicorn workers, core/asgi.py, core/gunicorn.conf.py) as a
subprocess for the tests that need a real one, and what they read of it through /proc.

One home for what tests/test_prompt_server.py, test_prompt_fast_server.py, test_rollup_thread.py,
test_serving_sockets.py and test_concurrent_ingest.py share. On PostgreSQL a server shares the test
database (transactional tests); on SQLite, whose test database lives in memory, it gets a migrated file
of its own: a copy of one database migrated once per test run (`migrated_sqlite`), with API keys in it,
instead of a `manage.py migrate` and a key-making process per server (seconds of CPU each).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
from django.conf import settings
from django.db import connection

from llm.models import APIKey, LLMRequestLog

SERVE = [sys.executable, "-m", "gunicorn", "--config", "core/gunicorn.conf.py", "core.asgi:application"]
ROOT = Path(settings.BASE_DIR)
TIMEOUT_SECONDS = 3.0
# Keys with every scope in the migrated template: each test that needs a server key takes a new one
# (each starts with its own rate-limit count); no file in the suite takes more than a dozen.
TEMPLATE_KEYS = 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def core_environment(database_url: str) -> dict[str, str]:
    """core.settings, as `make run` reads them (tests.settings would drop the GROQ_ variables)."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "core.settings",
        "DATABASE_URL": database_url,
        "OBSERVATORY_ENV_FILE": "",
    }


_template_lock = threading.Lock()
_template: tuple[Path, list[str]] | None = None
_template_directory: tempfile.TemporaryDirectory | None = None


def _migrated_template() -> tuple[Path, list[str]]:
    """A SQLite file migrated by `manage.py` as `make run` does, with TEMPLATE_KEYS keys of every
    scope: made by one process, once per test run."""
    global _template, _template_directory
    with _template_lock:
        if _template is None:
            _template_directory = tempfile.TemporaryDirectory(prefix="observatory-template-")
            path = Path(_template_directory.name) / "migrated.sqlite3"
            code = (
                "from django.core.management import call_command\n"
                "from llm.models import APIKey\n"
                "call_command('migrate', interactive=False, verbosity=0)\n"
                f"for _ in range({TEMPLATE_KEYS}):\n"
                "    print('key', APIKey.generate('server-tests', APIKey.ALL_SCOPES)[1])"
            )
            created = subprocess.run(
                [sys.executable, "manage.py", "shell", "--no-startup", "--command", code],
                cwd=ROOT,
                env=core_environment(f"sqlite:///{path}"),
                capture_output=True,
                text=True,
                check=False,
            )
            if created.returncode:
                raise RuntimeError(f"migrating the template database failed: {created.stderr[-3000:]}")
            # `shell` may print a line of its own first: the keys are the lines marked `key`.
            keys = [line.split()[1] for line in created.stdout.splitlines() if line.startswith("key ")]
            assert len(keys) == TEMPLATE_KEYS, created.stdout
            _template = (path, keys)
        return _template


def migrated_sqlite(destination: Path) -> list[str]:
    """A migrated SQLite database at `destination` (a copy of the template, made with SQLite's backup
    API, so a write-ahead log is copied too); answers its API keys, every scope, none used yet."""
    template, keys = _migrated_template()
    with closing(sqlite3.connect(template)) as source, closing(sqlite3.connect(destination)) as copy:
        source.backup(copy)
    return list(keys)


class Server:
    def __init__(self, url: str, database_url: str, sqlite_path: Path | None, keys: list[str] | None = None) -> None:
        self.url = url
        self.database_url = database_url
        self.sqlite_path = sqlite_path
        self.unused_keys: list[str] = list(keys or [])
        self.log: Path | None = None
        self.pid: int | None = None  # gunicorn's master

    def environment(self) -> dict[str, str]:
        return core_environment(self.database_url)

    def api_key(self) -> str:
        """A new key with every scope (one per test: each starts with its own rate-limit count)."""
        if self.sqlite_path is None:
            return APIKey.generate("server-tests", APIKey.ALL_SCOPES)[1]
        assert self.unused_keys, f"more than {TEMPLATE_KEYS} keys taken from one server: raise TEMPLATE_KEYS"
        return self.unused_keys.pop()

    def rows(self, prompt: str) -> list[dict]:
        """The logged calls with this prompt, straight from the server's database."""
        if self.sqlite_path is None:
            return list(LLMRequestLog.objects.filter(prompt_text=prompt).values())
        with closing(sqlite3.connect(self.sqlite_path)) as db:
            db.row_factory = sqlite3.Row
            found = db.execute("SELECT * FROM llm_llmrequestlog WHERE prompt_text = ?", [prompt]).fetchall()
        rows = [dict(row) for row in found]
        for row in rows:
            row["tags"] = json.loads(row["tags"])
        return rows

    def wait_for_rows(self, prompt: str, count: int = 1, seconds: float = 15) -> list[dict]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rows = self.rows(prompt)
            if len(rows) >= count:
                return rows
            time.sleep(0.05)  # the row is written by another process: nothing to wait on but the table
        return self.rows(prompt)


@contextmanager
def serving(fake_groq_server, tmp_path_factory, django_db_blocker, **env: str) -> Iterator[Server]:
    """The server `make run` starts, on the test database, against the fake Groq; `env` adds to
    or overrides its environment. Its output goes to `Server.log`."""
    with django_db_blocker.unblock():
        vendor = connection.vendor
        database_url = postgres_url() if vendor == "postgresql" else None
    sqlite_path = None
    keys: list[str] = []
    if database_url is None:
        sqlite_path = tmp_path_factory.mktemp("asgi") / "server.sqlite3"
        database_url = f"sqlite:///{sqlite_path}"
        keys = migrated_sqlite(sqlite_path)
    port = free_port()
    instance = Server(f"http://127.0.0.1:{port}", database_url, sqlite_path, keys)
    env = {
        **instance.environment(),
        "GROQ_API_KEY": "gsk_test_key",
        "GROQ_BASE_URL": fake_groq_server.base_url,
        "GROQ_MAX_RETRIES": "0",
        "GROQ_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
        # On PostgreSQL a worker rolls up after the answer, in a thread of its own: one still
        # running when a test flushes the shared tables deadlocks with it (as conftest.py says of
        # the live server's). A test about roll-ups turns them on.
        "ROLLUPS_AFTER_WRITE": "False",
        **env,
    }
    log = tmp_path_factory.mktemp("asgi-log") / "server.log"
    instance.log = log
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*SERVE, "--bind", f"127.0.0.1:{port}"], cwd=ROOT, env=env, stdout=output, stderr=output
        )
    instance.pid = process.pid
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                # Answered, not only listening: a worker takes its port before its application has
                # started (seconds on a busy machine), and a test's clients would wait through that.
                if httpx.get(f"{instance.url}/health/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)  # a starting server: nothing to wait on but its answer
        yield instance
    finally:
        process.terminate()
        process.wait(timeout=30)


def children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
            found.append(int(entry.name))
    return found


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process `pid` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes
