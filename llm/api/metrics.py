"""GET /api/metrics/…: the figures of llm.metrics over the shared filters.

Like every filtered endpoint, with no dates a metric covers the last 24 hours (llm.filters.
WINDOW_RULE); every answer states its window (`start`, `end`, `window_defaulted`), so a client
never has to guess what it is looking at.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llm import metrics, serializers
from llm.api.params import DeclaredParameters
from llm.filters import FilteredLogs, filter_logs
from llm.ingest_limits import TAG_KEY_MAX_CHARS, text_problem

GROUP_BY_PARAMETER = OpenApiParameter(
    "group_by",
    OpenApiTypes.STR,
    enum=list(metrics.GROUP_BY),
    description=(
        "Period length; by default, as the dashboard: minute up to 2 hours, hour up to 7 days, day up to 180 days, "
        "month beyond."
    ),
)


def group_by_for(request: Request, filtered: FilteredLogs) -> str:
    """The `group_by` a client asks for (hour, day or month), or by default the one bucket rule the
    pages follow too (metrics.group_by_for), which answers `minute` for a window of up to 2 hours."""
    group_by = request.query_params.get("group_by")
    if group_by:
        if group_by not in metrics.GROUP_BY:  # not "minute": over a long window that is too many rows
            raise ValidationError({"group_by": [f"Must be one of: {', '.join(metrics.GROUP_BY)}."]})
        return group_by
    return metrics.group_by_for(filtered.end - filtered.start)


class MetricsView(DeclaredParameters, APIView):
    """Filters the logs, answers the window and what `figures` computes from them."""

    required_right = "read"
    filtered = True

    def figures(self, request: Request, filtered: FilteredLogs) -> dict[str, Any]:
        raise NotImplementedError

    def period(self, request: Request, filtered: FilteredLogs) -> str | None:
        """The period the figures are grouped by (None: totals), which decides what roll-ups answer."""
        return None

    def get(self, request: Request) -> Response:
        filtered = filter_logs(request.query_params)
        with metrics.aggregate_queries():
            figures = self.figures(request, filtered)
        return Response({**filtered.window(), "percentiles": self.percentiles(request, filtered), **figures})

    def percentiles(self, request: Request, filtered: FilteredLogs) -> str:
        return metrics.percentiles_kind(filtered, self.period(request, filtered))


def answers(serializer: type[serializers.MetricsWindowSerializer], description: str):
    """The schema of a metrics endpoint's GET: its answer's fields, and a 400 for a bad filter."""
    responses = {
        200: OpenApiResponse(serializer, description=description),
        400: OpenApiResponse(description="Bad filter."),
    }
    return extend_schema_view(get=extend_schema(responses=responses))


@answers(
    serializers.OverviewSerializer, "Totals, error rate, latency percentiles, cost and unique users of the window."
)
class OverviewView(MetricsView):
    def figures(self, request, filtered):
        return metrics.overview(filtered)

    def percentiles(self, request, filtered):
        return metrics.percentiles_kind(filtered, narrowed=True)  # see metrics.overview


@answers(serializers.TokenUsageSerializer, "Per period: prompt, completion and total tokens, requests.")
class TokenUsageView(MetricsView):
    parameters = (GROUP_BY_PARAMETER,)

    def figures(self, request, filtered):
        group_by = group_by_for(request, filtered)
        return {"group_by": group_by, "results": metrics.token_usage(filtered, group_by)}

    def period(self, request, filtered):
        return group_by_for(request, filtered)


@answers(serializers.LatencySerializer, "Per model: requests, average and p50/p95/p99 latency in ms.")
class LatencyView(MetricsView):
    def figures(self, request, filtered):
        return {"results": metrics.latency_by_model(filtered)}


@answers(serializers.ErrorsSerializer, "Per error_type: count, share of all errors (percent), latest message.")
class ErrorsView(MetricsView):
    def figures(self, request, filtered):
        return metrics.errors(filtered)


@answers(
    serializers.ModelUsageSerializer,
    "Per model: requests, tokens, cost, error rate, latency; priced=false: no price known.",
)
class ModelUsageView(MetricsView):
    def figures(self, request, filtered):
        return {"results": metrics.model_usage(filtered)}


@answers(
    serializers.DailyStatsSerializer,
    "Per day (TIME_ZONE): requests, errors, tokens, cost, average, p95 and p99 latency (null under "
    f"{metrics.MIN_CALLS_FOR_PERCENTILE} calls), and `partial` (a day the window covers only in part).",
)
class DailyStatsView(MetricsView):
    def figures(self, request, filtered):
        return {"results": metrics.daily_stats(filtered)}

    def period(self, request, filtered):
        return "day"


@answers(
    serializers.TimeseriesSerializer,
    "Per period with traffic: requests, errors, error_rate, tokens, cost, average and p50/p95/p99 latency, "
    f"and `partial` (the window covers only part of the period, or it is still running). Percentiles are "
    f"null for a period with fewer than {metrics.MIN_CALLS_FOR_PERCENTILE} calls. The overview page's "
    "charts draw these rows.",
)
class TimeseriesView(MetricsView):
    parameters = (GROUP_BY_PARAMETER,)

    def figures(self, request, filtered):
        group_by = group_by_for(request, filtered)
        rows = metrics.timeseries(filtered, group_by)
        return {"group_by": group_by, "min_calls_for_percentile": metrics.MIN_CALLS_FOR_PERCENTILE, "results": rows}

    def period(self, request, filtered):
        return group_by_for(request, filtered)


BREAKDOWN_PARAMETERS = (
    OpenApiParameter(
        "by",
        OpenApiTypes.STR,
        pattern=rf"^({'|'.join(metrics.BREAKDOWN_FIELDS)}|tag:[a-z_.]{{1,{TAG_KEY_MAX_CHARS}}})$",
        description=f"{', '.join(metrics.BREAKDOWN_FIELDS)}, or tag:<key> (e.g. tag:feature; any key of 1 to "
        f"{TAG_KEY_MAX_CHARS} characters): the groups (default model).",
    ),
    OpenApiParameter(
        "order_by",
        OpenApiTypes.STR,
        enum=list(metrics.BREAKDOWN_ORDERS),
        description="Largest first by this figure (default cost; tokens: total tokens; p95: p95 latency).",
    ),
    OpenApiParameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": metrics.BREAKDOWN_MAX_LIMIT},
        description=f"Groups shown, 1 to {metrics.BREAKDOWN_MAX_LIMIT} (default {metrics.BREAKDOWN_DEFAULT_LIMIT}); "
        "the rest are summed in `other`.",
    ),
)


def breakdown_choice(params: Any) -> tuple[str, str, int]:
    """`by`, `order_by` and `limit` of a query string, each checked: a 400 names the bad one."""
    by = params.get("by") or "model"
    tag_key = by.removeprefix(metrics.TAG_BREAKDOWN_PREFIX) if by.startswith(metrics.TAG_BREAKDOWN_PREFIX) else None
    if tag_key is not None:
        if not 1 <= len(tag_key) <= TAG_KEY_MAX_CHARS or text_problem(tag_key):
            raise ValidationError({"by": [f"tag:<key> needs a key of 1 to {TAG_KEY_MAX_CHARS} storable characters."]})
    elif by not in metrics.BREAKDOWN_FIELDS:
        choices = ", ".join([*metrics.BREAKDOWN_FIELDS, "tag:<key>"])
        raise ValidationError({"by": [f"One of {choices}."]})
    order_by = params.get("order_by") or "cost"
    if order_by not in metrics.BREAKDOWN_ORDERS:
        raise ValidationError({"order_by": [f"One of {', '.join(metrics.BREAKDOWN_ORDERS)}."]})
    raw_limit = params.get("limit") or str(metrics.BREAKDOWN_DEFAULT_LIMIT)
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= metrics.BREAKDOWN_MAX_LIMIT:
        raise ValidationError({"limit": [f"A whole number from 1 to {metrics.BREAKDOWN_MAX_LIMIT}."]})
    return by, order_by, int(raw_limit)


@answers(
    serializers.BreakdownSerializer,
    "The calls grouped by model, user, session, source, error type or a tag's value: per group requests, "
    "errors, tokens, cost, cost per 1,000 tokens, latency; the rest summed in `other`. Counts, tokens and cost "
    "are exact; percentiles are exact over a window of up to 2 hours, else within 1 % (latency histograms).",
)
class BreakdownView(MetricsView):
    parameters = BREAKDOWN_PARAMETERS
    required_right = "read"

    def get(self, request: Request) -> Response:
        # Unlike the other figures, `percentiles` depends on `by` (roll-ups hold models and error
        # types only): breakdown() says which.
        by, order_by, limit = breakdown_choice(request.query_params)
        filtered = filter_logs(request.query_params)
        with metrics.aggregate_queries():
            answer = metrics.breakdown(metrics.Selection.of(filtered), by, order_by, limit)
        return Response({**filtered.window(), **answer})
