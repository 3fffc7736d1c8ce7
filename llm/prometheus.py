"""Prometheus exposition of the logs: running totals rolled up from the database, and a collector.

Why totals, and not a COUNT over the logs at each scrape: a scrape must stay cheap at millions of
rows, and counters must never go down when purge_logs deletes old rows. So the figures live in
small tables (`RequestTotal` per model and status, `FeedbackTotal` per rating) with a watermark,
the highest log id already counted. A scrape first adds the rows above the watermark (an index
range scan on the primary key: only what arrived since the last scrape), then reads the totals.

How the rows above the watermark are added exactly once (a lock around the watermark, a final id
boundary so a row committed late is never skipped) is llm/watermarks.py, which the roll-ups of
llm/rollups.py share. One scrape adds at most SCRAPE_ROLLUP_LIMIT rows: the first scrape after an
upgrade does not read the whole table, and the counters catch up over the next scrapes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Count, Max, Q, Sum
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from llm import watermarks
from llm.models import (
    HISTOGRAM_BUCKETS_SECONDS,
    AlertRule,
    FeedbackTotal,
    LLMRequestLog,
    NotificationChannel,
    RequestTotal,
    UserFeedback,
    empty_buckets,
)

REQUESTS = "requests"
FEEDBACK = "feedback"
# Rows one scrape adds to the totals at most (about 0.2 s of work on PostgreSQL).
SCRAPE_ROLLUP_LIMIT = 200_000


def _bucket_counts(field: str) -> dict[str, Count]:
    return {
        f"{field}_le_{index}": Count("id", filter=Q(**{f"{field}__lte": bound * 1000}))
        for index, bound in enumerate(HISTOGRAM_BUCKETS_SECONDS)
    }


def roll_up_requests(limit: int | None = SCRAPE_ROLLUP_LIMIT) -> int:
    """Add the logs above the watermark (at most `limit` ids) to RequestTotal; answers how many
    rows were added."""
    with watermarks.claim(REQUESTS, LLMRequestLog, limit=limit) as claim:
        if claim.upto is None:
            return 0
        groups = (
            LLMRequestLog.objects.filter(id__gt=claim.watermark.last_id, id__lte=claim.upto)
            .values("model_name", "status")
            .annotate(
                requests=Count("id"),
                prompt_tokens=Sum("prompt_tokens"),
                completion_tokens=Sum("completion_tokens"),
                cost_usd=Sum("cost_estimate"),
                duration_sum_ms=Sum("latency_ms"),
                provider=Max("provider"),
                ttft_count=Count("ttft_ms"),
                ttft_sum_ms=Sum("ttft_ms"),
                **_bucket_counts("latency_ms"),
                **_bucket_counts("ttft_ms"),
            )
            .order_by()
        )
        totals = {(total.model_name, total.status): total for total in RequestTotal.objects.all()}
        added = 0
        new, changed = [], []
        for group in groups:
            key = (group["model_name"], group["status"])
            total = totals.get(key)
            if total is None:
                total = RequestTotal(model_name=key[0], status=key[1])
                new.append(total)
            else:
                changed.append(total)
            total.requests += group["requests"]
            total.prompt_tokens += group["prompt_tokens"] or 0
            total.completion_tokens += group["completion_tokens"] or 0
            total.cost_usd = Decimal(total.cost_usd) + Decimal(str(group["cost_usd"] or 0))
            total.duration_sum_seconds += (group["duration_sum_ms"] or 0) / 1000
            total.ttft_count += group["ttft_count"]
            total.ttft_sum_seconds += (group["ttft_sum_ms"] or 0) / 1000
            total.duration_buckets = _add(total.duration_buckets, group, "latency_ms")
            total.ttft_buckets = _add(total.ttft_buckets, group, "ttft_ms")
            total.provider = group["provider"] or total.provider
            added += group["requests"]
        RequestTotal.objects.bulk_create(new)
        RequestTotal.objects.bulk_update(
            changed,
            [
                "requests",
                "prompt_tokens",
                "completion_tokens",
                "cost_usd",
                "duration_sum_seconds",
                "duration_buckets",
                "ttft_count",
                "ttft_sum_seconds",
                "ttft_buckets",
                "provider",
            ],
        )
        claim.advance()
    return added


def _add(buckets: list[int], group: dict, field: str) -> list[int]:
    buckets = buckets if len(buckets) == len(HISTOGRAM_BUCKETS_SECONDS) else empty_buckets()
    return [count + group[f"{field}_le_{index}"] for index, count in enumerate(buckets)]


def roll_up_feedback(limit: int | None = SCRAPE_ROLLUP_LIMIT) -> int:
    with watermarks.claim(FEEDBACK, UserFeedback, limit=limit) as claim:
        if claim.upto is None:
            return 0
        groups = (
            UserFeedback.objects.filter(id__gt=claim.watermark.last_id, id__lte=claim.upto)
            .values("rating")
            .annotate(count=Count("id"))
            .order_by()
        )
        added = 0
        for group in groups:
            FeedbackTotal.objects.get_or_create(rating=group["rating"])
            FeedbackTotal.objects.filter(rating=group["rating"]).update(count=models.F("count") + group["count"])
            added += group["count"]
        claim.advance()
    return added


def roll_up(limit: int | None = SCRAPE_ROLLUP_LIMIT) -> None:
    """Bring the running totals up to date, by at most `limit` rows of each table (each scrape;
    purge_logs, before deleting, with no limit)."""
    roll_up_requests(limit)
    roll_up_feedback(limit)


def counted_up_to(name: str) -> int:
    """The watermark: rows with a larger id are not in the totals yet (purge_logs keeps them)."""
    return watermarks.counted_up_to(name)


def _histogram_buckets(cumulative: list[int], count: int) -> list[tuple[str, float]]:
    bounds = [floatToGoString(bound) for bound in HISTOGRAM_BUCKETS_SECONDS]
    return [*zip(bounds, cumulative, strict=True), ("+Inf", count)]


class DatabaseCollector(Collector):
    """Reads the running totals; every worker, and a restarted one, answers the same figures."""

    def __init__(self, roll_up_first: bool = True) -> None:
        self.roll_up_first = roll_up_first

    def describe(self) -> list[Metric]:
        # Without this, registering would call collect() and query the database at import time.
        return []

    def collect(self) -> Iterator[Metric]:
        if self.roll_up_first:
            roll_up(limit=SCRAPE_ROLLUP_LIMIT)
        yield from _request_families(RequestTotal.objects.order_by("model_name", "status"))
        yield _feedback_family()
        yield _alerts_firing_family()
        yield _channel_failing_family()
        yield _model_info_family()


@dataclass
class ModelTotals:
    """One model's figures summed over its statuses (tokens, cost and latency are per model)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    requests: int = 0
    duration_sum_seconds: float = 0.0
    duration_buckets: list[int] = field(default_factory=empty_buckets)
    ttft_count: int = 0
    ttft_sum_seconds: float = 0.0
    ttft_buckets: list[int] = field(default_factory=empty_buckets)

    def add(self, total: RequestTotal) -> None:
        self.prompt_tokens += total.prompt_tokens
        self.completion_tokens += total.completion_tokens
        self.cost_usd += Decimal(total.cost_usd)
        self.requests += total.requests
        self.duration_sum_seconds += total.duration_sum_seconds
        self.ttft_count += total.ttft_count
        self.ttft_sum_seconds += total.ttft_sum_seconds
        # roll_up_requests keeps every stored bucket list at HISTOGRAM_BUCKETS_SECONDS' length.
        self.duration_buckets = [a + b for a, b in zip(self.duration_buckets, total.duration_buckets, strict=True)]
        self.ttft_buckets = [a + b for a, b in zip(self.ttft_buckets, total.ttft_buckets, strict=True)]


def _request_families(totals: Iterable[RequestTotal]) -> list[Metric]:
    """Requests per model and status; tokens, cost and the two latency histograms per model."""
    requests = CounterMetricFamily("llm_requests", "LLM calls logged.", labels=["model", "status"])
    tokens = CounterMetricFamily("llm_tokens", "Tokens used.", labels=["model", "type"])
    cost = CounterMetricFamily("llm_cost_usd", "Estimated cost in USD.", labels=["model"])
    duration = HistogramMetricFamily(
        "llm_request_duration_seconds", "Latency of LLM calls (all tries, to the last byte).", labels=["model"]
    )
    ttft = HistogramMetricFamily(
        "llm_time_to_first_token_seconds", "Time to the first token of streamed calls.", labels=["model"]
    )
    per_model: dict[str, ModelTotals] = defaultdict(ModelTotals)
    for total in totals:
        requests.add_metric([total.model_name, total.status], total.requests)
        per_model[total.model_name].add(total)
    for name, model in per_model.items():
        tokens.add_metric([name, "prompt"], model.prompt_tokens)
        tokens.add_metric([name, "completion"], model.completion_tokens)
        cost.add_metric([name], float(model.cost_usd))
        duration.add_metric(
            [name], _histogram_buckets(model.duration_buckets, model.requests), model.duration_sum_seconds
        )
        ttft.add_metric([name], _histogram_buckets(model.ttft_buckets, model.ttft_count), model.ttft_sum_seconds)
    return [requests, tokens, cost, duration, ttft]


def _feedback_family() -> Metric:
    feedback = CounterMetricFamily("llm_feedback", "User feedback received.", labels=["rating"])
    for rating, count in FeedbackTotal.objects.order_by("rating").values_list("rating", "count"):
        feedback.add_metric([rating], count)
    return feedback


def _alerts_firing_family() -> Metric:
    firing = GaugeMetricFamily(
        "llm_alerts_firing", "1 while an active alert rule is over its threshold, else 0.", labels=["rule"]
    )
    for name, is_firing in AlertRule.objects.active().order_by("name").values_list("name", "is_firing"):
        firing.add_metric([name], 1 if is_firing else 0)
    return firing


def _channel_failing_family() -> Metric:
    failing = GaugeMetricFamily(
        "llm_alert_channel_failing",
        "1 while an active notification channel's last ALERT_CHANNEL_FAILING_AFTER deliveries all failed, else 0.",
        labels=["channel", "kind"],
    )
    threshold = settings.ALERT_CHANNEL_FAILING_AFTER
    channels = NotificationChannel.objects.filter(is_active=True).order_by("name")
    for name, kind, failures in channels.values_list("name", "kind", "consecutive_failures"):
        failing.add_metric([name, kind], 1 if failures >= threshold else 0)
    return failing


def _model_info_family() -> Metric:
    """llm_model_info{model, provider} 1 per model counted in the totals, for joins in PromQL
    (`... * on (model) group_left (provider) llm_model_info`). From the totals, not the logs: it
    neither scans the logs nor changes when they are purged."""
    info = GaugeMetricFamily(
        "llm_model_info", "A model seen in the logs, and its provider.", labels=["model", "provider"]
    )
    models_seen = RequestTotal.objects.values("model_name").annotate(provider=Max("provider")).order_by("model_name")
    for row in models_seen:
        info.add_metric([row["model_name"], row["provider"] or ""], 1)
    return info


def build_registry(roll_up_first: bool = True) -> CollectorRegistry:
    """A registry with only our collector: no process metrics, which differ from worker to worker."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(roll_up_first=roll_up_first))
    return registry


REGISTRY = build_registry()
