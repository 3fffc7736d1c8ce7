"""Replay an alert rule (saved or not) over past days, as check_alerts would have run it.

The replay evaluates the rule every `step` minutes over the period, at instants on the step's
grid (multiples of the step since 1970, UTC), and walks the same path as a real run: the window
figures become `metrics.WindowTotals`, `alerts.judge` gives the value and the level (with the
no-data policy), `alerts.cap_groups` keeps the same groups, and `alerts.next_state` makes the
transitions `AlertRule.record_check` makes with its conditional UPDATEs. Only the measuring
differs, for speed: instead of one query per instant (8,640 over 30 days at 5 minutes), the
figures come from `metrics.bucketed_figures`: the period's calls read once (on PostgreSQL one
record per call, packed in one bytea per group) and summed per time bucket and group by NumPy
(the bucket is the greatest common divisor of the step and the window, so every window is a run
of whole buckets). Counts, sums and rates are then exact (sums up to float rounding), and a
percentile is taken over exactly the window's rows, with the same linear interpolation as
percentile_cont (llm/order_statistics.py, every window of a group at once): the replay gives the
notices real runs at those instants would have written (tests/test_alert_preview.py checks it
against check_alerts under time-machine).

Each group is walked from one instant worth judging to the next: while it does not fire, the
instants its vector value puts certainly under the levels are skipped; while it fires, the spans
it certainly stays at its level without a notice (no reminder due) are too. What is skipped is
decided with a margin (MARGIN) around the thresholds, so the judge decides every close call.

Where the time goes (bench/alert_preview_bench.py, 1,000,000 calls, 30 days every 5 minutes):
mostly PostgreSQL packing the calls (about half a microsecond a value on the shared machine; by
model or user it reads the covering index in group order, migration 0026); the replay itself is
0.05 to 0.7 s of Python (a percentile by user: 500 groups by 8,640 windows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings

from llm import alerts, metrics
from llm.models import AlertLevel, AlertLog, AlertRule
from llm.order_statistics import sliding_percentiles

# At most this many instants per preview: 30 days every 5 minutes.
MAX_EVALUATIONS = 30 * 24 * 60 // 5
DAYS_MAX = 30


def grid_end(now: datetime, step_minutes: int) -> datetime:
    """The last instant of the step's grid at or before `now`."""
    step = step_minutes * 60
    return datetime.fromtimestamp(math.floor(now.timestamp() / step) * step, tz=UTC)


def instants(now: datetime, days: int, step_minutes: int) -> list[datetime]:
    """The instants of the replay, oldest first: the grid's over the last `days` days up to now."""
    end = grid_end(now, step_minutes)
    count = days * 24 * 60 // step_minutes
    step = timedelta(minutes=step_minutes)
    return [end - (count - 1 - index) * step for index in range(count)]


@dataclass
class GroupReplay:
    """One group's state through the replay (group_key None: an ungrouped rule)."""

    key: str | None
    state: alerts.State = field(default_factory=alerts.State)
    # Instant's index -> the value judged then.
    values: dict[int, float | None] = field(default_factory=dict)
    # The values of the instants the group was not judged at but had calls (drawn, not judged):
    # NaN elsewhere. None: only `values`.
    drawn: Any = None
    # How many notices the group had (the answer draws the groups with the most).
    notices: int = 0

    def array(self, count: int) -> np.ndarray:
        """Its value at each instant, NaN where it has none."""
        answer = np.full(count, np.nan) if self.drawn is None else self.drawn.copy()
        for index, value in self.values.items():
            answer[index] = np.nan if value is None else value
        return answer

    def series(self, count: int) -> list[float | None]:
        return [None if math.isnan(value) else value for value in self.array(count).tolist()]


@dataclass
class Replay:
    rule: AlertRule
    times: list[datetime]
    groups: dict[str | None, GroupReplay] = field(default_factory=dict)
    # {"time", "kind": "fire"|"resolve", "level", "group", "value"}
    events: list[dict[str, Any]] = field(default_factory=list)
    # Instants at which some group was over a level.
    breaches: int = 0
    # The most groups ALERT_MAX_GROUPS left out at one instant.
    groups_left_out: int = 0

    @property
    def notifications(self) -> int:
        """Every notice the cooldown let through: fires, reminders, escalations and resolves."""
        return len(self.events)


class Windows:
    """The figures of the rule's window (and the one before it) at each instant, per group, read
    from the bucketed figures of the whole period."""

    def __init__(self, rule: AlertRule, times: list[datetime]) -> None:
        self.rule = rule
        self.measure = alerts.measure_of(rule)
        self.window = rule.time_window_minutes
        step = int((times[1] - times[0]).total_seconds() // 60) if len(times) > 1 else self.window
        self.bucket = math.gcd(step, self.window)
        lookback = self.window * (2 if self.measure.compares_previous else 1)
        self.start = times[0] - timedelta(minutes=lookback)
        buckets = int((times[-1] - self.start).total_seconds() // 60) // self.bucket
        self.figures = metrics.bucketed_figures(
            alerts.scope_of(rule), self.start, buckets, timedelta(minutes=self.bucket)
        )
        self.span = self.window // self.bucket
        # Each instant in seconds since 1970 (whole minutes: exact as floats).
        self.seconds = np.array([moment.timestamp() for moment in times])
        self.keys = self.figures.keys
        self.codes = {key: code for code, key in enumerate(self.keys)}
        # Per group, the prefix sums of what makes a group present in a window: its calls, or
        # for a feedback rule its ratings (a group without any is not evaluated, as in group_totals).
        sums = self.figures.sums
        self.counts = sums["thumbs_up"] + sums["thumbs_down"] if self.measure.feedback else sums["requests"]

    def window_percentiles(self, code: int, highs: np.ndarray) -> np.ndarray:
        """The percentile of the group's window ending before each bucket of `highs` (NaN: no
        values), all at once (exact: llm/order_statistics.py)."""
        fraction = metrics.ALERT_PERCENTILES[self.measure.percentile][1]
        return sliding_percentiles(self.figures.values, self.figures.ends[code], self.span, highs, fraction)

    def index(self, moment: datetime) -> int:
        """The bucket the window ending at `moment` ends before."""
        return int((moment - self.start).total_seconds() // 60) // self.bucket

    def present(self, high: int) -> set[str]:
        """The groups with calls (or ratings) in the window ending before bucket `high`."""
        if not self.keys:
            return set()
        counted = self.counts[:, high] - self.counts[:, high - self.span]
        return {self.keys[index] for index in np.flatnonzero(counted > 0)}

    def totals(self, key: str, high: int) -> metrics.WindowTotals:
        code = self.codes.get(key)
        if code is None:
            return alerts.ZERO
        low = high - self.span
        requests, errors, tokens, cost, up, down = self.figures.totals(code, [low], [high])[0].tolist()
        extra = {}
        if self.measure.percentile:
            extra[self.measure.percentile] = self.percentile(code, low, high)
        return metrics.WindowTotals(
            int(round(requests)),
            int(round(errors)),
            tokens,
            cost,
            thumbs_up=int(round(up)),
            thumbs_down=int(round(down)),
            **extra,
        )

    def previous(self, key: str, high: int) -> metrics.WindowTotals | None:
        return self.totals(key, high - self.span) if self.measure.compares_previous else None

    def percentile(self, code: int, low: int, high: int) -> float | None:
        """One window's percentile by a sort of its values (the replay instant by instant; the
        replay by group takes every window's at once from `order`)."""
        ends = self.figures.ends
        chosen = self.figures.values[ends[code, low] : ends[code, high]]
        if not len(chosen):
            return None
        ordered = np.sort(chosen)
        position = (len(ordered) - 1) * metrics.ALERT_PERCENTILES[self.measure.percentile][1]
        lower = math.floor(position)
        upper = min(lower + 1, len(ordered) - 1)
        return float(ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower))


def replay(rule: AlertRule, now: datetime, days: int, step_minutes: int) -> Replay:
    """Replay `rule` at every instant of the last `days` days on the `step_minutes` grid: by
    groups (`replay_by_group`) unless the cap on groups could change a verdict, then instant by
    instant (`replay_stepwise`)."""
    times = instants(now, days, step_minutes)
    windows = Windows(rule, times)
    return replay_by_group(rule, times, windows) or replay_stepwise(rule, times, windows)


def replay_stepwise(rule: AlertRule, times: list[datetime], windows: Windows) -> Replay:
    """Every instant as a check_alerts run: every group judged, capped, then its transition."""
    result = Replay(rule, times)
    for index, moment in enumerate(times):
        high = windows.index(moment)
        keys: list[str | None] = [None]
        if rule.group_by:
            states = {key: group.state for key, group in result.groups.items() if key is not None}
            keys = list(alerts.groups_to_evaluate(rule, windows.present(high), states))
        span = (moment - timedelta(minutes=rule.time_window_minutes), moment)
        evaluations = [
            alerts.evaluation_of(rule, windows.totals(key or "", high), windows.previous(key or "", high), span, key)
            for key in keys
        ]
        if rule.group_by:
            firing = {key for key, group in result.groups.items() if group.state.is_firing}
            evaluations, dropped = alerts.cap_groups(rule, evaluations, firing)
            result.groups_left_out = max(result.groups_left_out, len(dropped))
        step(result, evaluations, index)
    return result


# A window's value from its figures, for all instants at once (columns of BUCKET_FIGURES), used
# to draw the series and to skip the instants at which the rule is certainly fine; the verdict at
# any other instant is `alerts.judge`'s, as in check_alerts.
def _ratio(part: np.ndarray, whole: np.ndarray, scale: float = 1.0) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(whole > 0, part * scale / np.where(whole > 0, whole, 1), np.nan)


VECTOR_VALUES: dict[str, Any] = {
    alerts.MetricType.ERROR_RATE: lambda now, before, pct: _ratio(now[:, 1], now[:, 0], 100.0),
    alerts.MetricType.LATENCY_P95: lambda now, before, pct: pct,
    alerts.MetricType.LATENCY_P99: lambda now, before, pct: pct,
    alerts.MetricType.TTFT_P95: lambda now, before, pct: pct,
    alerts.MetricType.TOKEN_SPIKE: lambda now, before, pct: _ratio(now[:, 2], before[:, 2]),
    alerts.MetricType.COST: lambda now, before, pct: now[:, 3],
    alerts.MetricType.NO_TRAFFIC: lambda now, before, pct: now[:, 0],
    alerts.MetricType.FEEDBACK: lambda now, before, pct: _ratio(now[:, 4], now[:, 4] + now[:, 5], 100.0),
}
# How far from a threshold a vector value must be to skip the instant without judging it (the
# vector and the judge may differ in the last bits of a float).
MARGIN = 1e-9


class GroupSeries:
    """One group's window figures at every instant, its values, and the instants worth judging."""

    def __init__(self, windows: Windows, key: str, highs: np.ndarray) -> None:
        rule, measure, span = windows.rule, windows.measure, windows.span
        code = windows.codes.get(key)
        lows = highs - span
        self.windows, self.key, self.code = windows, key, code
        if code is None:
            self.now = np.zeros((len(highs), len(metrics.BUCKET_FIGURES)))
        else:
            self.now = windows.figures.totals(code, lows, highs)
        self.before = None
        if measure.compares_previous:
            self.before = self.now * 0 if code is None else windows.figures.totals(code, lows - span, lows)
        self.pct = self._percentiles(highs) if measure.percentile else None
        self.values = VECTOR_VALUES[rule.metric_type](self.now, self.before, self.pct)
        counted = self.now[:, 4] + self.now[:, 5] if measure.feedback else self.now[:, 0]
        present = counted > 0
        if rule.metric_type == alerts.MetricType.NO_TRAFFIC and present.any():
            # Once seen, a group is judged at every instant (going quiet is what it watches for).
            present[np.argmax(present) :] = True
        # Judged when not firing (a firing group is judged at every instant).
        self.present = present if rule.group_by else np.ones(len(highs), dtype=bool)
        self.judged = self._judged(counted)
        self.candidates = np.flatnonzero(self.present & ~self._certainly_fine())
        self.seconds = windows.seconds
        self._unsteady: dict[str, np.ndarray] = {}
        self._verdicts: np.ndarray | None = None

    def _judged(self, counted: np.ndarray) -> np.ndarray:
        """Instants with a verdict before the no-data policy (enough calls or ratings, a value)."""
        rule, measure = self.windows.rule, self.windows.measure
        enough = np.ones(len(self.values), dtype=bool)
        if measure.needs_traffic:
            enough = self.now[:, 0] >= alerts.MIN_REQUESTS_TO_JUDGE
        elif measure.feedback:
            enough = counted >= rule.min_ratings
        return enough & ~np.isnan(self.values)

    def _percentiles(self, highs: np.ndarray) -> np.ndarray:
        """Every window's percentile at once (NaN for a window without values)."""
        if self.code is None or self.windows.figures.values is None:
            return np.full(len(highs), np.nan)
        return self.windows.window_percentiles(self.code, highs)

    def _certainly_fine(self) -> np.ndarray:
        """Instants at which the judge would certainly say ok (or no verdict, kept or ok)."""
        rule = self.windows.rule
        bound = rule.warning_threshold if rule.warning_threshold is not None else rule.threshold
        without_verdict = rule.no_data != AlertRule.NoData.ALERT
        return np.where(self.judged, self._short_of(bound), without_verdict)

    def _past(self, bound: float) -> np.ndarray:
        """Where the value is certainly past `bound` (the judge's float may differ in the last bits)."""
        with np.errstate(invalid="ignore"):
            if self.windows.rule.fires_below:
                return self.values < bound - MARGIN * (abs(bound) + 1)
            return self.values > bound + MARGIN * (abs(bound) + 1)

    def _short_of(self, bound: float) -> np.ndarray:
        """Where the value is certainly not past `bound`."""
        with np.errstate(invalid="ignore"):
            if self.windows.rule.fires_below:
                return self.values >= bound + MARGIN * (abs(bound) + 1)
            return self.values <= bound - MARGIN * (abs(bound) + 1)

    def steady_until(self, index: int, state: alerts.State, cooldown_minutes: int) -> int:
        """For a group firing at `state.level`: the first instant from `index` on at which its
        transition may do anything but keep it so silently (another level, ok, or a reminder due)."""
        unsteady = self._unsteady.get(state.level)
        if unsteady is None:
            unsteady = self._unsteady[state.level] = np.flatnonzero(~self._steady_at(state.level))
        position = int(np.searchsorted(unsteady, index))
        following = int(unsteady[position]) if position < len(unsteady) else len(self.values)
        # next_state's reminder: at the first instant with a verdict more than the cooldown after
        # the last notice (no verdict changes nothing, reminder included).
        due = state.last_notified_at.timestamp() + cooldown_minutes * 60 if state.last_notified_at else -math.inf
        if self._verdicts is None:
            self._verdicts = np.flatnonzero(self.judged | (self.windows.rule.no_data != AlertRule.NoData.KEEP))
        position = int(np.searchsorted(self._verdicts, np.searchsorted(self.seconds, due, side="right")))
        return min(following, int(self._verdicts[position]) if position < len(self._verdicts) else len(self.values))

    def _steady_at(self, level: str) -> np.ndarray:
        """Instants at which the judge certainly answers `level`, or no verdict the policy keeps."""
        rule = self.windows.rule
        if level == AlertLevel.CRITICAL:
            steady = self._past(rule.threshold)
        elif level == AlertLevel.WARNING and rule.warning_threshold is not None:
            steady = self._past(rule.warning_threshold) & self._short_of(rule.threshold)
        else:
            steady = np.zeros(len(self.values), dtype=bool)
        kept = rule.no_data == AlertRule.NoData.KEEP or (
            rule.no_data == AlertRule.NoData.ALERT and level == AlertLevel.CRITICAL
        )
        return np.where(self.judged, steady, kept)

    def breaching(self, lows: int, highs: int) -> np.ndarray:
        """Over instants [lows, highs) that a firing group stays steady through: where it breaches
        (a verdict over a level, or no verdict the policy counts as firing)."""
        alerting = self.windows.rule.no_data == AlertRule.NoData.ALERT
        return np.where(self.judged[lows:highs], True, alerting)

    def totals(self, index: int, figures: np.ndarray) -> metrics.WindowTotals:
        requests, errors, tokens, cost, up, down = figures[index].tolist()
        extra = {}
        if self.pct is not None:
            value = self.pct[index]
            extra[self.windows.measure.percentile] = None if np.isnan(value) else float(value)
        return metrics.WindowTotals(
            int(round(requests)),
            int(round(errors)),
            tokens,
            cost,
            thumbs_up=int(round(up)),
            thumbs_down=int(round(down)),
            **extra,
        )

    def evaluate(self, index: int, moment: datetime) -> alerts.Evaluation:
        rule = self.windows.rule
        previous = self.totals(index, self.before) if self.before is not None else None
        span = (moment - timedelta(minutes=rule.time_window_minutes), moment)
        return alerts.evaluation_of(
            rule, self.totals(index, self.now), previous, span, self.key if rule.group_by else None
        )


def replay_by_group(rule: AlertRule, times: list[datetime], windows: Windows) -> Replay | None:
    """Each group on its own, jumping from one instant worth judging to the next while it does not
    fire, and judging every instant while it fires. Exact when the cap on groups never leaves out a
    group that fires or may: answers None otherwise (replay instant by instant then)."""
    result = Replay(rule, times)
    highs = np.array([windows.index(moment) for moment in times])
    keys = sorted(windows.keys) if rule.group_by else [""]
    judged = np.zeros(len(times), dtype=np.int64)  # groups firing or worth judging, per instant
    present = np.zeros(len(times), dtype=np.int64)
    breached = np.zeros(len(times), dtype=bool)
    for key in keys:
        series = GroupSeries(windows, key, highs)
        group = GroupReplay(key if rule.group_by else None)
        walked = walk(result, series, group, breached)
        if walked.size:
            judged[walked] += 1
        present += series.present
        if series.present.any() or group.values:
            group.drawn = np.where(series.present, series.values, np.nan)
            result.groups[group.key] = group
    if rule.group_by and judged.max(initial=0) > settings.ALERT_MAX_GROUPS:
        return None
    if not rule.group_by:
        result.groups.setdefault(None, GroupReplay(None))
    result.events.sort(key=lambda event: (event["time"], event["group"] or ""))
    result.breaches = int(breached.sum())
    if rule.group_by:
        result.groups_left_out = int(max(0, (present - settings.ALERT_MAX_GROUPS).max(initial=0)))
    return result


def walk(result: Replay, series: GroupSeries, group: GroupReplay, breached: np.ndarray) -> np.ndarray:
    """The group's transitions (`alerts.next_state`) at the instants it is judged; answers them."""
    rule, times = result.rule, result.times
    visited: list[Any] = []
    index = 0
    while index < len(times):
        if group.state.is_firing:
            # Through a span where it certainly stays at its level without a notice, no judging.
            following = series.steady_until(index, group.state, rule.cooldown_minutes)
            if following > index:
                visited.append(np.arange(index, following))
                breached[index:following] |= series.breaching(index, following)
                index = following
                continue
        else:
            position = int(np.searchsorted(series.candidates, index))
            if position == len(series.candidates):
                break
            index = int(series.candidates[position])
        evaluation = series.evaluate(index, times[index])
        visited.append([index])
        group.values[index] = evaluation.value
        breached[index] |= bool(evaluation.level)
        group.state, notice = alerts.next_state(group.state, evaluation.level, times[index], rule.cooldown_minutes)
        if notice is not None:
            result.events.append(event(evaluation, notice, times[index]))
            group.notices += 1
        index += 1
    return np.concatenate(visited).astype(np.int64) if visited else np.zeros(0, dtype=np.int64)


def event(evaluation: alerts.Evaluation, notice: str, moment: datetime) -> dict[str, Any]:
    return {
        "time": moment,
        "kind": "fire" if notice == AlertLog.Kind.FIRED else "resolve",
        "level": evaluation.level or "",
        "group": evaluation.group_key,
        "value": evaluation.value,
    }


def step(result: Replay, evaluations: list[alerts.Evaluation], index: int) -> None:
    """One instant: each group's transition, its value in the series and its notice as an event."""
    moment = result.times[index]
    breached = False
    for evaluation in evaluations:
        group = result.groups.setdefault(evaluation.group_key, GroupReplay(evaluation.group_key))
        group.values[index] = evaluation.value
        breached = breached or bool(evaluation.level)
        group.state, notice = alerts.next_state(group.state, evaluation.level, moment, result.rule.cooldown_minutes)
        if notice is not None:
            result.events.append(event(evaluation, notice, moment))
            group.notices += 1
    result.breaches += breached


def worst_series(result: Replay) -> list[float | None]:
    """Per instant, the worst value over the groups (the value itself for an ungrouped rule)."""
    count = len(result.times)
    if not result.groups:
        return [None] * count
    # Folded group by group (fmax and fmin skip NaN): no table of every group at every instant.
    keep_worse = np.fmin if result.rule.fires_below else np.fmax
    worst = np.full(count, np.nan)
    for group in result.groups.values():
        keep_worse(worst, group.array(count), out=worst)
    return [None if math.isnan(value) else value for value in worst.tolist()]


# The answer draws the series of at most this many groups: those with the most notices.
GROUP_SERIES_MAX = 20


def drawn_groups(result: Replay) -> list[tuple[str | None, GroupReplay]]:
    """The groups whose series the answer gives: those with notices, the most first (at most
    GROUP_SERIES_MAX; `series` has the worst of all of them at each instant)."""
    noticed = [(key, group) for key, group in result.groups.items() if group.notices]
    noticed.sort(key=lambda item: (-item[1].notices, item[0] or ""))
    return noticed[:GROUP_SERIES_MAX]


def answer(result: Replay, days: int, step_minutes: int) -> dict[str, Any]:
    """The preview API's answer."""
    rule = result.rule
    times = [moment.isoformat() for moment in result.times]
    grouped = bool(rule.group_by)
    return {
        "days": days,
        "step_minutes": step_minutes,
        "start": times[0] if times else None,
        "end": times[-1] if times else None,
        "evaluations": len(times),
        "metric_type": rule.metric_type,
        "fires_below": rule.fires_below,
        "threshold": rule.threshold,
        "warning_threshold": rule.warning_threshold,
        "group_by": rule.group_by,
        "series": [{"time": t, "value": v} for t, v in zip(times, worst_series(result), strict=True)],
        "groups": [
            {
                "group": key,
                "series": [{"time": t, "value": v} for t, v in zip(times, group.series(len(times)), strict=True)],
            }
            for key, group in drawn_groups(result)
        ]
        if grouped
        else [],
        "events": [{**event, "time": event["time"].isoformat()} for event in result.events],
        "breaches": result.breaches,
        "notifications": result.notifications,
        "groups_left_out": result.groups_left_out,
    }
