"""Spend of a scope of calls over a period, and the projected spend at the period's end.

Periods are a day, a week (from Monday) or a calendar month in TIME_ZONE (`period_bounds`).

The forecast (`project`) follows the rhythm of the same hours of previous weeks, not a straight
line from the period's start. With the period [start, end), now t, and c(h) the cost of the UTC
hour starting at h:

- the hours of the period are split at t: each hour h counts with the part of it that lies in
  [start, t) (elapsed) and the part that lies in [t, end) (remaining), so the hour t falls in is
  partly both;
- scenario j (j = 1..HISTORY_WEEKS) replays, for every hour, its j-th most recent occurrence of the
  same hour of the week that is already over: an elapsed hour h reads c(h - j weeks); a remaining
  hour h reads c(h - k weeks) with k = j - 1 + the smallest k0 >= 1 for which h + 1 h - k0 weeks <= t
  (a month's last days read last week's, and older, hours, never hours still to come);
- the scale is how this period compares with the weeks before it: over the scenarios, the cost of
  the elapsed hours whose hour j weeks back lies before the period's start, divided by what those
  hours j weeks back cost (1 when that is 0). For a day or a week that is every elapsed hour;
  in a month, the later hours are compared with hours of the same month, already at its level,
  so they are left out;
- each scenario projects spent_so_far + scale x (the remaining hours it reads from before the
  period's start) + (those it reads from within the period, already at its level), each hour
  weighted by the part of it that remains; the forecast is the mean of the projections, `low` and
  `high` the smallest and largest: "the rest of the period goes as it went in week j, scaled".

Only scenarios whose oldest hour is not before the scope's first call are used (a new install, a
new model or user has fewer weeks of history; a week before any traffic would read as zero). The
hours are read from one week further back than the oldest scenario, so a scope with calls in that
extra week has all of its scenarios. With none, the
forecast is the straight line spent_so_far x period length / elapsed time (`method` "linear"),
with `low` = spent_so_far. A repeating week is forecast exactly (up to float rounding); a week
that repeats at twice the cost so far is forecast at twice the cost. Weeks are 168 hours: in the
week of a daylight saving change the local hours shift by one.

Hourly costs are read from the hourly roll-ups (llm/rollups.py) for scopes the roll-ups break
down by (all calls, one model) and from the calls themselves otherwise (a user, an API key: an
index on (field, timestamp); a tag: the period's calls, no index).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import CharField, F, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, TruncHour
from django.utils import timezone

from llm import metrics, rollups
from llm.models import LLMRequestLog

HOUR = timedelta(hours=1)
WEEK = timedelta(days=7)
HISTORY_WEEKS = 4
PERIODS = ("day", "week", "month")
METHOD_RHYTHM = "hour_of_week"
METHOD_LINEAR = "linear"


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The current day, week (Monday to Monday) or calendar month around `now`, in TIME_ZONE."""
    zone = timezone.get_current_timezone()
    today = now.astimezone(zone).date()
    if period == "day":
        first, after = today, today + timedelta(days=1)
    elif period == "week":
        first = today - timedelta(days=today.weekday())
        after = first + timedelta(days=7)
    elif period == "month":
        first = today.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"period is one of {', '.join(PERIODS)}")
    return _local_midnight(first, zone), _local_midnight(after, zone)


def _local_midnight(day: date, zone) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), zone).astimezone(UTC)


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# Reading costs


@dataclass(frozen=True)
class Scope:
    """Which calls: all, one model, one user, one tag (`key:value`) or one API key (its name)."""

    kind: str = "all"
    value: str = ""


# Calls of these scopes are found through a column with a (column, timestamp) index.
RAW_COLUMNS = {"user": "user_id", "api_key": "api_key_name"}

# {scope: {UTC hour (None when not by hour): cost in COST_PLACES units}}
ScopeCosts = dict[Scope, dict[datetime | None, int]]


def costs(scopes: Iterable[Scope], start: datetime, end: datetime, *, by_hour: bool = False) -> ScopeCosts:
    """The cost of each scope's calls in [start, end), in total or per UTC hour.

    A few queries whatever the number of scopes: one reading of the roll-ups per model for every
    `all` and `model` scope, one grouped query per raw column, one per tag key."""
    wanted = set(scopes)
    found: ScopeCosts = {scope: defaultdict(int) for scope in wanted}
    _add_model_scopes(found, start, end, by_hour)
    window = LLMRequestLog.objects.in_window(start, end).order_by()
    for kind, column in RAW_COLUMNS.items():
        values = {scope.value for scope in wanted if scope.kind == kind}
        if values:
            rows = window.filter(**{f"{column}__in": values}).annotate(group_value=F(column))
            _add_grouped(found, kind, rows, by_hour)
    tags: dict[str, set[str]] = defaultdict(set)
    for scope in wanted:
        if scope.kind == "tag":
            key, _, value = scope.value.partition(":")
            tags[key].add(value)
    for key, values in tags.items():
        # As text (Cast): a JSON key's own `__in` compares JSON values, and SQLite would parse "chat" as JSON.
        tag_value = Cast(KeyTextTransform(key, "tags"), CharField())
        rows = window.annotate(group_value=tag_value).filter(group_value__in=values)
        _add_grouped(found, "tag", rows, by_hour, prefix=f"{key}:")
    return found


def _add_model_scopes(found: ScopeCosts, start: datetime, end: datetime, by_hour: bool) -> None:
    """Add the cost of each `all` and `model` scope of `found`, from one reading per model."""
    scopes = [scope for scope in found if scope.kind in ("all", "model")]
    if not scopes:
        return
    for (hour, model_name), units in _model_costs(start, end, by_hour).items():
        for scope in scopes:
            if scope.kind == "all" or scope.value == model_name:
                found[scope][hour] += units


def _add_grouped(found: ScopeCosts, kind: str, rows: QuerySet, by_hour: bool, prefix: str = "") -> None:
    for (hour, value), units in _grouped_costs(rows, by_hour).items():
        found[Scope(kind, prefix + value)][hour] += units


def _grouped_costs(rows: QuerySet, by_hour: bool) -> dict[tuple[datetime | None, str], int]:
    """{(UTC hour or None, group_value): cost units} of annotated rows, summed by the database."""
    names = ["group_value"]
    if by_hour:
        rows = rows.annotate(hour=TruncHour("timestamp", tzinfo=UTC))
        names.append("hour")
    answer: dict[tuple[datetime | None, str], int] = {}
    for row in rows.values(*names).annotate(units=rollups.cost_units_sum()).order_by():
        hour = floor_hour(row["hour"]) if by_hour else None
        answer[(hour, row["group_value"])] = rollups.as_units(row["units"])
    return answer


def _model_costs(start: datetime, end: datetime, by_hour: bool) -> dict[tuple[datetime | None, str], int]:
    """{(UTC hour or None, model): cost units}: the roll-ups for whole hours and days, the calls
    for the edges and for what is not rolled up yet (llm.metrics.measure); the calls alone when
    the roll-ups cannot answer."""
    logs = LLMRequestLog.objects.in_window(start, end)
    chosen = metrics.Selection(logs, start, end, rollups_apply=True)
    period = "hour" if by_hour else None
    the_plan = metrics.plan(chosen, period)
    found = None
    if the_plan is not None:
        group = ("period", "model_name", "status") if by_hour else ("model_name", "status")
        found = metrics.measure(the_plan, group, percentiles=False)
    if found is None:
        return _grouped_costs(logs.order_by().annotate(group_value=F("model_name")), by_hour)
    answer: dict[tuple[datetime | None, str], int] = defaultdict(int)
    for key, figures in found.items():
        hour = floor_hour(datetime.fromisoformat(key[0])) if by_hour else None
        answer[(hour, key[-2])] += figures.cost_units
    return answer


# Projecting


@dataclass(frozen=True)
class Forecast:
    period: str
    start: datetime
    end: datetime
    spent_so_far: float
    forecast: float
    low: float
    high: float
    method: str
    weeks: int  # scenarios used (previous weeks of history); 0 with the linear method
    scale: float | None  # this period so far over the same hours before; None with the linear method


def _overlap(hour: datetime, start: datetime, end: datetime) -> float:
    """The part of the hour starting at `hour` that lies in [start, end), from 0 to 1."""
    seconds = (min(hour + HOUR, end) - max(hour, start)).total_seconds()
    return max(seconds, 0.0) / HOUR.total_seconds()


def _hours(start: datetime, end: datetime) -> list[datetime]:
    hours, hour = [], floor_hour(start)
    while hour < end:
        hours.append(hour)
        hour += HOUR
    return hours


def _first_week_back(hour: datetime, now: datetime) -> int:
    """The smallest k >= 1 for which the hour k weeks before `hour` is over at `now`."""
    return max(1, math.ceil((hour + HOUR - now) / WEEK))


@dataclass(frozen=True)
class _Scenario:
    now_cost: float  # elapsed hours whose hour j weeks back is before the period: their cost now
    then_cost: float  # ... and what those hours j weeks back cost
    before: float  # the remaining hours' cost read from hours before the period (to be scaled)
    within: float  # ... read from hours of this period (already at its level)
    oldest: datetime  # the oldest hour it reads


def _scenario(hourly: Mapping[datetime, float], hours: list, start: datetime, end: datetime, now: datetime, j: int):
    now_cost = then_cost = before = within = 0.0
    oldest = hours[0] - j * WEEK if hours else now
    for hour in hours:
        back = hour - j * WEEK
        if (part := _overlap(hour, start, now)) > 0 and back < start:
            now_cost += part * hourly.get(hour, 0.0)
            then_cost += part * hourly.get(back, 0.0)
        if (part := _overlap(hour, now, end)) > 0:
            source = hour - (_first_week_back(hour, now) + j - 1) * WEEK
            oldest = min(oldest, source)
            if source < start:
                before += part * hourly.get(source, 0.0)
            else:
                within += part * hourly.get(source, 0.0)
    return _Scenario(now_cost, then_cost, before, within, oldest)


def project(
    hourly: Mapping[datetime, float],
    spent: float,
    period: str,
    start: datetime,
    end: datetime,
    now: datetime,
    earliest: datetime | None,
    weeks: int = HISTORY_WEEKS,
) -> Forecast:
    """The forecast of the module's docstring. `hourly`: USD per UTC hour over at least
    [start - `weeks` weeks, now); `spent`: the exact spend of [start, now)."""
    hours = _hours(start, end)
    first = floor_hour(earliest) if earliest is not None else now
    scenarios = [_scenario(hourly, hours, start, end, now, j) for j in range(1, weeks + 1)]
    scenarios = [scenario for scenario in scenarios if scenario.oldest >= first]
    if not scenarios:
        elapsed = (now - start).total_seconds()
        linear = spent * (end - start).total_seconds() / elapsed if elapsed > 0 else spent
        return Forecast(period, start, end, spent, linear, spent, linear, METHOD_LINEAR, 0, None)
    then_cost = sum(scenario.then_cost for scenario in scenarios)
    scale = sum(scenario.now_cost for scenario in scenarios) / then_cost if then_cost > 0 else 1.0
    projections = [spent + scale * scenario.before + scenario.within for scenario in scenarios]
    return Forecast(
        period,
        start,
        end,
        spent,
        statistics.fmean(projections),
        min(projections),
        max(projections),
        METHOD_RHYTHM,
        len(scenarios),
        scale,
    )


def as_usd(units_by_hour: Mapping[datetime | None, int]) -> dict[datetime | None, float]:
    return {hour: float(rollups.usd(units)) for hour, units in units_by_hour.items()}


def forecasts(
    scopes: Iterable[Scope], period: str, now: datetime, spent: ScopeCosts | None = None
) -> dict[Scope, Forecast]:
    """The forecast of each scope for the current `period`, from one reading of hourly costs for all
    of them (from HISTORY_WEEKS weeks before the period's start to its end: a call stamped this
    very instant, or a little ahead by another machine's clock, is spent too). The period's spend
    is the sum of its hours, unless `spent` gives it or the period does not start on the hour
    (a time zone a half hour off UTC), when it is read apart."""
    wanted = list(dict.fromkeys(scopes))
    start, end = period_bounds(period, now)
    # One week more than the oldest scenario reads: a call in it says the history goes back far enough.
    history = costs(wanted, floor_hour(start) - (HISTORY_WEEKS + 1) * WEEK, end, by_hour=True)
    if spent is None:
        if floor_hour(start) == start:
            spent = {
                scope: {None: sum(units for hour, units in history[scope].items() if hour >= start)} for scope in wanted
            }
        else:
            spent = costs(wanted, start, end)
    answer = {}
    for scope in wanted:
        spent_usd = float(rollups.usd(sum(spent[scope].values())))
        # The first hour with a call of the scope (an hour of calls costing nothing counts too).
        earliest = min(history[scope], default=None)
        answer[scope] = project(as_usd(history[scope]), spent_usd, period, start, end, now, earliest)
    return answer


def everything(model_name: str = "") -> Scope:
    return Scope("model", model_name) if model_name else Scope("all")
