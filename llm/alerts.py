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

from django.conf import settings

from llm import formatting, metrics, notifiers
from llm.models import AlertLevel, AlertLog, AlertRule, AlertState, describe_notifications

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
    # The percentile the value is (a key of metrics.ALERT_PERCENTILES: a sort of the window's rows,
    # so only for the rules that use it).
    percentile: str = ""
    # Counts ratings, not calls; no verdict on fewer than the rule's `min_ratings`.
    feedback: bool = False
    # Why there is no value when `value` answers None.
    no_value_note: str = ""

    @property
    def latency(self) -> bool:
        return self.percentile == "p95_latency_ms"


# Alert evaluation is this table: each metric type is a figure of llm.metrics (the same the API
# and the pages answer) over the rule's window.
MEASURES: dict[str, Measure] = {
    MetricType.ERROR_RATE: Measure("error rate", lambda window, _: window.error_rate, needs_traffic=True),
    MetricType.LATENCY_P95: Measure(
        "p95 latency", lambda window, _: window.p95_latency_ms, needs_traffic=True, percentile="p95_latency_ms"
    ),
    MetricType.LATENCY_P99: Measure(
        "p99 latency", lambda window, _: window.p99_latency_ms, needs_traffic=True, percentile="p99_latency_ms"
    ),
    MetricType.TTFT_P95: Measure(
        "p95 time to first token",
        lambda window, _: window.p95_ttft_ms,
        needs_traffic=True,
        percentile="p95_ttft_ms",
        no_value_note="no streamed call (no time to first token) in the window",
    ),
    MetricType.TOKEN_SPIKE: Measure(
        "tokens vs previous window",
        lambda window, previous: metrics.growth(window.total_tokens, previous.total_tokens),
        compares_previous=True,
        no_value_note="no tokens in the previous window to compare with",
    ),
    MetricType.COST: Measure("cost", lambda window, _: window.cost),
    MetricType.NO_TRAFFIC: Measure("requests", lambda window, _: float(window.requests), fires_below=True),
    MetricType.FEEDBACK: Measure(
        "satisfaction", lambda window, _: window.satisfaction, fires_below=True, feedback=True
    ),
}

# The metric types the first version had (one default rule each).
FIRST_TYPES = {
    MetricType.ERROR_RATE,
    MetricType.LATENCY_P95,
    MetricType.TOKEN_SPIKE,
    MetricType.COST,
    MetricType.NO_TRAFFIC,
}
ZERO = metrics.WindowTotals(0, 0, 0, 0)
LEVEL_ORDER = {AlertLevel.OK: 0, AlertLevel.WARNING: 1, AlertLevel.CRITICAL: 2}


@dataclass(frozen=True)
class Evaluation:
    rule: AlertRule
    value: float | None
    # True: over a threshold; False: fine; None: not enough data to judge (see `note`), after the
    # rule's no-data policy (a policy "ok" or "alert" turns None into a verdict).
    breached: bool | None
    requests: int
    window_start: datetime
    window_end: datetime
    note: str = ""
    # "critical", "warning", "" (ok), or None (no verdict).
    level: str | None = None
    # The group of a grouped rule (None: the rule as a whole).
    group_key: str | None = None

    def __post_init__(self) -> None:
        # Built from a verdict alone (breached True/False), the level is the critical one or ok.
        if self.level is None and self.breached is not None:
            object.__setattr__(self, "level", AlertLevel.CRITICAL if self.breached else AlertLevel.OK)

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
        if self.group_key is not None:
            scope += f" for {rule.group_by} {self.group_key}"
        if rule.error_type:
            scope += f" (failures of type {rule.error_type})"
        measure = MEASURES.get(rule.metric_type)
        fires_below = bool(measure and measure.fires_below)
        comparison = "below" if fires_below else "above"
        if measure is None or self.value is None:
            measured = f"{rule.get_metric_type_display()}: no value"
        else:
            measured = f"{measure.label} {formatting.rule_value(rule.metric_type, self.value)}"
        if self.level and rule.warning_threshold is not None:
            measured = f"{self.level.upper()}: {measured}"
        # no_traffic's value is already the number of requests.
        requests = "" if fires_below else f"; {self.requests} requests"
        thresholds = f"fires {comparison} {formatting.rule_value(rule.metric_type, rule.threshold)}"
        if rule.warning_threshold is not None:
            thresholds = (
                f"warning {comparison} {formatting.rule_value(rule.metric_type, rule.warning_threshold)}, "
                f"critical {comparison} {formatting.rule_value(rule.metric_type, rule.threshold)}"
            )
        text = f"{measured}{scope} over the last {self.window_minutes} min ({thresholds}{requests})"
        return f"{text}; {self.note}" if self.note else text


def measure_of(rule: AlertRule) -> Measure:
    try:
        return MEASURES[rule.metric_type]
    except KeyError:
        raise ValueError(f"Unknown metric type {rule.metric_type!r} on rule {rule.pk}") from None


def shares_query(rule: AlertRule) -> bool:
    """Whether the rule is measured with the others in one query (metrics.window_totals): every
    rule but a grouped one."""
    return not rule.group_by


def scope_of(rule: AlertRule) -> metrics.AlertScope:
    measure = measure_of(rule)
    return metrics.AlertScope(
        model=rule.model_name,
        group_by=rule.group_by,
        error_type=rule.error_type,
        percentile=measure.percentile,
        feedback=measure.feedback,
        sums=SUMS_NEEDED.get(rule.metric_type, frozenset()),
    )


# The sums (besides the number of calls) each metric type's value needs.
SUMS_NEEDED = {
    MetricType.ERROR_RATE: frozenset({"errors"}),
    MetricType.TOKEN_SPIKE: frozenset({"total_tokens"}),
    MetricType.COST: frozenset({"cost"}),
}


def windows_of(
    rule: AlertRule, now: datetime, window_minutes: int | None = None
) -> tuple[metrics.Window, metrics.Window | None]:
    """The window a rule measures, [now - its minutes, now), and the one just before it if it compares."""
    measure = measure_of(rule)
    length = timedelta(minutes=window_minutes or rule.time_window_minutes)
    window = metrics.Window(
        now - length,
        now,
        rule.model_name,
        latency=measure.latency,
        error_type=rule.error_type if rule.metric_type == MetricType.ERROR_RATE else "",
        percentile="" if measure.latency else measure.percentile,
        feedback=measure.feedback,
    )
    if not measure.compares_previous:
        return window, None
    return window, metrics.Window(now - 2 * length, now - length, rule.model_name)


def measure_rules(
    rules: Iterable[AlertRule], now: datetime, window_minutes: int | None = None
) -> dict[metrics.Window, metrics.WindowTotals]:
    """The totals of every window the shared-query rules look at, in one query (rules of unknown
    type, and those measured by their own query, left out)."""
    windows = [
        window
        for rule in rules
        if rule.metric_type in MEASURES and shares_query(rule)
        for window in windows_of(rule, now, window_minutes)
        if window is not None
    ]
    return metrics.window_totals(windows)


def apply_no_data(rule: AlertRule, level: str | None, note: str) -> tuple[str | None, str]:
    """A check without a verdict under the rule's no-data policy: keep (no verdict), ok, or alert."""
    if level is not None or rule.no_data == AlertRule.NoData.KEEP:
        return level, note
    if rule.no_data == AlertRule.NoData.OK:
        return AlertLevel.OK, f"{note}; no-data policy: counted as ok"
    return AlertLevel.CRITICAL, f"{note}; no-data policy: counted as firing"


def judge(
    rule: AlertRule, totals: metrics.WindowTotals, previous: metrics.WindowTotals | None
) -> tuple[float | None, str | None, str]:
    """The value of the rule's metric over a window, the level it reaches (None: no verdict) and
    why there is none. check_alerts and the preview both judge through here."""
    measure = measure_of(rule)
    value = measure.value(totals, previous)
    note = measure.no_value_note if value is None else ""
    if measure.needs_traffic and totals.requests < MIN_REQUESTS_TO_JUDGE:
        level = None
        note = f"too little traffic to judge: fewer than {MIN_REQUESTS_TO_JUDGE} requests"
    elif measure.feedback and totals.ratings < rule.min_ratings:
        level = None
        note = f"too few ratings to judge: {totals.ratings}, fewer than {rule.min_ratings}"
    elif value is None:
        level = None
    else:
        level = rule.level_of(value)
    return value, *apply_no_data(rule, level, note)


def evaluation_of(
    rule: AlertRule,
    totals: metrics.WindowTotals,
    previous: metrics.WindowTotals | None,
    window: tuple[datetime, datetime],
    group_key: str | None = None,
) -> Evaluation:
    value, level, note = judge(rule, totals, previous)
    breached = None if level is None else bool(level)
    return Evaluation(rule, value, breached, totals.requests, *window, note, level, group_key)


def evaluate(
    rule: AlertRule,
    now: datetime,
    window_minutes: int | None = None,
    measured: Mapping[metrics.Window, metrics.WindowTotals] | None = None,
) -> Evaluation:
    """Measure the rule's metric over [now - window, now) and compare it with the thresholds.

    `measured` is measure_rules' answer for several rules at once; without it, this rule's windows
    are measured now. A grouped rule answers one Evaluation that sums up its groups (the worst).
    Raises ValueError for a metric type this version does not know.
    """
    groups, dropped = evaluate_groups(rule, now, window_minutes, measured)
    if rule.group_by:
        return summarize(rule, groups, dropped, now, window_minutes)
    return groups[0]


def _group_states(rule: AlertRule) -> dict[str, AlertState]:
    return {state.group_key: state for state in AlertState.objects.filter(rule=rule)} if rule.pk else {}


def evaluate_groups(
    rule: AlertRule,
    now: datetime,
    window_minutes: int | None = None,
    measured: Mapping[metrics.Window, metrics.WindowTotals] | None = None,
    states: Mapping[str, Any] | None = None,
) -> tuple[list[Evaluation], list[str]]:
    """The rule's evaluation (one, group_key None) or, for a grouped rule, one per group of
    `groups_to_evaluate` (a group without calls in the window gets zero totals: no verdict for a
    rate, 0 for a cost or a count). Beyond the cap (ALERT_MAX_GROUPS), the groups left out are
    answered by key."""
    window, previous = windows_of(rule, now, window_minutes)
    span = (window.start, window.end)
    if shares_query(rule):
        if measured is None:
            measured = metrics.window_totals([window] if previous is None else [window, previous])
        return [evaluation_of(rule, measured[window], measured.get(previous), span)], []
    scope = scope_of(rule)
    found = metrics.group_totals(scope, window.start, window.end)
    before = metrics.group_totals(scope, previous.start, previous.end) if previous else {}
    if states is None:
        states = _group_states(rule)
    evaluations = [
        evaluation_of(rule, found.get(key, ZERO), before.get(key, ZERO) if previous else None, span, key)
        for key in groups_to_evaluate(rule, found, states)
    ]
    return cap_groups(rule, evaluations, {key for key, state in states.items() if state.is_firing})


def groups_to_evaluate(rule: AlertRule, found: Iterable[str], states: Mapping[str, Any]) -> list[str]:
    """The groups a grouped rule judges at one check: those with calls (ratings) in the window,
    those firing (so that they can resolve, or keep firing, under the no-data policy) and, for
    no_traffic, every group seen before (a group gone quiet is what it watches for). A group that
    went quiet without firing is simply not there: its state stays as it was."""
    keys = set(found)
    if rule.metric_type == MetricType.NO_TRAFFIC:
        keys.update(states)
    else:
        keys.update(key for key, state in states.items() if state.is_firing)
    return sorted(keys)


def cap_groups(rule: AlertRule, evaluations: list[Evaluation], firing: set[str]) -> tuple[list[Evaluation], list[str]]:
    """At most ALERT_MAX_GROUPS groups per rule and run: the firing ones first (so they can
    resolve), then the worst. Answers the kept evaluations and the keys left out."""
    limit = settings.ALERT_MAX_GROUPS
    if len(evaluations) <= limit:
        return evaluations, []
    sign = 1 if rule.fires_below else -1

    def priority(evaluation: Evaluation) -> tuple:
        value = evaluation.value
        return (
            evaluation.group_key not in firing,
            -LEVEL_ORDER.get(evaluation.level or "", 0),
            value is None,
            sign * value if value is not None else 0,
            evaluation.group_key,
        )

    ordered = sorted(evaluations, key=priority)
    return ordered[:limit], [evaluation.group_key for evaluation in ordered[limit:]]


def summarize(
    rule: AlertRule, groups: list[Evaluation], dropped: list[str], now: datetime, window_minutes: int | None
) -> Evaluation:
    """A grouped rule's evaluations as one: the worst group's value and level, and how many fire."""
    window, _previous = windows_of(rule, now, window_minutes)
    judged = [evaluation for evaluation in groups if evaluation.level is not None]
    sign = 1 if rule.fires_below else -1
    worst = min(
        judged,
        key=lambda e: (-LEVEL_ORDER[e.level], e.value is None, sign * e.value if e.value is not None else 0),
        default=None,
    )
    firing = [evaluation.group_key for evaluation in judged if evaluation.level]
    note = f"{len(firing)} of {len(groups)} {rule.group_by} groups over a threshold"
    if firing:
        note += ": " + ", ".join(firing[:5]) + (", …" if len(firing) > 5 else "")
    if worst is not None:
        note += f"; worst: {worst.group_key}"
    if dropped:
        note += f"; {len(dropped)} more groups not evaluated (ALERT_MAX_GROUPS {settings.ALERT_MAX_GROUPS})"
    return Evaluation(
        rule,
        worst.value if worst else None,
        None if worst is None else bool(worst.level),
        sum(evaluation.requests for evaluation in groups),
        window.start,
        window.end,
        note,
        worst.level if worst else None,
    )


def evaluate_rules(rules: Iterable[AlertRule], now: datetime) -> list[Evaluation]:
    """Every rule's verdict now, writing nothing (the alerts page): one query for the rules of the
    first types, one more for each other rule. A rule of a metric type this version does not know
    has no verdict and says why."""
    rules = list(rules)
    measured = measure_rules(rules, now)
    evaluations = []
    for rule in rules:
        try:
            evaluations.append(evaluate(rule, now, measured=measured))
        except ValueError as error:
            evaluations.append(Evaluation(rule, None, None, 0, now, now, note=str(error)))
    return evaluations


@dataclass(frozen=True)
class State:
    """The part of a rule's (or a group's) state that decides the next notice."""

    is_firing: bool = False
    level: str = AlertLevel.OK
    last_notified_at: datetime | None = None


def next_state(state: State, level: str | None, now: datetime, cooldown_minutes: int) -> tuple[State, str | None]:
    """One check's transition and the notice it writes (None: no notice).

    Over a level and not firing: fire. Warning to critical: fire again (an escalation), cooldown
    or not. Still over: a reminder once the cooldown has passed. Critical back to warning: the
    level changes, no notice. Back under (level ""): resolve. No verdict (None): nothing changes.
    AlertRule.record_check makes the same transitions with conditional UPDATEs; the preview
    replays them with this function (a test checks that both give the same notices).
    """
    if level:
        due = state.last_notified_at is not None and state.last_notified_at < now - timedelta(minutes=cooldown_minutes)
        escalated = level == AlertLevel.CRITICAL and state.level == AlertLevel.WARNING
        if not state.is_firing or escalated or (state.is_firing and due):
            return State(True, level, now), AlertLog.Kind.FIRED
        return State(True, level, state.last_notified_at), None
    if level == AlertLevel.OK and state.is_firing:
        return State(False, AlertLevel.OK, state.last_notified_at), AlertLog.Kind.RESOLVED
    return state, None


def state_of(holder: AlertRule | AlertState | None) -> State:
    if holder is None:
        return State()
    return State(holder.is_firing, holder.level or "", holder.last_notified_at)


def planned_notice(evaluation: Evaluation, now: datetime, holder: AlertRule | AlertState | None = None) -> str | None:
    """What `record_check` would write for this evaluation, without writing it (for --dry-run)."""
    holder = evaluation.rule if evaluation.group_key is None else holder
    return next_state(state_of(holder), evaluation.level, now, evaluation.rule.cooldown_minutes)[1]


@dataclass
class CheckOutcome:
    evaluation: Evaluation
    # The notice this run wrote (or, on a dry run, would write: "fired" / "resolved"); for a
    # grouped rule the first group's.
    notice: str | None = None
    alert: AlertLog | None = None
    # A grouped rule: every group's notice.
    alerts: list[AlertLog] = field(default_factory=list)
    notices: int = 0

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
        if evaluation.level and rule.warning_threshold is not None:
            line += f" ({evaluation.level})"
        if evaluation.note:
            line += f" ({evaluation.note})"
        if self.notice:
            verb = "would notify" if dry_run else "notice"
            line += f"; {verb}: {self.notice}"
            if self.notices > 1:
                line += f" and {self.notices - 1} more"
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
    """Evaluate one rule (each group of a grouped rule) and, unless dry_run, record its new state
    (no sending here)."""
    states = _group_states(rule) if rule.group_by else {}
    groups, dropped = evaluate_groups(rule, now, window_minutes, measured, states)
    if dropped:
        logger.warning("Alert rule %s: %d groups beyond ALERT_MAX_GROUPS not evaluated", rule.pk, len(dropped))
    evaluation = summarize(rule, groups, dropped, now, window_minutes) if rule.group_by else groups[0]
    if dry_run:
        planned = [planned_notice(group, now, states.get(group.group_key)) for group in groups]
        planned = [notice for notice in planned if notice]
        return CheckOutcome(evaluation, notice=planned[0] if planned else None, notices=len(planned))
    written = []
    for group in groups:
        alert = rule.record_check(
            value=group.value,
            level=group.level,
            window_start=group.window_start,
            window_end=group.window_end,
            message=group.describe(),
            now=now,
            group_key=group.group_key,
        )
        if alert is not None:
            written.append(alert)
    if rule.group_by:
        record_group_summary(rule, evaluation, now)
    first = written[0] if written else None
    return CheckOutcome(
        evaluation, notice=first.kind if first else None, alert=first, alerts=written, notices=len(written)
    )


def record_group_summary(rule: AlertRule, evaluation: Evaluation, now: datetime) -> None:
    """A grouped rule's own state says whether any group fires, and the worst level (the alerts
    page, the API and /metrics read it); its notices are the groups'."""
    firing = list(AlertState.objects.filter(rule=rule, is_firing=True).values_list("level", flat=True))
    level = max(firing, key=lambda name: LEVEL_ORDER.get(name, 2), default=AlertLevel.OK)
    AlertRule.objects.filter(pk=rule.pk).update(
        is_firing=bool(firing), level=level, last_value=evaluation.value, last_checked_at=now
    )
    rule.refresh_from_db(fields=["is_firing", "level", "last_value", "last_checked_at"])


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
