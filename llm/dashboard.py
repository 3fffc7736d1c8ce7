"""What the dashboard pages show, built on llm.metrics: the pages and the API read the same figures.

The time range and model filter live in the URL (`?range=7d&model=…`, or `range=custom` with
`start_date` and `end_date`), so a view can be shared; they become the same `start_date`,
`end_date` and `model` parameters the API takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db import connection
from django.db.models import Count, Max, Min, QuerySet, Sum
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from llm import budgets, forecast, formatting, metrics
from llm.filters import filter_errors, filter_logs, filter_rows, narrowed_group
from llm.ingest_limits import TAG_KEY_MAX_CHARS, text_problem
from llm.models import Budget, DashboardSettings, LLMRequestLog, LLMRequestLogQuerySet, ModelPrice, UserFeedback
from llm.paging import EstimatingPaginator

RANGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
RANGE_LABELS = {"1h": "1 hour", "24h": "24 hours", "7d": "7 days", "30d": "30 days", "custom": "Custom"}
DEFAULT_RANGE = "24h"
AUTO_REFRESH_SECONDS = 30
# The logs page's orders: newest first, or the worst calls first (what a card links to).
LOG_SORTS = {
    "newest": ("Newest first", ("-timestamp", "-id")),
    "slowest": ("Slowest first", ("-latency_ms", "-id")),
    "costliest": ("Costliest first", ("-cost_estimate", "-id")),
    "tokens": ("Most tokens first", ("-total_tokens", "-id")),
}
# Where each overview card leads: the calls behind its figure, worst first.
CARD_LOGS = {
    "requests": ("All calls", {}),
    "error_rate": ("Failed calls", {"status": "error"}),
    "p95_latency_ms": ("Slowest calls", {"sort": "slowest"}),
    "total_tokens": ("Largest calls", {"sort": "tokens"}),
    "total_cost": ("Costliest calls", {"sort": "costliest"}),
}


@dataclass
class TimeRange:
    key: str
    start: datetime
    end: datetime
    model: str = ""
    errors: dict[str, list[str]] = field(default_factory=dict)
    # Extra filters a page keeps in its links (the logs page: status, user_id, search); `tag` is a
    # list (the filter is repeatable).
    extra: dict[str, Any] = field(default_factory=dict)
    # How the page shows the rows (the logs page's sort): kept in links, not a filter.
    options: dict[str, str] = field(default_factory=dict)

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    @property
    def group_by(self) -> str:
        return metrics.group_by_for(self.length)

    def api_params(self) -> dict[str, str]:
        """The same window as API parameters: what the export buttons and the tests ask for."""
        params = {"start_date": self.start.isoformat(), "end_date": self.end.isoformat()}
        if self.model:
            params["model"] = self.model
        return {**params, **{key: value for key, value in self.extra.items() if value}}

    def api_query(self) -> str:
        return urlencode(self.api_params(), doseq=True)

    def page_params(self) -> dict[str, str]:
        """The URL parameters of this view, for links that keep it (pagination, refresh)."""
        params = {"range": self.key}
        if self.key == "custom":
            params |= {"start_date": self.start.isoformat(), "end_date": self.end.isoformat()}
        if self.model:
            params["model"] = self.model
        return {**params, **{key: value for key, value in (self.extra | self.options).items() if value}}

    def logs_query(self, **params: str) -> str:
        """The logs page's query string for this range and model, plus `params`."""
        return urlencode({**self.page_params(), **params}, doseq=True)

    def logs(self) -> LLMRequestLogQuerySet:
        # The window is decided (and its dates checked) by time_range; the previous period of the
        # overview's comparison may start before the earliest date a query string may give.
        return filter_rows({"model": self.model, **self.extra}, self.start, self.end)

    def selection(self) -> metrics.Selection:
        """The same rows as `logs`, with what llm.metrics needs to read them from the roll-ups.
        Built over the decided window, like `logs`: the previous period may start before the
        earliest date a query string may give, so the dates are not checked again."""
        status = self.extra.get("status", "")
        narrowed = any(value for name, value in self.extra.items() if name != "status")
        return metrics.Selection(
            self.logs(),
            self.start,
            self.end,
            self.model,
            status,
            rollups_apply=not narrowed,
            narrowed_to=narrowed_group(self.extra) if narrowed else None,
        )

    def previous(self) -> TimeRange:
        return TimeRange(self.key, self.start - self.length, self.start, self.model)


def time_range(params: Any, *, extra_keys: tuple[str, ...] = ()) -> TimeRange:
    """The range and filters a page shows. A bad value is reported in `errors` (the filter bar
    shows it) and not applied: a bad range or date falls back to the default range, a bad filter
    to none."""
    key = params.get("range") or DEFAULT_RANGE
    values: dict[str, Any] = {name: params.get(name, "").strip() for name in ("model", *extra_keys)}
    if "tag" in extra_keys:
        values["tag"] = tag_values(params)
    # Nothing given, nothing to check (the overview without a model): no filter set built.
    errors = filter_errors(values) if any(values.values()) else {}
    for name in errors:
        values[name] = [] if name == "tag" else ""
    model = values.pop("model")
    end = timezone.now()
    if key == "custom":
        try:
            filtered = filter_logs({"start_date": params.get("start_date", ""), "end_date": params.get("end_date", "")})
        except ValidationError as error:
            errors |= {name: [str(message) for message in messages] for name, messages in error.detail.items()}
        else:
            return TimeRange(key, filtered.start, filtered.end, model, errors, values)
    elif key not in RANGES:
        errors["range"] = [f"Choose one of {', '.join(RANGE_LABELS)}."]
    key = key if key in RANGES else DEFAULT_RANGE
    return TimeRange(key, end - RANGES[key], end, model, errors, values)


def tag_values(params: Any) -> list[str]:
    """The `tag` filters of a query string (repeatable), without empty ones (the filter bar always
    sends one empty field to add a tag with)."""
    given = params.getlist("tag") if hasattr(params, "getlist") else [params.get("tag", "")]
    return [text.strip() for text in given if text and text.strip()]


# At most this many models with traffic are listed (the model filter is a <select>).
MODEL_CHOICES_LIMIT = 200


def logged_model_names(limit: int = MODEL_CHOICES_LIMIT) -> list[str]:
    """The distinct model names of the logs, in order, at most `limit`: exact, and ~1 ms at 10M rows.

    `SELECT DISTINCT model_name` reads every row (0.84 s at 10 million on PostgreSQL). This walks
    the (model_name, timestamp) index instead, one jump per name (a "loose index scan" as a
    recursive CTE: each step asks the index for the first name after the last one), so it costs
    one index probe per model, the same on SQLite and PostgreSQL.
    """
    table = LLMRequestLog._meta.db_table
    next_name = f"SELECT model_name FROM {table} WHERE model_name > names.name ORDER BY model_name LIMIT 1"  # noqa: S608
    sql = f"""
        WITH RECURSIVE names(name, position) AS (
            SELECT (SELECT model_name FROM {table} ORDER BY model_name LIMIT 1), 1
            UNION ALL
            SELECT ({next_name}), position + 1 FROM names WHERE names.name IS NOT NULL AND position < %s
        )
        SELECT name FROM names WHERE name IS NOT NULL ORDER BY position
    """  # noqa: S608 - our own table name; the limit is a parameter
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [name for (name,) in cursor.fetchall()]


def model_choices() -> list[str]:
    """Models with a price or with traffic, for the model filter and the playground."""
    priced = set(ModelPrice.objects.values_list("model_name", flat=True))
    return sorted(priced | set(logged_model_names()))


def _filled(rows: list[dict[str, Any]], window: TimeRange) -> list[dict[str, Any]]:
    """Periods without traffic as zeros, so a chart's x axis is time, not just the busy periods."""
    periods = metrics.period_starts(window.start, window.end, window.group_by)
    if periods is None:
        return rows
    by_period = {row["period"]: row for row in rows}
    return [
        by_period.get(moment.isoformat()) or metrics.empty_period(moment, window.group_by, window.start, window.end)
        for moment in periods
    ]


def change(current: float | None, previous: float | None) -> float | None:
    """Percent change against the previous period; None when there is nothing to compare with."""
    if current is None or not previous:
        return None
    return (current - previous) * 100.0 / previous


def point_change(current: float | None, previous: float | None) -> float | None:
    """Change of a percentage in percentage points (3.08 % -> 5.23 % is +2.15 pp, not +69.9 %)."""
    if current is None or previous is None:
        return None
    return current - previous


@dataclass(frozen=True)
class Card:
    """One overview card: which figure of metrics.overview it shows and how its change is told."""

    key: str
    label: str
    figure: str  # the key in metrics.overview
    series: str  # the metrics.timeseries column its sparkline draws
    # A percentage changes in percentage points; a relative change of a rate misleads.
    is_rate: bool = False
    # A second figure shown under the value (p99 under p95).
    secondary: tuple[str, str] | None = None

    @property
    def change_unit(self) -> str:
        return "pp" if self.is_rate else "%"

    def change(self, current: float | None, previous: float | None) -> float | None:
        return point_change(current, previous) if self.is_rate else change(current, previous)


CARDS = [
    Card("requests", "Requests", "total_requests", "requests"),
    Card("error_rate", "Error rate", "error_rate", "error_rate", is_rate=True),
    Card("p95_latency_ms", "p95 latency", "p95_latency_ms", "p95_latency_ms", secondary=("p99", "p99_latency_ms")),
    Card("total_tokens", "Tokens", "total_tokens", "total_tokens"),
    Card("total_cost", "Cost", "total_cost", "cost"),
]


def card(spec: Card, current: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """A card's figures: its value, the previous window's, and the change between them.

    A rate over a window without calls is no rate (0 % of nothing), so it has no previous value.
    """
    value = current[spec.figure]
    before = previous[spec.figure] if previous["total_requests"] or not spec.is_rate else None
    secondary = None
    if spec.secondary:
        label, figure = spec.secondary
        secondary = {"label": label, "key": figure, "value": current[figure]}
    return {
        "key": spec.key,
        "label": spec.label,
        "value": value,
        "previous": before,
        "change": spec.change(value, before),
        "change_unit": spec.change_unit,
        "secondary": secondary,
        "link_text": CARD_LOGS[spec.key][0],
    }


# The columns over time the overview's charts draw (static/js/charts.js), the sparklines' too.
PERIOD_COLUMNS = tuple(
    dict.fromkeys(
        [
            "requests",
            "errors",
            "prompt_tokens",
            "completion_tokens",
            "p50_latency_ms",
            "p95_latency_ms",
            "p99_latency_ms",
            *(spec.series for spec in CARDS),
        ]
    )
)


def previous_figures(window: TimeRange, recent: metrics.RecentRows | None = None) -> dict[str, Any]:
    """The previous window's figures the cards compare with, each as metrics.overview answers it:
    read by metrics.window_totals, which reads no unique users and no p50 or p99 (the cards'
    change needs neither; unique users cost the most of a window's reading). `recent`: the calls
    above the roll-ups' watermark, summed: seldom in the previous window, then not read again."""
    before = window.previous()
    span = metrics.Window(before.start, before.end, before.model, latency=True)
    totals = metrics.window_totals([span], recent)[span]
    return {
        "total_requests": totals.requests,
        "error_rate": totals.error_rate,
        "p95_latency_ms": totals.p95_latency_ms,
        "total_tokens": totals.total_tokens,
        "total_cost": totals.cost,
    }


def overview(window: TimeRange) -> dict[str, Any]:
    # The calls not rolled up yet, read once for the window, the previous window and the month's forecast.
    state = metrics.rollup_state()
    recent = metrics.recent_rows(state.last_id, state)
    # The window read once for the figures, the series, the errors and the cost by model.
    chosen = metrics.share(window.selection(), window.group_by, recent)
    logs = chosen.logs
    # The cards' figures: the page shows no unique users, the costliest figure of a window.
    current = metrics.overview_figures(chosen)
    previous = previous_figures(window, recent)
    series = _filled(metrics.timeseries(chosen, window.group_by, start=window.start, end=window.end), window)
    thresholds = DashboardSettings.load()
    days = max(window.length / timedelta(days=1), 1 / 24)
    levels = {
        "error_rate": thresholds.level("error_rate", current["error_rate"] if current["total_requests"] else None),
        "p95_latency_ms": thresholds.level("p95_latency", current["p95_latency_ms"]),
        "total_cost": thresholds.level("cost_per_day", current["total_cost"] / days),
    }
    errors_by_type = metrics.errors(chosen, recent)["errors"]
    return {
        "figures": current,
        "cards": [
            {
                **card(spec, current, previous),
                "level": levels.get(spec.key, "ok"),
                "logs_query": window.logs_query(**CARD_LOGS[spec.key][1]),
            }
            for spec in CARDS
        ],
        "series": series,
        "min_calls_for_percentile": metrics.MIN_CALLS_FOR_PERCENTILE,
        # An empty latency chart needs a reason: no period had enough calls for a percentile.
        "periods_with_percentiles": sum(row["p95_latency_ms"] is not None for row in series),
        "cost_by_model": metrics.cost_by_model(chosen),
        "percentiles": metrics.percentiles_kind(chosen),
        "errors_by_type": errors_by_type,
        "failed_logs_query": window.logs_query(status="error"),
        "recent": list(logs.order_by("-timestamp", "-id")[:10]),
        "spend": spend(timezone.now(), recent),
        # Read once: the page's served origin is checked against it (views.page).
        "dashboard_settings": thresholds,
    }


FORECAST_METHODS = {
    forecast.METHOD_RHYTHM: "from the same hours of the last {weeks} weeks, scaled ×{scale:.2f} to this month so far",
    forecast.METHOD_LINEAR: "a straight line from the 1st: no earlier weeks recorded yet",
}


def spend(now: datetime, recent: metrics.RecentRows | None = None) -> dict[str, Any]:
    """The overview's spend cards, whatever the range shown: this month's forecast of all calls, and
    each budget's current period (spent, percent, forecast, its last warning). One reading of
    hourly costs for all of them (llm.forecast.read), not one per budget; `recent` as
    previous_figures takes it."""
    rows = list(Budget.objects.order_by("name"))
    scopes = [forecast.Scope(), *(budgets.scope_of(budget) for budget in rows)]
    reading = forecast.read(scopes, ["month", *(budget.period for budget in rows)], now, recent=recent)
    month = reading.forecast(forecast.Scope(), "month")
    statuses = budgets.statuses(rows, now, reading)
    warnings = budgets.latest_warnings([budget.pk for budget in rows])
    cards = []
    for budget in rows:
        status = statuses[budget.pk]
        used = status.percent_used
        cards.append(
            {
                "budget": budget,
                "scope": budgets.describe_scope(budget),
                "spent": formatting.usd(float(status.spent_usd)),
                "amount": formatting.usd(float(budget.amount_usd)),
                "percent": formatting.percent(used),
                "meter": min(used, 100.0),
                "forecast": formatting.usd(status.forecast.forecast),
                "forecast_percent": formatting.percent(status.forecast_percent),
                # Red once spent, amber when the forecast goes over (or a warning percentage is reached).
                "level": "red" if used >= 100 else ("amber" if status.forecast_percent >= 100 else "ok"),
                "warning": warnings.get(budget.pk),
            }
        )
    method = FORECAST_METHODS[month.method].format(weeks=month.weeks, scale=month.scale or 1.0)
    return {
        "month": month,
        "month_forecast": formatting.usd(month.forecast),
        "month_spent": formatting.usd(month.spent_so_far),
        "month_range": f"{formatting.usd(month.low)} to {formatting.usd(month.high)}",
        "month_method": method,
        "budgets": cards,
    }


def rated_feedback(window: TimeRange) -> QuerySet[UserFeedback]:
    """Ratings of the calls of the window. Without filters beyond the model, from the rated call's
    time and model copied onto each rating (its own indexes: no join to the calls, whose lookups
    cost seconds at 10 million calls) rather than `IN (the window's calls)`."""
    if any(window.extra.values()):
        return UserFeedback.objects.filter(request__in=window.logs().values("id"))
    return UserFeedback.objects.of_calls(window.start, window.end, window.model)


def feedback(window: TimeRange) -> dict[str, Any]:
    """The feedback page's figures: the summary, per day, and the latest comments."""
    rated = rated_feedback(window)
    summary, by_day = metrics.feedback_figures(rated)
    comments = rated.exclude(comment="").select_related("request").order_by("-created_at")[:20]
    return {"summary": summary, "by_day": by_day, "comments": comments}


NO_SPEED = {"output_tokens_per_second": None, "queue_time_ms": None}


def analytics(window: TimeRange, chosen: metrics.Selection | None = None) -> dict[str, Any]:
    chosen = chosen or window.selection()
    models = metrics.model_usage(chosen)
    speeds = metrics.model_speeds(chosen)
    top_users = metrics.top_users(chosen, 10)
    return {
        "models": models,
        # The model table: each model's figures with its output speed and queue time, where known.
        "model_rows": [{**NO_SPEED, **row, **speeds.get(row["model"], {})} for row in models],
        "top_by_cost": top_users["cost"],
        "top_by_requests": top_users["requests"],
        "daily": metrics.daily_stats(chosen, start=window.start, end=window.end),
        "percentiles": metrics.percentiles_kind(chosen),
        "min_calls_for_percentile": metrics.MIN_CALLS_FOR_PERCENTILE,
    }


def chart_series(rows: list[dict[str, Any]], *keys: str) -> dict[str, list[Any]]:
    """Columns for Chart.js: {"labels": [...], key: [...]}; no figure is computed in JavaScript.

    Rows over time also carry `partial` (drawn hollow and dashed, "(partial)" in the label) and
    `requests` (the sample count a tooltip shows), whether or not the chart draws them.
    """
    label_key = "period" if rows and "period" in rows[0] else ("date" if rows and "date" in rows[0] else "model")
    if label_key != "model":
        keys = tuple(dict.fromkeys([*keys, "requests", "partial"]))
    return {"labels": [row.get(label_key) for row in rows], **{key: [row.get(key) for row in rows] for key in keys}}


# Breakdowns, sessions and users (issue 18).

# The filters the analytics, sessions and user pages take besides the range and the model.
PAGE_FILTERS = ("user_id", "session_id", "source", "error_type", "tag")
BREAKDOWN_LABELS = {
    "model": "Model",
    "user": "User",
    "session": "Session",
    "source": "Source",
    "error_type": "Error type",
}
BREAKDOWN_ORDER_LABELS = {
    "cost": "Cost",
    "requests": "Requests",
    "tokens": "Tokens",
    "errors": "Errors",
    "p95": "p95 latency",
}
# Which figure a breakdown chart draws for each order, and how its axis is labelled.
BREAKDOWN_CHART = {
    "cost": ("cost", "Cost (USD)"),
    "requests": ("requests", "Requests"),
    "tokens": ("total_tokens", "Tokens"),
    "errors": ("errors", "Errors"),
    "p95": ("p95_latency_ms", "p95 latency (ms)"),
}
BREAKDOWN_ROWS = 10
SESSIONS_PER_PAGE = 50
SESSION_ORDER_LABELS = {"last_call": "Latest first", "cost": "Costliest first"}


def breakdown_choice(params: Any, window: TimeRange) -> tuple[str, str]:
    """The analytics page's `by` and `order_by` (model and cost by default); a bad one is shown
    in the filter bar and replaced by the default. Kept in the page's links."""
    by = params.get("by") or "model"
    tag_key = by.removeprefix(metrics.TAG_BREAKDOWN_PREFIX)
    is_tag = by.startswith(metrics.TAG_BREAKDOWN_PREFIX) and 0 < len(tag_key) <= TAG_KEY_MAX_CHARS
    if by not in metrics.BREAKDOWN_FIELDS and not (is_tag and not text_problem(tag_key)):
        window.errors["by"] = [f"Choose one of {', '.join(BREAKDOWN_LABELS)} or tag:<key>."]
        by = "model"
    order_by = params.get("order_by") or "cost"
    if order_by not in metrics.BREAKDOWN_ORDERS:
        window.errors["order_by"] = [f"Choose one of {', '.join(metrics.BREAKDOWN_ORDERS)}."]
        order_by = "cost"
    window.options |= {"by": by if by != "model" else "", "order_by": order_by if order_by != "cost" else ""}
    return by, order_by


def analytics_shared(window: TimeRange) -> metrics.Selection:
    """The analytics page's window read once by day: the model table, the days and the breakdown
    by model derive from that one reading."""
    return metrics.share(window.selection(), "day")


def breakdown(window: TimeRange, by: str, order_by: str, chosen: metrics.Selection | None = None) -> dict[str, Any]:
    """The analytics page's breakdown: the groups, the `by` choices (the tag keys seen among the
    window's latest tagged calls included: "cost by feature" in two clicks) and the chart."""
    chosen = chosen or window.selection()
    answer = metrics.breakdown(chosen, by, order_by, BREAKDOWN_ROWS)
    choices = {**BREAKDOWN_LABELS}
    for key in metrics.breakdown_tag_keys(chosen):
        choices[f"{metrics.TAG_BREAKDOWN_PREFIX}{key}"] = f"Tag: {key}"
    choices.setdefault(by, by)
    figure, label = BREAKDOWN_CHART[order_by]
    rows = [*answer["groups"], *([answer["other"]] if answer["other"] else [])]
    chart = {
        "labels": [row["key"] if row["key"] is not None else f"Other ({row['groups']})" for row in rows],
        "values": [row[figure] for row in rows],
        "label": label,
    }
    return {
        "breakdown": answer,
        "breakdown_choices": choices,
        "breakdown_orders": BREAKDOWN_ORDER_LABELS,
        "breakdown_chart": chart,
    }


def sessions_page(window: TimeRange, order_by: str, page_number: Any) -> Any:
    """A page of the sessions list (llm.metrics.sessions over the window and filters)."""
    rows = metrics.sessions(window.selection(), order_by)
    return EstimatingPaginator(rows, SESSIONS_PER_PAGE).get_page(page_number)


def session(session_id: str, with_text: bool = True) -> dict[str, Any]:
    """A session read as a conversation: its calls (turns) in time order with the running cost,
    and its totals, summed by the database (without `with_text`: no prompt or answer read)."""
    calls, truncated = metrics.session_calls(session_id, with_text=with_text)
    totals = LLMRequestLog.objects.filter(session_id=session_id).aggregate(
        first_call=Min("timestamp"),
        last_call=Max("timestamp"),
        calls=Count("id"),
        errors=Count("id", filter=LLMRequestLog.FAILED),
        total_tokens=Sum("total_tokens"),
        cost=Sum("cost_estimate"),
    )
    users = list(
        LLMRequestLog.objects.filter(session_id=session_id)
        .exclude(user_id="")
        .values_list("user_id", flat=True)
        .distinct()
        .order_by("user_id")[:20]
    )
    return {"calls": calls, "truncated": truncated, "totals": totals, "users": users}


def user_page(window: TimeRange) -> dict[str, Any]:
    """One user's figures over the range (the user is in window.extra["user_id"])."""
    activity = metrics.user_activity(window.selection(), window.group_by)
    activity["series"] = _filled(activity["series"], window)
    activity["charts"] = {
        "user_usage": chart_series(activity["series"], "requests", "errors", "cost", "total_tokens"),
        "user_models": chart_series(activity["models"], "requests", "cost"),
    }
    return activity
