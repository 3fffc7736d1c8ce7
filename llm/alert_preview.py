"""Replay an alert rule (saved or not) over past days, as check_alerts would have run it.

The replay evaluates the rule every `step` minutes over the period, at instants on the step's
grid (multiples of the step since 1970, UTC), and walks the same path as a real run: the window
figures become `metrics.WindowTotals`, `alerts.judge` gives the value and the level (with the
no-data policy), `alerts.cap_groups` keeps the same groups, and `alerts.next_state` makes the
transitions `AlertRule.record_check` makes with its conditional UPDATEs. Only the measuring
differs, for speed: instead of one query per instant (8,640 over 30 days at 5 minutes), the
figures come from `metrics.bucketed_figures`, one GROUP BY per time bucket and group (the bucket
is the greatest common divisor of the step and the window, so every window is a run of whole
buckets). Counts, sums and rates are then exact (sums up to float rounding), and a percentile is
taken over exactly the window's rows, with the same linear interpolation as percentile_cont: the
replay gives the notices real runs at those instants would have written (tests/test_alert_preview.py
checks it against check_alerts under time-machine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from llm import alerts, metrics
from llm.models import AlertLog, AlertRule

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
    # Instant's index -> the value measured then (absent: not evaluated then).
    values: dict[int, float | None] = field(default_factory=dict)

    def series(self, count: int) -> list[float | None]:
        return [self.values.get(index) for index in range(count)]


@dataclass
class Replay:
    rule: AlertRule
    times: list[datetime]
    groups: dict[str | None, GroupReplay] = field(default_factory=dict)
    # {"time", "kind": "fire"|"resolve", "level", "group", "value"}
    events: list[dict[str, Any]] = field(default_factory=list)
    # Instants at which some group was over a level.
    breaches: int = 0
    dropped_groups: set[str] = field(default_factory=set)

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
        # Per group, the prefix sums of what makes a group present in a window: its calls, or
        # for a feedback rule its ratings (a group without any is not evaluated, as in group_totals).
        self.keys = list(self.figures)
        columns = [4, 5] if self.measure.feedback else [0]
        self.counts = np.array([self.figures[key].sums[:, columns].sum(axis=1) for key in self.keys])

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
        figures = self.figures.get(key)
        if figures is None:
            return alerts.ZERO
        low = high - self.span
        requests, errors, tokens, cost, up, down = figures.sums[high] - figures.sums[low]
        extra = {}
        if self.measure.percentile:
            extra[self.measure.percentile] = self.percentile(figures, low, high)
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

    def percentile(self, figures: metrics.BucketedFigures, low: int, high: int) -> float | None:
        if figures.values is None:
            return None
        chosen = figures.values[figures.ends[low] : figures.ends[high]]
        if not len(chosen):
            return None
        ordered = np.sort(chosen)
        position = (len(ordered) - 1) * metrics.ALERT_PERCENTILES[self.measure.percentile][1]
        lower = math.floor(position)
        upper = min(lower + 1, len(ordered) - 1)
        return float(ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower))


def replay(rule: AlertRule, now: datetime, days: int, step_minutes: int) -> Replay:
    """Replay `rule` at every instant of the last `days` days on the `step_minutes` grid."""
    times = instants(now, days, step_minutes)
    windows = Windows(rule, times)
    result = Replay(rule, times)
    for index, moment in enumerate(times):
        high = windows.index(moment)
        keys: list[str | None] = [None]
        if rule.group_by:
            keys = sorted(windows.present(high) | {key for key in result.groups if key is not None})
        span = (moment - timedelta(minutes=rule.time_window_minutes), moment)
        evaluations = [
            alerts.evaluation_of(rule, windows.totals(key or "", high), windows.previous(key or "", high), span, key)
            for key in keys
        ]
        if rule.group_by:
            firing = {key for key, group in result.groups.items() if group.state.is_firing}
            evaluations, dropped = alerts.cap_groups(rule, evaluations, firing)
            result.dropped_groups.update(dropped)
        step(result, evaluations, index)
    return result


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
            result.events.append(
                {
                    "time": moment,
                    "kind": "fire" if notice == AlertLog.Kind.FIRED else "resolve",
                    "level": evaluation.level or "",
                    "group": evaluation.group_key,
                    "value": evaluation.value,
                }
            )
    result.breaches += breached


def worst_series(result: Replay) -> list[float | None]:
    """Per instant, the worst value over the groups (the value itself for an ungrouped rule)."""
    pick = min if result.rule.fires_below else max
    answer = []
    for index in range(len(result.times)):
        values = [value for group in result.groups.values() if (value := group.values.get(index)) is not None]
        answer.append(pick(values) if values else None)
    return answer


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
            for key, group in sorted(result.groups.items(), key=lambda item: item[0] or "")
        ]
        if grouped
        else [],
        "events": [{**event, "time": event["time"].isoformat()} for event in result.events],
        "breaches": result.breaches,
        "notifications": result.notifications,
        "dropped_groups": sorted(result.dropped_groups),
    }
