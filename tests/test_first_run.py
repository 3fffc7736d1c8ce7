"""A new user's first hour: clone, `cp .env.example .env`, `make run`'s steps, log in, call the API;
then the same checkout in production mode passes Django's deployment checks.

Runs in a temporary clone with the shared virtualenv's Python and a clean environment, on SQLite
whatever database the suite uses (this is about the first run).
"""

from __future__ import annotations

import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.checkout import clean_environment, clone_checkout

pytestmark = pytest.mark.one_database  # on SQLite in a clone whatever the suite's database: once is enough

SAMPLE_COUNT = 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A fresh clone with `.env` copied from `.env.example`, as the README says."""
    directory = clone_checkout(tmp_path_factory.mktemp("first-run") / "observatory")
    shutil.copy(directory / ".env.example", directory / ".env")
    return directory


def manage(checkout: Path, *args: str, **variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=checkout,
        env=clean_environment(**variables),
        capture_output=True,
        text=True,
        timeout=300,
    )


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)  # polling a starting server: there is no event to wait on
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def test_make_run_steps_serve_the_dashboard_and_the_api_from_a_fresh_clone(checkout):
    migrate = manage(checkout, "migrate", "--noinput")
    assert migrate.returncode == 0, migrate.stderr
    sample = manage(checkout, "generate_sample_data", "--count", str(SAMPLE_COUNT), "--days", "30", "--if-empty")
    assert sample.returncode == 0, sample.stderr
    assert (checkout / "db.sqlite3").is_file(), "the default database is SQLite next to manage.py"

    created = manage(checkout, "ensure_admin")
    assert created.returncode == 0, created.stderr
    password = (checkout / ".admin-password").read_text().strip()
    assert "Created admin login" in created.stdout and password in created.stdout
    # Later runs say where the password is and how to change it, without printing it.
    again = manage(checkout, "ensure_admin")
    assert again.returncode == 0, again.stderr
    assert password not in again.stdout
    assert ".admin-password" in again.stdout and "changepassword admin" in again.stdout

    key = manage(checkout, "create_api_key", "first-run", "--scopes", "ingest,prompt,read,read_text,manage")
    assert key.returncode == 0, key.stderr
    api_key = key.stdout.strip()

    port = free_port()
    server = subprocess.Popen(
        # As `make run` serves it (core/gunicorn.conf.py), with one worker.
        [sys.executable, "-m", "gunicorn", "--config", "core/gunicorn.conf.py", "core.asgi:application"]
        + ["--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=checkout,
        env=clean_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, server)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as browser:
            login_page = browser.get("/accounts/login/")
            assert login_page.status_code == 200
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text).group(1)
            overview = browser.post(
                "/accounts/login/",
                data={"username": "admin", "password": password, "csrfmiddlewaretoken": token},
                headers={"Referer": f"{base}/accounts/login/"},
                follow_redirects=True,
            )
            assert overview.status_code == 200
            assert str(overview.url) == f"{base}/", "logging in leads to the overview"
            assert "<title>Overview · LLM Observatory</title>" in overview.text

        answer = httpx.get(
            f"{base}/api/logs/",
            params={"start_date": "2000-01-01T00:00:00Z", "page_size": 1},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["count"] >= SAMPLE_COUNT
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stderr.close()


def test_production_mode_passes_the_deployment_checks(checkout):
    production = {
        "DEBUG": "False",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "observatory.example.com",
        "GROQ_API_KEY": "gsk_first_run_key",
        # Without it llm.W017 warns that Prometheus cannot scrape /metrics (tests/test_metrics_access.py).
        "METRICS_TOKEN": secrets.token_urlsafe(32),
    }
    check = manage(checkout, "check", "--deploy", "--fail-level", "WARNING", **production)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no issues" in check.stdout
