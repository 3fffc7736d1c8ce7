"""GET /metrics: Prometheus text from the running totals (llm/prometheus.py)."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Count, Sum
from django.test.utils import CaptureQueriesContext
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llm import prometheus
from llm.models import (
    HISTOGRAM_BUCKETS_SECONDS,
    AlertRule,
    LLMRequestLog,
    MetricWatermark,
    RequestTotal,
    UserFeedback,
)
from tests.factories import make_feedback, make_rule

URL = "/metrics"

# (model, status, prompt tokens, completion tokens, latency ms, ttft ms)
CALLS = [
    ("llama-3.1-8b-instant", "success", 100, 20, 80.0, None),
    ("llama-3.1-8b-instant", "success", 200, 40, 100.0, 50.0),  # exactly on the 0.1 s bound
    ("llama-3.1-8b-instant", "success", 300, 60, 740.0, 240.0),
    ("llama-3.1-8b-instant", "error", 50, 0, 5_000.0, None),
    ("llama-3.3-70b-versatile", "success", 1_000, 500, 2_400.0, 400.0),
    ("llama-3.3-70b-versatile", "success", 1_500, 700, 12_000.0, 900.0),
    ("llama-3.3-70b-versatile", "error", 10, 0, 61_000.0, None),  # above the last bound: +Inf only
    ("unpriced/model", "success", 7, 3, 300.0, None),
]


def record_call(model: str = "llama-3.1-8b-instant", status: str = "success", **fields) -> LLMRequestLog:
    """One call through the write path (cost from the seeded prices, as in production)."""
    if status == "error":
        fields.setdefault("error_type", "server_error")
    log, _ = LLMRequestLog.objects.record(model_name=model, status=status, **fields)
    return log


def make_calls() -> None:
    for model, status, prompt, completion, latency, ttft in CALLS:
        record_call(model, status, prompt_tokens=prompt, completion_tokens=completion, latency_ms=latency, ttft_ms=ttft)


def scrape(client, **headers) -> dict[str, list]:
    response = client.get(URL, **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(response.content.decode())


def parse(text: str) -> dict[str, list]:
    """{sample name: [(labels, value), ...]}, through prometheus_client's own parser."""
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict, name: str, **labels) -> float:
    matches = [v for sample_labels, v in samples.get(name, []) if sample_labels == labels]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return matches[0]


@pytest.mark.django_db
def test_figures_match_the_database(client, model_prices):
    make_calls()
    samples = scrape(client)

    for row in LLMRequestLog.objects.values("model_name", "status").annotate(n=Count("id")):
        assert value(samples, "llm_requests_total", model=row["model_name"], status=row["status"]) == row["n"]
    assert len(samples["llm_requests_total"]) == 5

    for row in LLMRequestLog.objects.values("model_name").annotate(
        prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cost=Sum("cost_estimate")
    ):
        model = row["model_name"]
        assert value(samples, "llm_tokens_total", model=model, type="prompt") == row["prompt"]
        assert value(samples, "llm_tokens_total", model=model, type="completion") == row["completion"]
        assert value(samples, "llm_cost_usd_total", model=model) == pytest.approx(float(row["cost"]), rel=1e-9)
    # 1,000 × 0.59 + 500 × 0.79 + 1,500 × 0.59 + 700 × 0.79 + 10 × 0.59, per million
    assert value(samples, "llm_cost_usd_total", model="llama-3.3-70b-versatile") == pytest.approx(0.0024289)
    assert value(samples, "llm_cost_usd_total", model="unpriced/model") == 0


@pytest.mark.django_db
def test_histograms_count_each_call_in_every_bucket_at_or_above_its_latency(client):
    make_calls()
    samples = scrape(client)
    for model in {call[0] for call in CALLS}:
        latencies = [call[4] / 1000 for call in CALLS if call[0] == model]
        ttfts = [call[5] / 1000 for call in CALLS if call[0] == model and call[5] is not None]
        for bound in HISTOGRAM_BUCKETS_SECONDS:
            le = str(float(bound))
            expected = sum(1 for latency in latencies if latency <= bound)
            assert value(samples, "llm_request_duration_seconds_bucket", model=model, le=le) == expected
            expected_ttft = sum(1 for ttft in ttfts if ttft <= bound)
            assert value(samples, "llm_time_to_first_token_seconds_bucket", model=model, le=le) == expected_ttft
        assert value(samples, "llm_request_duration_seconds_bucket", model=model, le="+Inf") == len(latencies)
        assert value(samples, "llm_request_duration_seconds_count", model=model) == len(latencies)
        assert value(samples, "llm_request_duration_seconds_sum", model=model) == pytest.approx(sum(latencies))
        assert value(samples, "llm_time_to_first_token_seconds_count", model=model) == len(ttfts)
        assert value(samples, "llm_time_to_first_token_seconds_sum", model=model) == pytest.approx(sum(ttfts))
    # The 61 s call is only in +Inf; the 0.1 s call is in the 0.1 bucket (le means <=).
    assert value(samples, "llm_request_duration_seconds_bucket", model="llama-3.3-70b-versatile", le="60.0") == 2
    assert value(samples, "llm_request_duration_seconds_bucket", model="llama-3.1-8b-instant", le="0.1") == 2


@pytest.mark.django_db
def test_new_rows_are_added_to_the_next_scrape_once(client):
    make_calls()
    first = scrape(client)
    assert value(first, "llm_requests_total", model="unpriced/model", status="success") == 1
    record_call("unpriced/model", prompt_tokens=5, latency_ms=10)
    record_call("brand/new-model", prompt_tokens=4, latency_ms=10)
    second = scrape(client)
    assert value(second, "llm_requests_total", model="unpriced/model", status="success") == 2
    assert value(second, "llm_tokens_total", model="unpriced/model", type="prompt") == 12
    assert value(second, "llm_requests_total", model="brand/new-model", status="success") == 1
    third = scrape(client)
    assert third == second
    assert MetricWatermark.objects.get(name="requests").last_id == LLMRequestLog.objects.latest("id").id


@pytest.mark.django_db
def test_counters_stay_when_logs_are_deleted(client):
    make_calls()
    before = scrape(client)
    UserFeedback.objects.all().delete()
    LLMRequestLog.objects.filter(model_name="llama-3.1-8b-instant").delete()
    assert scrape(client) == before


@pytest.mark.django_db
def test_feedback_and_firing_alerts(client):
    log = record_call()
    for rater, rating in enumerate(["thumbs_up", "thumbs_up", "thumbs_down"]):  # one rating per rater
        make_feedback(log, rating, rater=f"rater-{rater}")
    make_rule(name="Errors", is_firing=True)
    make_rule(name="Quiet", metric_type="no_traffic", threshold=1)
    make_rule(name="Off", metric_type="cost", threshold=1, is_firing=True, is_active=False)
    samples = scrape(client)
    assert value(samples, "llm_feedback_total", rating="thumbs_up") == 2
    assert value(samples, "llm_feedback_total", rating="thumbs_down") == 1
    assert value(samples, "llm_alerts_firing", rule="Errors") == 1
    assert value(samples, "llm_alerts_firing", rule="Quiet") == 0
    assert "Off" not in {labels["rule"] for labels, _ in samples["llm_alerts_firing"]}
    assert sum(v for _, v in samples["llm_alerts_firing"]) == AlertRule.objects.firing().count()


@pytest.mark.django_db
def test_empty_database_answers_valid_empty_families(client):
    samples = scrape(client)
    assert "llm_requests_total" not in samples
    assert RequestTotal.objects.count() == 0


@pytest.mark.django_db
def test_two_workers_answer_the_same(client):
    # Two registries and collectors, as in two gunicorn workers; they share only the database.
    make_calls()
    worker_a, worker_b = prometheus.build_registry(), prometheus.build_registry()
    first = generate_latest(worker_a)
    record_call("llama-3.1-8b-instant", prompt_tokens=1, latency_ms=1)
    assert generate_latest(worker_b) == generate_latest(worker_a) != first
    assert generate_latest(worker_a) == client.get(URL).content


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("Bearer wrong", 401), ("s3cret-token", 401), ("Bearer s3cret-token", 200)],
)
def test_metrics_token(client, settings, header, status):
    settings.METRICS_TOKEN = "s3cret-token"
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.get(URL, **extra)
    assert response.status_code == status
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert b"llm_" not in response.content


@pytest.mark.django_db
def test_no_token_configured_needs_no_auth(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get(URL).status_code == 200


@pytest.mark.django_db
def test_post_is_405(client):
    assert client.post(URL).status_code == 405


@pytest.mark.django_db
def test_scrape_queries_do_not_grow_with_new_rows(client):
    make_calls()
    client.get(URL)
    counts = []
    for new_rows in (5, 100):
        for index in range(new_rows):
            record_call(f"model-{index % 5}", latency_ms=index)
        with CaptureQueriesContext(connection) as queries:
            assert client.get(URL).status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1] < 30


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_row_committed_late_with_a_smaller_id_is_still_counted():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises writers: no transaction can commit a smaller id late.")
    inserted, may_commit = threading.Event(), threading.Event()
    early_ids: list[int] = []

    def slow_writer() -> None:
        from django.db import transaction

        try:
            with transaction.atomic():
                early_ids.append(record_call("late/model", latency_ms=10).id)
                inserted.set()
                may_commit.wait(timeout=30)
        finally:
            connection.close()

    writer = threading.Thread(target=slow_writer)
    writer.start()
    assert inserted.wait(timeout=30)
    later = record_call("late/model", latency_ms=20)  # committed now, with a larger id
    assert later.id > early_ids[0]

    results: list[int] = []

    def scrape_in_thread() -> None:
        try:
            results.append(prometheus.roll_up_requests())
        finally:
            connection.close()

    roll_up = threading.Thread(target=scrape_in_thread)
    roll_up.start()
    # Await the roll-up's wait for the slow writer's insert (a lock request not yet granted).
    deadline = time.monotonic() + 30
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = 'ShareLock'")
            if cursor.fetchone()[0]:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the roll-up never waited for the writer")
    may_commit.set()
    writer.join(timeout=30)
    roll_up.join(timeout=30)

    assert results == [2]
    total = RequestTotal.objects.get(model_name="late/model")
    assert total.requests == 2 == LLMRequestLog.objects.count()
    assert prometheus.roll_up_requests() == 0
    assert RequestTotal.objects.get(model_name="late/model").requests == 2


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_scrapes_count_each_row_once():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's shared-cache test database fails concurrent writers instead of queueing them.")
    for index in range(40):
        record_call(f"model-{index % 4}", latency_ms=index * 10)
    start = threading.Barrier(4)
    errors: list[Exception] = []

    def scrape_once() -> None:
        try:
            start.wait(timeout=30)
            prometheus.roll_up()
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=scrape_once) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sum(RequestTotal.objects.values_list("requests", flat=True)) == 40
    assert RequestTotal.objects.aggregate(cost=Sum("cost_usd"))["cost"] in (None, Decimal(0))
