"""Alert rules: evaluate a rule over its window, record the state change, deliver the notice.

Three separate steps, so that two overlapping `check_alerts` runs cannot send one alert twice:
1. `evaluate(rule, now)` reads aggregates from the database and returns a verdict; it writes
   nothing.
2. `AlertRule.record_check(...)` writes the outcome; a state change (fired, a reminder after the
   cooldown, resolved) becomes one `AlertLog` row, won by a conditional UPDATE.
3. `deliver_pending(...)` claims each undelivered `AlertLog` with a conditional UPDATE and only
   then sends it through every configured channel (`llm/notifiers.py`), outside any transaction,
   recording each channel's result on the row (or "not sent: no channel" when the rule reaches
   no one: it is still evaluated and recorded, and nothing is logged as an error).
`check_rules` chains the three for some rules: `check_alerts` runs it over the active rules, and
"check now" (alerts page, API) over one, so both follow the same cooldown and claim.
`send_test_notification` sends a notice marked as a test through the same channels and writes
nothing.

What each metric means (the README says the same):
- `error_rate`: failed requests as a percent of all requests in the window; fires above the
  threshold.
- `latency_p95`: 95th percentile of `latency_ms` in the window (linear interpolation between
  closest ranks, like PostgreSQL `percentile_cont` and NumPy); fires above the threshold.
- `token_spike`: total tokens in the window divided by total tokens in the window of the same
  length just before it; fires above the threshold. With no tokens in the previous window there
  is no baseline, so there is no verdict (a first burst after a silent night is not a spike; the
  `cost` and `no_traffic` rules watch those cases).
- `cost`: USD spent in the window; fires above the threshold.
- `no_traffic`: number of requests in the window; fires when it is *below* the threshold (the
  dead-man switch).
`error_rate` and `latency_p95` give no verdict on fewer than `MIN_REQUESTS_TO_JUDGE` requests:
one failure out of two calls is not a 50% outage. A rule without a verdict keeps its state (it
neither fires nor resolves) until there is enough traffic to judge again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q, Sum

from llm import notifiers
from llm.metrics import Percentile
from llm.models import AlertLog, AlertRule, LLMRequestLog, describe_notifications

logger = logging.getLogger(__name__)

# Below this many requests in the window, error_rate and latency_p95 give no verdict.
MIN_REQUESTS_TO_JUDGE = 10

Metric = AlertRule.MetricType

# The rules `check_alerts --create-defaults` creates, by name (so running it twice adds nothing).
DEFAULT_RULES: list[dict[str, Any]] = [
    {
        "name": "Error rate above 5%",
        "metric_type": Metric.ERROR_RATE,
        "threshold": 5,
        "time_window_minutes": 15,
        "cooldown_minutes": 60,
        "description": "More than one call in twenty failed over the last 15 minutes.",
    },
    {
        "name": "p95 latency above 10 s",
        "metric_type": Metric.LATENCY_P95,
        "threshold": 10_000,
        "time_window_minutes": 15,
        "cooldown_minutes": 60,
        "description": "The slowest 5% of calls took longer than ten seconds over the last 15 minutes.",
    },
    {
        "name": "Token usage tripled",
        "metric_type": Metric.TOKEN_SPIKE,
        "threshold": 3,
        "time_window_minutes": 60,
        "cooldown_minutes": 180,
        "description": "The last hour used more than three times the tokens of the hour before.",
    },
    {
        "name": "Spend above $10 per hour",
        "metric_type": Metric.COST,
        "threshold": 10,
        "time_window_minutes": 60,
        "cooldown_minutes": 180,
        "description": "More than 10 USD of LLM calls in the last hour.",
    },
    {
        "name": "No traffic for an hour",
        "metric_type": Metric.NO_TRAFFIC,
        "threshold": 1,
        "time_window_minutes": 60,
        "cooldown_minutes": 240,
        "description": "Not a single call logged in the last hour: is the application down?",
    },
]


@dataclass(frozen=True)
class Evaluation:
    rule: AlertRule
    value: float | None
    # True: over threshold; False: fine; None: not enough data to judge (see `note`).
    breached: bool | None
    requests: int
    window_start: datetime
    window_end: datetime
    note: str = ""

    @property
    def state(self) -> str:
        return {True: "firing", False: "ok", None: "no verdict"}[self.breached]

    @property
    def window_minutes(self) -> int:
        return round((self.window_end - self.window_start).total_seconds() / 60)

    def describe(self) -> str:
        """One sentence for the notice and the command's output."""
        rule = self.rule
        scope = f" for {rule.model_name}" if rule.model_name else ""
        comparison = "below" if rule.metric_type == Metric.NO_TRAFFIC else "above"
        if self.value is None:
            measured = f"{rule.get_metric_type_display()}: no value"
        else:
            measured = f"{metric_label(rule.metric_type)} {format_value(rule.metric_type, self.value)}"
        # no_traffic's value is already the number of requests.
        requests = "" if rule.metric_type == Metric.NO_TRAFFIC else f"; {self.requests} requests"
        text = (
            f"{measured}{scope} over the last {self.window_minutes} min "
            f"(fires {comparison} {format_value(rule.metric_type, rule.threshold)}{requests})"
        )
        return f"{text}; {self.note}" if self.note else text


def metric_label(metric_type: str) -> str:
    return {
        Metric.ERROR_RATE: "error rate",
        Metric.LATENCY_P95: "p95 latency",
        Metric.TOKEN_SPIKE: "tokens vs previous window",
        Metric.COST: "cost",
        Metric.NO_TRAFFIC: "requests",
    }.get(metric_type, metric_type)


def format_value(metric_type: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if metric_type == Metric.ERROR_RATE:
        return f"{value:.2f}%"
    if metric_type == Metric.LATENCY_P95:
        return f"{value:.0f} ms"
    if metric_type == Metric.TOKEN_SPIKE:
        return f"{value:.2f}x"
    if metric_type == Metric.COST:
        return f"${value:.4f}"
    # Request counts (no_traffic): whole numbers in full, never 1.2e+06.
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def evaluate(rule: AlertRule, now: datetime, window_minutes: int | None = None) -> Evaluation:
    """Measure the rule's metric over [now - window, now) and compare it with the threshold."""
    minutes = window_minutes or rule.time_window_minutes
    end = now
    start = end - timedelta(minutes=minutes)
    logs = LLMRequestLog.objects.for_model(rule.model_name)
    window = logs.in_window(start, end)
    value: float | None
    note = ""

    if rule.metric_type == Metric.TOKEN_SPIKE:
        # Both windows in one query.
        previous_start = start - timedelta(minutes=minutes)
        in_current = Q(timestamp__gte=start)
        totals = logs.in_window(previous_start, end).aggregate(
            requests=Count("id", filter=in_current),
            current=Sum("total_tokens", filter=in_current),
            previous=Sum("total_tokens", filter=~in_current),
        )
        requests = totals["requests"]
        current, previous = totals["current"] or 0, totals["previous"] or 0
        if previous == 0:
            value, note = None, "no tokens in the previous window to compare with"
        else:
            value = current / previous
    elif rule.metric_type == Metric.ERROR_RATE:
        counts = window.aggregate(requests=Count("id"), failed=Count("id", filter=Q(status=LLMRequestLog.Status.ERROR)))
        requests = counts["requests"]
        value = 100 * counts["failed"] / requests if requests else None
    elif rule.metric_type == Metric.LATENCY_P95:
        figures = window.aggregate(requests=Count("id"), p95=Percentile("latency_ms", 0.95))
        requests, value = figures["requests"], figures["p95"]
    elif rule.metric_type == Metric.COST:
        totals = window.aggregate(requests=Count("id"), cost=Sum("cost_estimate"))
        requests = totals["requests"]
        value = float(totals["cost"] or 0)
    elif rule.metric_type == Metric.NO_TRAFFIC:
        requests = window.count()
        value = float(requests)
    else:
        raise ValueError(f"Unknown metric type {rule.metric_type!r} on rule {rule.pk}")

    needs_traffic = rule.metric_type in (Metric.ERROR_RATE, Metric.LATENCY_P95)
    if needs_traffic and requests < MIN_REQUESTS_TO_JUDGE:
        breached = None
        note = f"too little traffic to judge: fewer than {MIN_REQUESTS_TO_JUDGE} requests"
    elif value is None:
        breached = None
    elif rule.metric_type == Metric.NO_TRAFFIC:
        breached = value < rule.threshold
    else:
        breached = value > rule.threshold
    return Evaluation(rule, value, breached, requests, start, end, note)


def planned_notice(evaluation: Evaluation, now: datetime) -> str | None:
    """What `record_check` would write for this evaluation, without writing it (for --dry-run)."""
    rule = evaluation.rule
    if evaluation.breached and not rule.is_firing:
        return AlertLog.Kind.FIRED
    if evaluation.breached and rule.is_firing:
        due = rule.last_notified_at is None or rule.last_notified_at < now - timedelta(minutes=rule.cooldown_minutes)
        return AlertLog.Kind.FIRED if due else None
    if evaluation.breached is False and rule.is_firing:
        return AlertLog.Kind.RESOLVED
    return None


@dataclass
class CheckOutcome:
    evaluation: Evaluation
    # The notice this run wrote (or, on a dry run, would write: "fired" / "resolved").
    notice: str | None = None
    alert: AlertLog | None = None

    def summary(self, dry_run: bool = False) -> str:
        """One line: the rule, its value against the threshold, the verdict and the notice."""
        evaluation = self.evaluation
        rule = evaluation.rule
        metric = rule.metric_type
        line = (
            f"#{rule.pk} {rule.name} [{metric}]: value {format_value(metric, evaluation.value)}, "
            f"threshold {format_value(metric, rule.threshold)}, {evaluation.requests} requests "
            f"in {evaluation.window_minutes} min: {evaluation.state.upper()}"
        )
        if evaluation.note:
            line += f" ({evaluation.note})"
        if self.notice:
            verb = "would notify" if dry_run else "notice"
            line += f"; {verb}: {self.notice}"
        return line


def delivery_summary(alert: AlertLog) -> str:
    return f"alert #{alert.pk} ({alert.kind}, {alert.alert_rule.name}): {alert.delivery_summary}"


@dataclass
class CheckRun:
    """What one pass over some rules did: a verdict per rule, the rules that broke, the sends."""

    outcomes: list[CheckOutcome] = field(default_factory=list)
    # (rule, "ExceptionName: message") for each rule that could not be evaluated.
    failures: list[tuple[AlertRule, str]] = field(default_factory=list)
    deliveries: list[AlertLog] = field(default_factory=list)


def check_rule(
    rule: AlertRule, now: datetime, *, window_minutes: int | None = None, dry_run: bool = False
) -> CheckOutcome:
    """Evaluate one rule and, unless dry_run, record its new state (no sending here)."""
    evaluation = evaluate(rule, now, window_minutes)
    if dry_run:
        return CheckOutcome(evaluation, notice=planned_notice(evaluation, now))
    alert = rule.record_check(
        value=evaluation.value,
        breached=evaluation.breached,
        window_start=evaluation.window_start,
        window_end=evaluation.window_end,
        message=evaluation.describe(),
        now=now,
    )
    return CheckOutcome(evaluation, notice=alert.kind if alert else None, alert=alert)


def deliver(alert: AlertLog, now: datetime, base: str | None = None) -> bool:
    """Send one notice through every channel, if this run wins the claim; answers whether it did.

    No transaction is open here: the claim is its own UPDATE, and the SMTP and HTTP calls that
    follow hold no lock. A crash after the claim loses the notice rather than sending it twice.
    A rule with no channel gets its notice claimed and marked "not sent: no channel".
    `base` starts the links in the notice (`notifiers.base_url()` when None).
    """
    if not alert.claim_delivery(now):
        return False
    alert.record_delivery(notifiers.notify_all(alert, base))
    return True


def deliver_pending(rules: Iterable[AlertRule], now: datetime, base: str | None = None) -> list[AlertLog]:
    """Deliver every unclaimed notice of these rules (also ones an interrupted run left behind)."""
    pending = list(
        AlertLog.objects.undelivered()
        .filter(alert_rule__in=list(rules))
        .select_related("alert_rule")
        .order_by("triggered_at", "id")
    )
    if pending and base is None:
        base = notifiers.base_url()  # once per run, not once per notice
    return [alert for alert in pending if deliver(alert, now, base)]


def check_rules(
    rules: Iterable[AlertRule],
    now: datetime,
    *,
    window_minutes: int | None = None,
    dry_run: bool = False,
    base: str | None = None,
) -> CheckRun:
    """One check_alerts pass: evaluate and record every rule, then deliver their notices.

    The command runs it over all active rules (or `--rule ID`); "check now" on the alerts page
    and the API run it over one rule, so both follow the same cooldown and the same claim.
    """
    rules = list(rules)
    run = CheckRun()
    for rule in rules:
        try:
            run.outcomes.append(check_rule(rule, now, window_minutes=window_minutes, dry_run=dry_run))
        except Exception as exc:  # noqa: BLE001 - one broken rule must not keep the others from being checked
            logger.exception("Could not evaluate alert rule %s", rule.pk)
            run.failures.append((rule, f"{type(exc).__name__}: {exc}"))
    if not dry_run:
        # After every state is written: sending may take a while and must not delay evaluation.
        run.deliveries = deliver_pending(rules, now, base)
    return run


class NoChannel(Exception):
    """The rule reaches no one: no e-mail recipient and no webhook, its own or the defaults."""


NO_CHANNEL_HELP = (
    "No channel: add e-mail recipients or a webhook in admin (or set ALERT_EMAIL_RECIPIENTS / ALERT_WEBHOOK_URL)"
)


def build_test_notice(rule: AlertRule, now: datetime) -> AlertLog:
    """An unsaved notice that says it is a test, shaped like a real one for this rule."""
    return AlertLog(
        alert_rule=rule,
        kind=AlertLog.Kind.TEST,
        triggered_at=now,
        message="Test notification, sent on request: nothing is firing. Real notices of this rule will come here too.",
        metric_value=rule.last_value,
        threshold=rule.threshold,
        window_start=now - timedelta(minutes=rule.time_window_minutes),
        window_end=now,
    )


@dataclass(frozen=True)
class TestSendResult:
    # {"email": {"status": "sent", ...}, "webhook": {"status": "error", "error": ...}}
    notifications: dict[str, dict[str, Any]]

    @property
    def all_sent(self) -> bool:
        return all(result["status"] == "sent" for result in self.notifications.values())

    @property
    def summary(self) -> str:
        return describe_notifications(self.notifications)


def send_test_notification(rule: AlertRule, now: datetime, base: str | None = None) -> TestSendResult:
    """Send a test notice through the rule's channels; answers what happened to each.

    Raises NoChannel when there is none. Writes nothing: no AlertLog, no rule state, no cooldown.
    It runs in the request of the user who asked for it (the one exception to "never send from a
    request handler"); the SMTP timeout and the webhook's timeout and bounded tries keep it short.
    """
    if not notifiers.enabled_notifiers(rule):
        raise NoChannel(NO_CHANNEL_HELP)
    return TestSendResult(notifiers.notify_all(build_test_notice(rule, now), base))


def create_default_rules() -> list[AlertRule]:
    """Create the default rules that do not exist yet (by name); answers the ones created."""
    created = []
    for spec in DEFAULT_RULES:
        rule, was_created = AlertRule.objects.get_or_create(name=spec["name"], defaults=spec)
        if was_created:
            created.append(rule)
    return created
