"""CSV and JSON export: every filtered row, round-trips, formula escaping, file names."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from llm.models import LLMRequestLog
from llm.serializers import LOG_FIELDS
from tests.factories import make_log
from tests.read_api_data import NOW, make_logs, select

WINDOW = {"start_date": (NOW - timedelta(days=50)).isoformat(), "end_date": NOW.isoformat()}

pytestmark = pytest.mark.django_db


@pytest.fixture
def logs(model_prices):
    return make_logs(300)


def content(response) -> str:
    return b"".join(response.streaming_content).decode()


def test_csv_has_every_filtered_row_and_round_trips(api_client, logs):
    params = {"start_date": (NOW - timedelta(days=20)).isoformat(), "model": "llama-3.1-8b-instant"}
    response = api_client.get("/api/export/csv/", params)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(content(response))))
    expected = {str(log.request_id): log for log in select(logs, start=NOW - timedelta(days=20), model=params["model"])}
    assert (
        len(rows)
        == len(expected)
        == LLMRequestLog.objects.filter(timestamp__gte=NOW - timedelta(days=20), model_name=params["model"]).count()
    )
    assert list(rows[0]) == LOG_FIELDS
    for row in rows:
        log = expected[row["request_id"]]
        assert datetime.fromisoformat(row["timestamp"]) == log.timestamp
        assert int(row["total_tokens"]) == log.total_tokens
        assert float(row["latency_ms"]) == log.latency_ms
        assert Decimal(row["cost_estimate"]) == log.cost_estimate
        assert row["error_message"] == log.error_message
        unescaped = row["prompt_text"][1:] if row["prompt_text"].startswith("'=") else row["prompt_text"]
        assert unescaped == log.prompt_text


def test_csv_timestamps_are_iso_8601_in_utc(api_client, db, settings):
    settings.TIME_ZONE = "America/New_York"
    whole_second = datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    precise = datetime(2026, 11, 1, 5, 59, 59, 123456, tzinfo=UTC)
    for timestamp in (precise, whole_second):
        make_log(timestamp=timestamp)
    window = {"start_date": "2026-03-01", "end_date": "2026-11-02"}
    rows = list(csv.DictReader(io.StringIO(content(api_client.get("/api/export/csv/", window)))))
    assert [datetime.fromisoformat(row["timestamp"]) for row in rows] == [whole_second, precise]
    assert all(row["timestamp"].endswith("+00:00") and "T" in row["timestamp"] for row in rows)


def test_csv_escapes_formula_cells(api_client, db):
    for text in ['=HYPERLINK("http://evil")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\rx", "plain = text"]:
        make_log(prompt_text=text)
    rows = list(csv.DictReader(io.StringIO(content(api_client.get("/api/export/csv/")))))
    prompts = sorted(row["prompt_text"] for row in rows)
    assert prompts == sorted(
        ['\'=HYPERLINK("http://evil")', "'+cmd|' /C calc'!A0", "'-2+3", "'@SUM(A1)", "'\tx", "'\rx", "plain = text"]
    )


def test_json_export_is_valid_for_awkward_text(api_client, db):
    awkward = 'He said "hi"\nthen \\ left — 日本語 \u2028 ☕ </script>'
    log = make_log(prompt_text=awkward, response_text='{"a": 1}', tags={"k": "é"})
    response = api_client.get("/api/export/json/")
    assert response["Content-Type"].startswith("application/json")
    rows = json.loads(content(response))
    assert len(rows) == 1
    assert rows[0]["prompt_text"] == awkward
    assert rows[0]["tags"] == {"k": "é"}
    assert rows[0]["request_id"] == str(log.request_id)


def test_json_export_row_count_equals_filter(api_client, logs):
    rows = json.loads(content(api_client.get("/api/export/json/", {**WINDOW, "status": "error"})))
    assert len(rows) == len(select(logs, status="error")) > 0
    assert {row["status"] for row in rows} == {"error"}


def test_empty_export_is_still_valid(api_client, db):
    assert json.loads(content(api_client.get("/api/export/json/"))) == []
    assert content(api_client.get("/api/export/csv/")).strip() == ",".join(LOG_FIELDS)


def test_file_names_carry_the_date_range(api_client, db):
    response = api_client.get("/api/export/csv/", {"start_date": "2026-11-01", "end_date": "2026-11-20"})
    assert response["Content-Disposition"] == 'attachment; filename="llm-logs_2026-11-01_to_2026-11-20.csv"'
    assert (response["X-Window-Start"], response["X-Window-End"]) == (
        "2026-11-01T00:00:00+00:00",
        "2026-11-21T00:00:00+00:00",
    )
    response = api_client.get("/api/export/json/", {"start_date": "2026-11-01T00:00:00Z"})
    assert response["Content-Disposition"].startswith('attachment; filename="llm-logs_2026-11-01T0000_to_')
    assert response["Content-Disposition"].endswith('.json"')
    assert response["X-Window-Start"] == "2026-11-01T00:00:00+00:00"
    assert response["X-Window-Defaulted"] == "false"


def test_csv_accepts_text_csv_accept_header(api_client, db):
    assert api_client.get("/api/export/csv/", HTTP_ACCEPT="text/csv").status_code == 200


def test_export_applies_search_like_the_logs_list(api_client, logs):
    listed = api_client.get("/api/logs/", {**WINDOW, "search": "hello", "page_size": 500}).json()["count"]
    rows = json.loads(content(api_client.get("/api/export/json/", {**WINDOW, "search": "hello"})))
    assert len(rows) == listed > 0


def test_csv_tags_are_json(api_client, db):
    make_log(tags={"feature": "search", "team": "é"})
    make_log()
    rows = list(csv.DictReader(io.StringIO(content(api_client.get("/api/export/csv/")))))
    tags = sorted((json.loads(row["tags"]) if row["tags"] else {} for row in rows), key=len)
    assert tags == [{}, {"feature": "search", "team": "é"}]
