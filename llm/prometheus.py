"""Prometheus exposition of the logs: running totals rolled up from the database, and a collector.

Why totals, and not a COUNT over the logs at each scrape: a scrape must stay cheap at millions of
rows, and counters must never go down when purge_logs deletes old rows. So the figures live in
small tables (`RequestTotal` per model and status, `FeedbackTotal` per rating) with a watermark,
the highest log id already counted. A scrape first adds the rows above the watermark (an index
range scan on the primary key: only what arrived since the last scrape), then reads the totals.

Why a lock around the watermark: two gunicorn workers scraped at once must not both add the same
rows. The roll-up holds the watermark row (SELECT … FOR UPDATE on PostgreSQL; SQLite's write
transaction is exclusive) while it reads, adds and moves the watermark, all in one transaction.

Why a boundary, and not simply "every id above the watermark": ids are handed out when a row is
inserted, not when it is committed. Writer A takes id 10 and commits late; writer B takes id 11
and commits first. A roll-up that saw 11 and moved the watermark past it would never count 10.
So a roll-up only goes up to an id below which every row is final: on PostgreSQL it takes a SHARE
lock on the log table for an instant, which waits for the inserts in flight to commit (or roll
back) and is released at once; whatever id is the largest then can no longer be undercut. On
SQLite writers are serialised, so the largest id in the write transaction is final already.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import DatabaseError, connection, models, transaction
from django.db.models import Count, Max, Q, Sum
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from llm.models import (
    HISTOGRAM_BUCKETS_SECONDS,
    AlertRule,
    FeedbackTotal,
    LLMRequestLog,
    MetricWatermark,
    RequestTotal,
    UserFeedback,
    empty_buckets,
)

logger = logging.getLogger(__name__)

REQUESTS = "requests"
FEEDBACK = "feedback"
# How long a roll-up waits for inserts in flight before giving up; the scrape then serves the
# totals as they are, and the next one catches up. Inserts are short transactions.
BOUNDARY_LOCK_TIMEOUT_MS = 2000
# At most this many ids are rolled up per scrape: the first scrape after an upgrade (or after
# a long pause) would otherwise read the whole table in one go (5 s at 10 million rows). Each
# scrape adds the next slice, so the counters stay monotonic and catch up over a few scrapes.
ROLL_UP_MAX_IDS = 100_000


def _final_id_boundary(model: type[models.Model]) -> int | None:
    """The largest id of `model` below which no row can still appear; None when it is not known.

    On PostgreSQL, called outside the roll-up transaction so the table lock lasts only this.
    """
    if connection.vendor != "postgresql":
        return model.objects.aggregate(top=Max("id"))["top"] or 0
    table = connection.ops.quote_name(model._meta.db_table)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = {int(BOUNDARY_LOCK_TIMEOUT_MS)}")
            # SHARE conflicts with the ROW EXCLUSIVE lock every INSERT holds until its commit.
            cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")
            cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}")  # noqa: S608 - our own table name
            return cursor.fetchone()[0]
    except DatabaseError:
        logger.warning("Metrics roll-up skipped: inserts into %s held a lock too long.", table)
        return None


@contextmanager
def _watermark_for_update(name: str, model: type[models.Model]) -> Iterator[tuple[MetricWatermark, int | None]]:
    """A transaction holding the watermark row; yields it and the id boundary (None: skip)."""
    postgres = connection.vendor == "postgresql"
    # On PostgreSQL the boundary comes first, in its own short transaction (see the module doc).
    boundary = _final_id_boundary(model) if postgres else None
    MetricWatermark.objects.get_or_create(name=name)
    with transaction.atomic():
        watermark = MetricWatermark.objects.select_for_update().get(name=name)
        if not postgres:
            boundary = _final_id_boundary(model)  # SQLite: inside the (exclusive) write transaction
        yield watermark, boundary


def _batch_end(model: type[models.Model], last_id: int, boundary: int) -> int:
    """Where this roll-up stops: at most ROLL_UP_MAX_IDS ids past the first row above `last_id`
    (so a gap in the ids, after a purge or a sequence jump, does not cost empty scrapes)."""
    first = model.objects.filter(id__gt=last_id, id__lte=boundary).aggregate(first=models.Min("id"))["first"]
    if first is None:
        return boundary
    return min(boundary, first - 1 + ROLL_UP_MAX_IDS)


def _bucket_counts(field: str) -> dict[str, Count]:
    return {
        f"{field}_le_{index}": Count("id", filter=Q(**{f"{field}__lte": bound * 1000}))
        for index, bound in enumerate(HISTOGRAM_BUCKETS_SECONDS)
    }


def roll_up_requests() -> int:
    """Add the logs above the watermark to RequestTotal; answers how many rows were added."""
    with _watermark_for_update(REQUESTS, LLMRequestLog) as (watermark, boundary):
        if boundary is None or boundary <= watermark.last_id:
            return 0
        boundary = _batch_end(LLMRequestLog, watermark.last_id, boundary)
        groups = (
            LLMRequestLog.objects.filter(id__gt=watermark.last_id, id__lte=boundary)
            .values("model_name", "status")
            .annotate(
                requests=Count("id"),
                prompt_tokens=Sum("prompt_tokens"),
                completion_tokens=Sum("completion_tokens"),
                cost_usd=Sum("cost_estimate"),
                duration_sum_ms=Sum("latency_ms"),
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
            ],
        )
        watermark.last_id = boundary
        watermark.save(update_fields=["last_id", "updated_at"])
    return added


def _add(buckets: list[int], group: dict, field: str) -> list[int]:
    buckets = buckets if len(buckets) == len(HISTOGRAM_BUCKETS_SECONDS) else empty_buckets()
    return [count + group[f"{field}_le_{index}"] for index, count in enumerate(buckets)]


def roll_up_feedback() -> int:
    with _watermark_for_update(FEEDBACK, UserFeedback) as (watermark, boundary):
        if boundary is None or boundary <= watermark.last_id:
            return 0
        boundary = _batch_end(UserFeedback, watermark.last_id, boundary)
        groups = (
            UserFeedback.objects.filter(id__gt=watermark.last_id, id__lte=boundary)
            .values("rating")
            .annotate(count=Count("id"))
            .order_by()
        )
        added = 0
        for group in groups:
            FeedbackTotal.objects.get_or_create(rating=group["rating"])
            FeedbackTotal.objects.filter(rating=group["rating"]).update(count=models.F("count") + group["count"])
            added += group["count"]
        watermark.last_id = boundary
        watermark.save(update_fields=["last_id", "updated_at"])
    return added


def roll_up() -> None:
    """Bring the running totals up to date (each scrape, and purge_logs before deleting)."""
    roll_up_requests()
    roll_up_feedback()


def counted_up_to(name: str) -> int:
    """The watermark: rows with a larger id are not in the totals yet (purge_logs keeps them)."""
    watermark = MetricWatermark.objects.filter(name=name).first()
    return watermark.last_id if watermark else 0


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
            roll_up()
        yield from _request_families(RequestTotal.objects.order_by("model_name", "status"))
        yield _feedback_family()
        yield _alerts_firing_family()


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


def build_registry(roll_up_first: bool = True) -> CollectorRegistry:
    """A registry with only our collector: no process metrics, which differ from worker to worker."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(roll_up_first=roll_up_first))
    return registry


REGISTRY = build_registry()
