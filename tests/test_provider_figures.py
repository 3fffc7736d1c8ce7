"""Where the new per-call figures show: the call page (provider timings, output speed, cached and
estimated tokens), the analytics page's model table (tokens/s and queue time per model, from
llm.metrics.model_speeds), the logs API and the export. Figures are checked against plain Python
over the same raw numbers."""

from __future__ import annotations

import csv
import io
import statistics
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from llm import metrics
from llm.models import LLMRequestLog

pytestmark = pytest.mark.django_db

# (model, completion tokens, latency ms, ttft ms or None, queue ms or None)
CALLS = [
    ("llama-3.1-8b-instant", 100, 1_100, 100, 12.0),
    ("llama-3.1-8b-instant", 300, 2_100, 600, 30.0),
    ("llama-3.1-8b-instant", 50, 900, None, 3.0),  # not streamed: no speed, a queue time
    ("gpt-4o", 40, 500, 100, None),
    ("gpt-4o", 10, 300, None, None),  # neither figure
]


@pytest.fixture
def browser(staff_user) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


@pytest.fixture
def calls():
    now = timezone.now()
    logs = [
        LLMRequestLog(
            model_name=model,
            prompt_tokens=10,
            completion_tokens=completion,
            latency_ms=latency,
            ttft_ms=ttft,
            queue_time_ms=queue,
            timestamp=now - timedelta(minutes=index + 1),
            cost_estimate=None,
        )
        for index, (model, completion, latency, ttft, queue) in enumerate(CALLS)
    ]
    LLMRequestLog.objects.record_many(logs)
    return logs


def expected_speeds() -> dict[str, dict]:
    """By hand: completion / ((latency - ttft) / 1000) per streamed call, averaged per model."""
    expected = {}
    for model in {call[0] for call in CALLS}:
        rows = [call for call in CALLS if call[0] == model]
        speeds = [completion / ((latency - ttft) / 1000) for _, completion, latency, ttft, _ in rows if ttft]
        queues = [queue for *_, queue in rows if queue is not None]
        expected[model] = {
            "output_tokens_per_second": statistics.mean(speeds),
            "streamed_calls": len(speeds),
            "queue_time_ms": statistics.mean(queues) if queues else None,
            "queued_calls": len(queues),
        }
    return expected


def test_each_streamed_call_stores_its_output_speed(calls):
    stored = dict(LLMRequestLog.objects.values_list("latency_ms", "output_tokens_per_second"))
    assert stored[1_100] == pytest.approx(100 / 1.0)
    assert stored[2_100] == pytest.approx(300 / 1.5)
    assert stored[900] is None and stored[300] is None


def test_model_speeds_match_a_hand_computation(calls):
    figures = metrics.model_speeds(LLMRequestLog.objects.all())
    expected = expected_speeds()
    assert figures.keys() == expected.keys()
    for model, row in figures.items():
        assert row == pytest.approx(expected[model])


def test_the_analytics_model_table_shows_tokens_per_second_and_queue_time(browser, calls):
    html = browser.get("/analytics/", {"range": "24h"}).content.decode()
    table = html.split("Model comparison", 1)[1].split("</table>", 1)[0]
    assert "Tokens/s" in table and "Queue" in table
    llama = expected_speeds()["llama-3.1-8b-instant"]
    assert f"{llama['output_tokens_per_second']:,.1f} tokens/s" in table  # (100 + 200) / 2 = 150.0
    assert f"{llama['queue_time_ms']:,.0f} ms" in table  # (12 + 30 + 3) / 3 = 15
    gpt = table.split("gpt-4o", 1)[1].split("</tr>", 1)[0]
    assert "100.0 tokens/s" in gpt and gpt.rstrip().endswith("—</td>")


def test_the_call_page_shows_timings_speed_cached_and_estimated_tokens(browser):
    log, _ = LLMRequestLog.objects.record(
        model_name="gpt-4o",
        provider="openai",
        prompt_tokens=2_000,
        cached_tokens=1_500,
        completion_tokens=200,
        latency_ms=2_000,
        ttft_ms=400,
        queue_time_ms=12.0,
        prompt_time_ms=4.0,
        completion_time_ms=250.0,
        tokens_estimated=True,
    )
    html = browser.get(f"/logs/{log.request_id}/").content.decode()
    assert "(1500 prompt tokens cached)" in html
    assert 'id="tokens-estimated"' in html and "(estimated)" in html
    assert f"{200 / 1.6:,.1f} tokens/s after the first token" in html
    assert "queue 12 ms" in html and "prompt 4 ms" in html and "completion 250 ms" in html


def test_a_call_with_counted_tokens_says_nothing_of_estimates(browser):
    log, _ = LLMRequestLog.objects.record(model_name="gpt-4o", prompt_tokens=5, completion_tokens=5, latency_ms=10)
    html = browser.get(f"/logs/{log.request_id}/").content.decode()
    assert "tokens-estimated" not in html and "(estimated)" not in html and "Provider timings" not in html


def test_the_export_and_the_logs_api_carry_the_new_columns(api_client, calls):
    LLMRequestLog.objects.filter(latency_ms=300).update(tokens_estimated=True, cached_tokens=3)
    exported = api_client.get("/api/export/csv/", {"hours": 24})
    rows = list(csv.DictReader(io.StringIO(b"".join(exported.streaming_content).decode())))
    by_latency = {float(row["latency_ms"]): row for row in rows}
    assert by_latency[300]["tokens_estimated"] == "True" and by_latency[300]["cached_tokens"] == "3"
    assert by_latency[1_100]["tokens_estimated"] == "False"
    assert float(by_latency[1_100]["output_tokens_per_second"]) == pytest.approx(100.0)
    assert by_latency[1_100]["queue_time_ms"] == "12.0"
    listed = api_client.get("/api/logs/", {"hours": 24}).json()["results"]
    flagged = [row for row in listed if row["tokens_estimated"]]
    assert [row["latency_ms"] for row in flagged] == [300]
