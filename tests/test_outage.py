"""The database goes away: the API, /v1/traces, /metrics and /health/ answer 503 with Retry-After and
JSON, pages answer the plain 503 page, the log gets one line per request, and everything answers
again by itself once the database is back.

The real outage stops the throwaway PostgreSQL cluster of scripts/with-postgres (which exports how
to stop and start it) under a live server; a database error raised by a middleware (not a view) is
checked on both databases with a middleware of the tests."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from django.db import OperationalError, connection
from django.test import Client

from llm.models import LLMRequestLog
from tests.factories import make_api_key

API_PATHS = ("/api/metrics/overview/", "/api/logs", "/metrics", "/health/", "/health")


def call(url: str, *, headers: dict | None = None, body: bytes | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def otlp_body() -> bytes:
    """One LLM span, a new one each time (the span id makes the stored call's id)."""
    now = time.time_ns()
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": f"{now & (2**64 - 1):016x}",
        "name": "chat outage-model",
        "startTimeUnixNano": str(now - 400_000_000),
        "endTimeUnixNano": str(now),
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "outage-model"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "10"}},
            {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "5"}},
        ],
    }
    document = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
    return json.dumps(document).encode()


def cluster_command(name: str) -> list[str]:
    command = os.environ.get(name)
    if not command:
        pytest.skip(f"{name} is unset: run the tests through scripts/with-postgres (make test-postgres)")
    return shlex.split(command)


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_database_outage_answers_503_and_recovers_by_itself(live_server, staff_user, settings, caplog):
    if connection.vendor != "postgresql":
        pytest.skip("stops the test PostgreSQL cluster")
    stop, start = cluster_command("OBSERVATORY_PG_STOP"), cluster_command("OBSERVATORY_PG_START")
    settings.METRICS_TOKEN = ""
    _, key = make_api_key("outage")
    browser = Client()
    browser.force_login(staff_user)
    session = {"Cookie": f"sessionid={browser.cookies['sessionid'].value}"}
    bearer = {"Authorization": f"Bearer {key}"}
    otlp = {**bearer, "Content-Type": "application/json"}
    base = live_server.url

    def answers() -> dict[str, tuple[int, dict, bytes]]:
        every = {path: call(base + path, headers=bearer) for path in API_PATHS}
        every["/v1/traces"] = call(f"{base}/v1/traces", headers=otlp, body=otlp_body())
        every["/"] = call(f"{base}/", headers=session)
        every["/logs/"] = call(f"{base}/logs/", headers=session)
        return every

    before = answers()
    assert {path: status for path, (status, _, _) in before.items()} == dict.fromkeys(before, 200)
    assert json.loads(before["/health/"][2]) == {"status": "ok"}

    connection.close()  # this thread's own connection goes with the cluster
    subprocess.run(stop, check=True, capture_output=True)
    try:
        with caplog.at_level(logging.INFO):
            during = answers()
    finally:
        subprocess.run(start, check=True, capture_output=True)
    started = time.monotonic()

    for path in [*API_PATHS, "/v1/traces"]:
        status, headers, body = during[path]
        assert status == 503, (path, body[:300])
        assert headers.get("Retry-After") == "5", (path, headers)
        assert headers["Content-Type"] == "application/json", path
        if path.startswith("/health"):
            assert json.loads(body) == {"status": "unavailable", "database": "OperationalError"}
        else:
            assert json.loads(body) == {"error": "The database is temporarily unavailable. Try again in a few seconds."}
    for path in ("/", "/logs/"):
        status, headers, body = during[path]
        assert status == 503 and headers["Retry-After"] == "5", (path, body[:300])
        assert headers["Content-Type"].startswith("text/html")
        assert b"Temporarily unavailable" in body and b"Traceback" not in body
        assert "Content-Security-Policy" in headers
    # One warning line per request (and the request's own line), no traceback: what the console
    # handler lets through, with its filter.
    shown = [r for r in caplog.records if passes_console_filters(r)]
    outage_lines = [r for r in shown if r.name == "llm.outage"]
    assert len(outage_lines) == len(during)
    assert {r.name for r in shown} >= {"llm.outage", "llm.requests"} and "django.request" not in {r.name for r in shown}
    assert not [r for r in shown if r.exc_info or "\n" in r.getMessage()]

    # Back by itself: /health/ answers 200 again within a few seconds of the cluster's start.
    while call(f"{base}/health/")[0] != 200:
        assert time.monotonic() - started < 5, "no recovery within 5 s"
        time.sleep(0.05)
    recovered_after = time.monotonic() - started
    print(f"/health/ answered 200 {recovered_after:.2f} s after the cluster was started")  # shown with -rP
    after = answers()
    assert {path: status for path, (status, _, _) in after.items()} == dict.fromkeys(after, 200)
    assert recovered_after < 2
    # The exports sent before and after the outage are stored; the one refused with 503 is not
    # (its exporter sends it again).
    assert LLMRequestLog.objects.filter(model_name="outage-model").count() == 2


FAILURE = "server closed the connection unexpectedly"


class FailingOnTheWayOut:
    """A middleware whose database call fails after the view answered (like a session saved on the
    way out): Django turns it into a 500 before FriendlyErrorsMiddleware sees the answer."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.path.endswith("/fail-on-the-way-out/"):
            raise OperationalError(FAILURE)
        return response


@pytest.mark.django_db
@pytest.mark.parametrize("debug", [True, False])
@pytest.mark.parametrize(
    ("path", "kind"), [("/api/fail-on-the-way-out/", "application/json"), ("/fail-on-the-way-out/", "text/html")]
)
def test_a_middlewares_database_error_is_a_503_with_one_log_line(settings, caplog, debug, path, kind):
    settings.DEBUG = debug
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_outage.FailingOnTheWayOut"]
    client = Client(raise_request_exception=False)
    with caplog.at_level(logging.INFO):
        response = client.get(path)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response["Content-Type"].startswith(kind)
    assert b"Traceback" not in response.content
    assert [r for r in caplog.records if r.exc_info and r.name == "django.request"], "Django logged its 500"
    # ... which the console handler's filter drops: what is shown is one warning and the request line.
    shown = [(r.name, r.getMessage()) for r in caplog.records if passes_console_filters(r)]
    [request_line] = [r for r in caplog.records if r.name == "llm.requests"]
    assert shown == [
        (
            "llm.outage",
            f"Database unavailable: GET {path} answered 503 (OperationalError: {FAILURE})",
        ),
        ("llm.requests", f"GET {path} 503 {request_line.duration_ms:.1f} ms"),
    ]


def passes_console_filters(record: logging.LogRecord) -> bool:
    console = logging.getLogger().handlers[0]
    return all(f.filter(record) for f in console.filters)
