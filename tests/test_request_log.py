"""The app's own log: one line per request with its id (X-Request-ID), per error the exception; with
LOG_FORMAT=json each line is one JSON object. The formats are checked on what a separate process
really writes to standard error, configured from the environment as in production."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid

import pytest
from django.conf import settings

from llm.logging import JSONFormatter, request_id_var
from tests.serving import migrated_sqlite

# A process with the project's settings (from the environment only), three requests through
# Django's test client, then exit: the log is whatever it wrote to stderr.
REQUESTS = """
import django
django.setup()
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth.models import User
User.objects.create_user("carol", password="pw-for-tests-only")
client = Client(raise_request_exception=False, HTTP_HOST="localhost")
client.get("/health/", HTTP_X_REQUEST_ID="lb-probe-42")
client.login(username="carol", password="pw-for-tests-only")
client.get("/no-such-page/", HTTP_X_REQUEST_ID="bad id with spaces")
with override_settings(ROOT_URLCONF="tests.error_urls"):
    client.get("/api/failing/")
"""


def run_requests(tmp_path, log_format: str | None) -> list[str]:
    environment = {**os.environ, "OBSERVATORY_ENV_FILE": "", "DJANGO_SETTINGS_MODULE": "core.settings"}
    environment["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    migrated_sqlite(tmp_path / "db.sqlite3")  # a copy of one migrated once per run: the migrate below has nothing to do
    if log_format:
        environment["LOG_FORMAT"] = log_format
    result = subprocess.run(
        [sys.executable, "-c", REQUESTS], cwd=settings.BASE_DIR, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    return result.stderr.splitlines()


@pytest.mark.one_database  # a subprocess on a SQLite file of its own
def test_json_lines_one_per_request_and_per_error(tmp_path):
    entries = [json.loads(line) for line in run_requests(tmp_path, "json")]  # every line is JSON
    requests = [entry for entry in entries if entry["logger"] == "llm.requests"]
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("GET", "/health/", 200),
        ("GET", "/no-such-page/", 404),
        ("GET", "/api/failing/", 500),
    ]
    health, missing, failing = requests
    assert health["request_id"] == "lb-probe-42" and "user" not in health
    # An id with spaces is not taken: a new one is made.
    assert uuid.UUID(missing["request_id"]).hex == missing["request_id"]
    assert missing["user"] == "carol" and failing["user"] == "carol"
    for entry in requests:
        assert set(entry) >= {"time", "level", "logger", "message", "method", "path", "status", "duration_ms"}
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
        assert entry["time"].endswith("+00:00") and entry["level"] == "INFO"
    [error] = [entry for entry in entries if entry["level"] == "ERROR" and entry["logger"] == "django.request"]
    assert error["exception_type"] == "Boom"
    assert "Traceback" in error["exception"] and "the view failed on purpose" in error["exception"]
    assert error["request_id"] == failing["request_id"] and error["status_code"] == 500


@pytest.mark.one_database  # a subprocess on a SQLite file of its own
def test_plain_lines_by_default(tmp_path):
    lines = run_requests(tmp_path, None)
    request_lines = [line for line in lines if " INFO llm.requests " in line]
    assert len(request_lines) == 3
    assert request_lines[0].endswith(" GET /health/ 200 " + request_lines[0].split(" 200 ")[1])
    assert " GET /no-such-page/ 404 " in request_lines[1] and request_lines[1].endswith(" ms user=carol")
    assert not any(line.startswith("{") for line in lines)
    assert any(line.startswith("Traceback") for line in lines)  # the error's traceback, as before


@pytest.mark.django_db
def test_the_request_id_comes_back(client, api_client):
    given = client.get("/health/", HTTP_X_REQUEST_ID="abc-123:4")
    assert given["X-Request-ID"] == "abc-123:4"
    made = [client.get("/health/", HTTP_X_REQUEST_ID=bad)["X-Request-ID"] for bad in ("", "x" * 200, "a\u00e9b", "-a")]
    assert len(set(made)) == 4 and all(len(value) == 32 for value in made)
    assert api_client.get("/api/logs/")["X-Request-ID"]


@pytest.mark.django_db
def test_the_api_key_name_is_logged(api_client, caplog):
    with caplog.at_level(logging.INFO, logger="llm.requests"):
        api_client.get("/api/logs/")
    [record] = [r for r in caplog.records if r.name == "llm.requests"]
    assert record.api_key == "tests" and record.status == 200
    assert record.getMessage().endswith(" api_key=tests")


def test_the_formatter_keeps_one_line_and_ascii():
    record = logging.makeLogRecord(
        {"name": "x", "levelname": "WARNING", "msg": "line\none \ud800 %s", "args": ("é",), "path": "/a\nb"}
    )
    token = request_id_var.set("r-1")
    try:
        line = JSONFormatter().format(record)
    finally:
        request_id_var.reset(token)
    assert "\n" not in line and line.isascii()
    entry = json.loads(line)
    assert entry["message"] == "line\none \ud800 é" and entry["path"] == "/a\nb" and entry["request_id"] == "r-1"
