"""Alert rules: evaluate a rule over its window, record the state change, deliver the notice.

Three separate steps, so that two overlapping `check_alerts` runs cannot send one alert twice:
1. `evaluate(rule, now)` measures the rule's metric (the MEASURES table: a figure of
   llm.metrics over the rule's window) and returns a verdict; it writes nothing. `measure_rules`
   measures the windows of many rules in one query, so checking ten rules costs one query.
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from llm import formatting, metrics, notifiers
from llm.models import AlertLog, AlertRule, describe_notifications

logger = logging.getLogger(__name__)

# Below this many requests in the window, error_rate and latency_p95 give no verdict.
MIN_REQUESTS_TO_JUDGE = 10

MetricType = AlertRule.MetricType

# The rules `check_alerts --create-defaults` creates, by name (so running it twice adds nothing).
DEFAULT_RULES: list[dict[str, Any]] = [
    {
        "name": "Error rate above 5%",
        "metric_type": MetricType.ERROR_RATE,
        "threshold": 5,
        "time_window_minutes": 15,
        "cooldown_minutes": 60,
        "description": "More than one call in twenty failed over the last 15 minutes.",
    },
    {
        "name": "p95 latency above 10 s",
        "metric_type": MetricType.LATENCY_P95,
        "threshold": 10_000,
        "time_window_minutes": 15,
        "cooldown_minutes": 60,
        "description": "The slowest 5% of calls took longer than ten seconds over the last 15 minutes.",
    },
    {
        "name": "Token usage tripled",
        "metric_type": MetricType.TOKEN_SPIKE,
        "threshold": 3,
        "time_window_minutes": 60,
        "cooldown_minutes": 180,
        "description": "The last hour used more than three times the tokens of the hour before.",
    },
    {
        "name": "Spend above $10 per hour",
        "metric_type": MetricType.COST,
        "threshold": 10,
        "time_window_minutes": 60,
        "cooldown_minutes": 180,
        "description": "More than 10 USD of LLM calls in the last hour.",
    },
    {
        "name": "No traffic for an hour",
        "metric_type": MetricType.NO_TRAFFIC,
        "threshold": 1,
        "time_window_minutes": 60,
        "cooldown_minutes": 240,
        "description": "Not a single call logged in the last hour: is the application down?",
    },
]


@dataclass(frozen=True)
class Measure:
    """What a metric type measures (a figure of llm.metrics over the rule's window) and how it is judged."""

    label: str
    # (the window's totals, the previous window's or None) -> the value compared with the threshold.
    value: Callable[[metrics.WindowTotals, metrics.WindowTotals | None], float | None]
    fires_below: bool = False
    # No verdict on fewer than MIN_REQUESTS_TO_JUDGE requests.
    needs_traffic: bool = False
    compares_previous: bool = False
    # Also measure the window's p95 latency (a sort of its rows: only for the rules that use it).
    latency: bool = False
    # Why there is no value when `value` answers None.
    no_value_note: str = ""


# Alert evaluation is this table: each metric type is a figure of llm.metrics (the same the API
# and the pages answer) over the rule's window.
MEASURES: dict[str, Measure] = {
    MetricType.ERROR_RATE: Measure("error rate", lambda window, _: window.error_rate, needs_traffic=True),
    MetricType.LATENCY_P95: Measure(
        "p95 latency", lambda window, _: window.p95_latency_ms, needs_traffic=True, latency=True
    ),
    MetricType.TOKEN_SPIKE: Measure(
        "tokens vs previous window",
        lambda window, previous: metrics.growth(window.total_tokens, previous.total_tokens),
        compares_previous=True,
        no_value_note="no tokens in the previous window to compare with",
    ),
    MetricType.COST: Measure("cost", lambda window, _: window.cost),
    MetricType.NO_TRAFFIC: Measure("requests", lambda window, _: float(window.requests), fires_below=True),
}


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
        measure = MEASURES.get(rule.metric_type)
        fires_below = bool(measure and measure.fires_below)
        comparison = "below" if fires_below else "above"
        if measure is None or self.value is None:
            measured = f"{rule.get_metric_type_display()}: no value"
        else:
            measured = f"{measure.label} {formatting.rule_value(rule.metric_type, self.value)}"
        # no_traffic's value is already the number of requests.
        requests = "" if fires_below else f"; {self.requests} requests"
        text = (
            f"{measured}{scope} over the last {self.window_minutes} min "
            f"(fires {comparison} {formatting.rule_value(rule.metric_type, rule.threshold)}{requests})"
        )
        return f"{text}; {self.note}" if self.note else text


def measure_of(rule: AlertRule) -> Measure:
    try:
        return MEASURES[rule.metric_type]
    except KeyError:
        raise ValueError(f"Unknown metric type {rule.metric_type!r} on rule {rule.pk}") from None


def windows_of(
    rule: AlertRule, now: datetime, window_minutes: int | None = None
) -> tuple[metrics.Window, metrics.Window | None]:
    """The window a rule measures, [now - its minutes, now), and the one just before it if it compares."""
    measure = measure_of(rule)
    length = timedelta(minutes=window_minutes or rule.time_window_minutes)
    window = metrics.Window(now - length, now, rule.model_name, latency=measure.latency)
    if not measure.compares_previous:
        return window, None
    return window, metrics.Window(now - 2 * length, now - length, rule.model_name)


def measure_rules(
    rules: Iterable[AlertRule], now: datetime, window_minutes: int | None = None
) -> dict[metrics.Window, metrics.WindowTotals]:
    """The totals of every window these rules look at, in one query (rules of unknown type left out)."""
    windows = [
        window
        for rule in rules
        if rule.metric_type in MEASURES
        for window in windows_of(rule, now, window_minutes)
        if window is not None
    ]
    return metrics.window_totals(windows)


def evaluate(
    rule: AlertRule,
    now: datetime,
    window_minutes: int | None = None,
    measured: Mapping[metrics.Window, metrics.WindowTotals] | None = None,
) -> Evaluation:
    """Measure the rule's metric over [now - window, now) and compare it with the threshold.

    `measured` is measure_rules' answer for several rules at once; without it, this rule's windows
    are measured now. Raises ValueError for a metric type this version does not know.
    """
    measure = measure_of(rule)
    window, previous = windows_of(rule, now, window_minutes)
    if measured is None:
        measured = metrics.window_totals([window] if previous is None else [window, previous])
    totals = measured[window]
    value = measure.value(totals, measured.get(previous))
    note = measure.no_value_note if value is None else ""
    if measure.needs_traffic and totals.requests < MIN_REQUESTS_TO_JUDGE:
        breached = None
        note = f"too little traffic to judge: fewer than {MIN_REQUESTS_TO_JUDGE} requests"
    elif value is None:
        breached = None
    else:
        breached = value < rule.threshold if measure.fires_below else value > rule.threshold
    return Evaluation(rule, value, breached, totals.requests, window.start, window.end, note)


def evaluate_rules(rules: Iterable[AlertRule], now: datetime) -> list[Evaluation]:
    """Every rule's verdict now, from one query, writing nothing (the alerts page). A rule of a
    metric type this version does not know has no verdict and says why."""
    rules = list(rules)
    measured = measure_rules(rules, now)
    evaluations = []
    for rule in rules:
        try:
            evaluations.append(evaluate(rule, now, measured=measured))
        except ValueError as error:
            evaluations.append(Evaluation(rule, None, None, 0, now, now, note=str(error)))
    return evaluations


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
            f"#{rule.pk} {rule.name} [{metric}]: value {formatting.rule_value(metric, evaluation.value)}, "
            f"threshold {formatting.rule_value(metric, rule.threshold)}, {evaluation.requests} requests "
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
    rule: AlertRule,
    now: datetime,
    *,
    window_minutes: int | None = None,
    dry_run: bool = False,
    measured: Mapping[metrics.Window, metrics.WindowTotals] | None = None,
) -> CheckOutcome:
    """Evaluate one rule and, unless dry_run, record its new state (no sending here)."""
    evaluation = evaluate(rule, now, window_minutes, measured)
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
    # A silenced rule's notice is settled as "muted": evaluated and recorded, not sent.
    silence = alert.alert_rule.active_silence(now)
    if silence is not None:
        alert.record_muted(silence)
        return True
    alert.record_delivery(notifiers.notify_all(alert, base))
    return True


def deliver_pending(rules: Iterable[AlertRule], now: datetime, base: str | None = None) -> list[AlertLog]:
    """Deliver every unclaimed notice of these rules (also ones an interrupted run left behind)."""
    pending = list(
        AlertLog.objects.undelivered()
        .filter(alert_rule__in=list(rules))
        .select_related("alert_rule")
        .prefetch_related("alert_rule__channels")
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
    measured = measure_rules(rules, now, window_minutes)
    for rule in rules:
        try:
            run.outcomes.append(
                check_rule(rule, now, window_minutes=window_minutes, dry_run=dry_run, measured=measured)
            )
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
