"""How a figure is written: one formatter per kind of figure.

The pages (the `metric_value` template tag), the alerts page, alert notices, check_alerts' output
and admin all write figures through these functions, so a latency reads "12,000 ms" and a cost
"$1,234.5000" wherever it appears. A missing figure (no calls, no value yet) is MISSING.
"""

from __future__ import annotations

from collections.abc import Callable

from llm.models import AlertRule

MISSING = "—"


def percent(value: float) -> str:
    return f"{value:.2f}%"


def milliseconds(value: float) -> str:
    return f"{value:,.0f} ms"


def usd(value: float) -> str:
    return f"${value:,.4f}"


def ratio(value: float) -> str:
    return f"{value:.2f}x"


def count(value: float) -> str:
    """Whole numbers in full with separators (never 1.2e+06); a fractional threshold keeps two places."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def tokens_per_second(value: float) -> str:
    return f"{value:,.1f} tokens/s"


# A provider's own timings (Groq, Cerebras), written like latencies.
PROVIDER_TIMINGS = ("queue_time_ms", "prompt_time_ms", "completion_time_ms")


def formatter(key: str) -> Callable[[float], str]:
    """The formatter of a figure by its key in llm.metrics' answers (error_rate, p95_latency_ms, cost…)."""
    if key in ("error_rate", "satisfaction_rate"):
        return percent
    if key.endswith(("latency_ms", "ttft_ms")) or key in PROVIDER_TIMINGS:
        return milliseconds
    if key == "output_tokens_per_second":
        return tokens_per_second
    if key in ("total_cost", "cost"):
        return usd
    if key == "token_ratio":
        return ratio
    return count


def figure(key: str, value: float | None) -> str:
    if value is None or value == "":
        return MISSING
    if not isinstance(value, int | float):
        raise TypeError(f"figure {key}: {value!r}")
    return formatter(key)(value)


Metric = AlertRule.MetricType

# The figure each alert metric measures: a rule's value and threshold are written like it.
RULE_FIGURES = {
    Metric.ERROR_RATE: "error_rate",
    Metric.LATENCY_P95: "p95_latency_ms",
    Metric.LATENCY_P99: "p99_latency_ms",
    Metric.TTFT_P95: "p95_ttft_ms",
    Metric.FEEDBACK: "satisfaction_rate",
    Metric.TOKEN_SPIKE: "token_ratio",
    Metric.COST: "cost",
    Metric.NO_TRAFFIC: "requests",
}


def rule_value(metric_type: str, value: float | None) -> str:
    """A rule's measured value or threshold; an unknown metric type is written as a plain number."""
    return figure(RULE_FIGURES.get(metric_type, "requests"), value)
