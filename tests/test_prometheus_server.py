"""A real Prometheus server (Debian's `prometheus`) scrapes /metrics of the live test server; what
its query API answers agrees with the database. Also checks grafana/ with promtool."""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.db.models import Count, Sum

from llm.models import HISTOGRAM_BUCKETS_SECONDS, LLMRequestLog

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
GRAFANA = Path(django_settings.BASE_DIR) / "grafana"
TOKEN = "scrape-token-for-tests"
MODELS = ["llama-3.1-8b-instant", "llama-3.3-70b-versatile", "qwen/qwen3-32b"]

needs_prometheus = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(), reason="Debian package prometheus missing: run scripts/install-system-deps"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def prometheus_server(tmp_path: Path, target: str):
    """Prometheus on 127.0.0.1 scraping `target` every second: once with the token, once without."""
    port = free_port()
    (tmp_path / "token").write_text(TOKEN)
    shutil.copy(GRAFANA / "alerts.yml", tmp_path / "alerts.yml")
    config = f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: observatory
    static_configs: [{{targets: ["{target}"]}}]
    authorization: {{type: Bearer, credentials_file: {tmp_path / "token"}}}
  - job_name: no-token
    static_configs: [{{targets: ["{target}"]}}]
"""
    (tmp_path / "prometheus.yml").write_text(config)
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115 - closed with the process
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def api(base: str, path: str, **params) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def query(base: str, expression: str) -> list[dict]:
    return api(base, "/api/v1/query", query=expression)["result"]


def await_until(check, timeout: float = 60):
    """Polls Prometheus (an outside process: there is no event to wait on) until check() is truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:  # Prometheus still starting
            result = None
        if result:
            return result
        time.sleep(0.2)
    pytest.fail("Prometheus did not get there in time")


def prometheus_quantile(q: float, latencies_seconds: list[float]) -> float:
    """What histogram_quantile() computes from our buckets (Prometheus' algorithm, written out):
    find the bucket holding rank q × count, interpolate linearly inside it."""
    bounds = [*HISTOGRAM_BUCKETS_SECONDS, float("inf")]
    values = np.array(latencies_seconds)
    cumulative = [int((values <= bound).sum()) for bound in bounds]
    rank = q * cumulative[-1]
    index = next(i for i, count in enumerate(cumulative) if count >= rank)
    if bounds[index] == float("inf"):
        return bounds[-2]
    lower = 0.0 if index == 0 else bounds[index - 1]
    below = 0 if index == 0 else cumulative[index - 1]
    return lower + (bounds[index] - lower) * (rank - below) / (cumulative[index] - below)


def make_traffic(count: int = 300) -> None:
    rng = random.Random(7)
    logs = []
    for _ in range(count):
        failed = rng.random() < 0.1
        streamed = rng.random() < 0.5
        latency = rng.lognormvariate(0.3, 1.0) * 1000  # ms, median ~1.3 s, a long tail
        logs.append(
            LLMRequestLog(
                model_name=rng.choice(MODELS),
                status="error" if failed else "success",
                error_type="server_error" if failed else "",
                prompt_tokens=rng.randint(10, 3000),
                completion_tokens=0 if failed else rng.randint(1, 800),
                latency_ms=latency,
                ttft_ms=latency * rng.uniform(0.05, 0.5) if streamed else None,
                cost_estimate=None,
            )
        )
    LLMRequestLog.objects.record_many(logs)


@needs_prometheus
@pytest.mark.django_db(transaction=True)
def test_prometheus_scrapes_the_figures_of_the_database(live_server, settings, tmp_path, model_prices):
    settings.METRICS_TOKEN = TOKEN
    make_traffic()
    # Everything expected is read before Prometheus starts scraping (SQLite's shared-cache test
    # database does not let this thread read while a scrape writes the totals).
    counts = {
        (row["model_name"], row["status"]): row["n"]
        for row in LLMRequestLog.objects.values("model_name", "status").annotate(n=Count("id"))
    }
    tokens = {
        row["model_name"]: (row["prompt"], row["completion"])
        for row in LLMRequestLog.objects.values("model_name").annotate(
            prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
        )
    }
    latencies = [ms / 1000 for ms in LLMRequestLog.objects.values_list("latency_ms", flat=True)]
    model_latencies = [
        ms / 1000 for ms in LLMRequestLog.objects.filter(model_name=MODELS[1]).values_list("latency_ms", flat=True)
    ]
    total = len(latencies)

    host_port = live_server.url.removeprefix("http://")
    with prometheus_server(tmp_path, host_port) as base:
        await_until(lambda: query(base, 'sum(llm_requests_total{job="observatory"})'))
        answered = {
            (item["metric"]["model"], item["metric"]["status"]): float(item["value"][1])
            for item in query(base, 'llm_requests_total{job="observatory"}')
        }
        assert answered == pytest.approx(counts)
        assert float(query(base, 'sum(llm_requests_total{job="observatory"})')[0]["value"][1]) == total

        for model, (prompt, completion) in tokens.items():
            result = query(base, f'llm_tokens_total{{job="observatory",model="{model}"}}')
            by_type = {item["metric"]["type"]: float(item["value"][1]) for item in result}
            assert by_type == {"prompt": prompt, "completion": completion}

        buckets = 'llm_request_duration_seconds_bucket{job="observatory"}'
        overall = query(base, f"histogram_quantile(0.95, sum by (le) ({buckets}))")
        estimate = float(overall[0]["value"][1])
        assert estimate == pytest.approx(prometheus_quantile(0.95, latencies), rel=1e-9)
        # The estimate lies in the same bucket as the exact p95 (NumPy, linear interpolation).
        exact = float(np.percentile(latencies, 95))
        bucket_of = [b for b in [*HISTOGRAM_BUCKETS_SECONDS, float("inf")] if exact <= b][0]
        lower = max([0, *[b for b in HISTOGRAM_BUCKETS_SECONDS if b < bucket_of]])
        assert lower <= estimate <= bucket_of

        per_model = query(
            base,
            f'histogram_quantile(0.5, sum by (le) ({buckets[:-1]},model="{MODELS[1]}"}}))',
        )
        assert float(per_model[0]["value"][1]) == pytest.approx(prometheus_quantile(0.5, model_latencies), rel=1e-9)

        # Scraping without the token is refused; with it, the target is up.
        targets = await_until(
            lambda: (
                [t for t in api(base, "/api/v1/targets")["activeTargets"] if t["health"] != "unknown"]
                if all(t["health"] != "unknown" for t in api(base, "/api/v1/targets")["activeTargets"])
                else None
            )
        )
        health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}
        assert health["observatory"] == ("up", "")
        assert health["no-token"][0] == "down" and "401" in health["no-token"][1]

        # Our alerting rules load and evaluate against these series without errors.
        groups = await_until(
            lambda: [g for g in api(base, "/api/v1/rules")["groups"] if all(r["health"] == "ok" for r in g["rules"])]
        )
        assert {rule["name"] for rule in groups[0]["rules"]} >= {"LLMErrorRateAbove5Percent", "LLMNoTrafficForAnHour"}


needs_promtool = pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool (Debian package prometheus) missing")


@needs_promtool
def test_alerting_rules_are_valid():
    result = subprocess.run([PROMTOOL, "check", "rules", str(GRAFANA / "alerts.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


@needs_promtool
def test_example_scrape_config_is_valid_as_shipped():
    # Exactly the file users copy, checked where it lies (its rule_files path is relative to it).
    command = [PROMTOOL, "check", "config", str(GRAFANA / "prometheus.yml")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=GRAFANA)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


@needs_promtool
def test_example_scrape_config_with_its_token_block_uncommented_is_valid(tmp_path):
    # The commented-out authorization block is what a user with METRICS_TOKEN set switches on:
    # uncommented, and with its token file present, it must still be a valid config.
    shipped = (GRAFANA / "prometheus.yml").read_text()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    commented = [
        "    # authorization:",
        "    #   type: Bearer",
        "    #   credentials_file: /etc/prometheus/observatory-metrics-token",
    ]
    assert all(line in shipped.splitlines() for line in commented)
    config = shipped
    for line in commented:
        config = config.replace(line, line.replace("# ", "", 1))
    config = config.replace("/etc/prometheus/observatory-metrics-token", str(token_file))
    assert "\n    authorization:\n      type: Bearer\n" in config
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(GRAFANA / "alerts.yml", tmp_path / "alerts.yml")
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr

    # And promtool does read the block: a missing token file fails the check.
    token_file.unlink()
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode != 0 and "token" in result.stdout + result.stderr


def test_dashboard_queries_only_our_metrics():
    dashboard = json.loads((GRAFANA / "llm-observatory-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for needed in ["requests", "error rate", "p95", "p99", "tokens", "cost per hour", "alert", "failing"]:
        assert needed in titles
    assert any("histogram_quantile(0.95" in e and "llm_request_duration_seconds_bucket" in e for e in expressions)
    assert any("histogram_quantile(0.99" in e and "llm_request_duration_seconds_bucket" in e for e in expressions)
    assert any("increase(llm_cost_usd_total" in expr and "[1h]" in expr for expr in expressions)
    known = {"llm_requests_total", "llm_tokens_total", "llm_cost_usd_total", "llm_request_duration_seconds_bucket",
             "llm_time_to_first_token_seconds_bucket", "llm_alerts_firing", "llm_feedback_total",
             "llm_alert_channel_failing"}  # fmt: skip
    for expr in expressions:
        used = set(re.findall(r"llm_[a-z_]+", expr))
        assert used <= known, expr


# promtool's rule unit tests: series in, alerts out. 20 calls a minute, all fast in the first
# scenario, half of them slow in the second; a target down from the fourth minute.
RULE_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # 20 calls a minute; every one of them at or below 10 s: p99 about 10 s, no alert.
      - series: 'llm_request_duration_seconds_bucket{{le="10.0"}}'
        values: '0+20x30'
      - series: 'llm_request_duration_seconds_bucket{{le="60.0"}}'
        values: '0+20x30'
      - series: 'llm_request_duration_seconds_bucket{{le="+Inf"}}'
        values: '0+20x30'
      - series: 'llm_requests_total{{model="m",status="success"}}'
        values: '0+20x30'
      - series: 'up{{job="llm-observatory",instance="observatory.example.com"}}'
        values: '1 1 1 0 0 0 0 0 0 0 0 0'
    alert_rule_test:
      - eval_time: 20m
        alertname: LLMLatencyP99Above30s
        exp_alerts: []
      - eval_time: 4m
        alertname: LLMObservatoryDown
        exp_alerts: []
      - eval_time: 9m
        alertname: LLMObservatoryDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: llm-observatory, instance: observatory.example.com}}
            exp_annotations:
              summary: "LLM Observatory's /metrics is not answering"
              description: "Prometheus could not scrape observatory.example.com for 5 minutes: is the app down, \\
                or is METRICS_TOKEN wrong?"
  - interval: 1m
    input_series:
      # 20 calls a minute, half of them between 10 s and 60 s: p99 about 59 s, the alert fires.
      - series: 'llm_request_duration_seconds_bucket{{le="10.0"}}'
        values: '0+10x30'
      - series: 'llm_request_duration_seconds_bucket{{le="60.0"}}'
        values: '0+20x30'
      - series: 'llm_request_duration_seconds_bucket{{le="+Inf"}}'
        values: '0+20x30'
      - series: 'llm_requests_total{{model="m",status="success"}}'
        values: '0+20x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: LLMLatencyP99Above30s
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: "p99 latency above 30 s"
              description: "The slowest 1% of LLM calls took longer than {p99} s over 15 minutes."
"""


@needs_promtool
def test_p99_and_target_down_rules_fire_on_their_series(tmp_path):
    # p99 of "half the calls in (10 s, 60 s]" by Prometheus' interpolation within the bucket:
    # rank 0.99 * 300 = 297 of 300 calls in 15 minutes, 150 of them in the bucket above 10 s.
    p99 = 10 + (60 - 10) * (0.99 * 300 - 150) / 150
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(RULE_TESTS.format(rules=GRAFANA / "alerts.yml", p99=f"{p99:.1f}"))
    result = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
