"""The filters shared by metrics, logs, feedback, export, breakdowns, sessions and users: the same
query string means the same rows everywhere (start_date, end_date, hours, model, status, user_id,
session_id, source, error_type, tag), over the same window."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

import django_filters
from django import forms
from django.db import connections
from django.db.models import Func, Q, TextField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.lookups import Exact
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from rest_framework.exceptions import ValidationError

from llm.ingest_limits import MAX_ROW_ID, TAG_KEY_MAX_CHARS, TAG_VALUE_MAX_CHARS, text_problem
from llm.models import CARRIES_TEXT, LLMRequestLog, LLMRequestLogQuerySet
from llm.paging import TRIGRAM

# One rule for every filtered endpoint (metrics, logs, feedback, export); the API docs quote it.
DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW_HOURS = 8784  # a leap year
WINDOW_RULE = (
    "With no start_date, end_date or hours the answer covers the last 24 hours. start_date alone: "
    "from then until now; end_date alone: the 24 hours before it; hours=N: the last N hours. "
    "JSON answers state the window in `start`, `end` and `window_defaulted`; exports in the "
    "X-Window-Start and X-Window-End headers and in the file name."
)
SEARCH_MAX_CHARS = 200
# LogFilterSet fields the roll-ups do not break down by: with one of them, figures come from the rows.
# (The roll-ups do hold error_type, but llm.metrics.Selection reads only model and status from them.)
ROLLUP_BLIND_FILTERS = ("user_id", "session_id", "source", "error_type", "tag")
# `tag` is repeatable; more than this many in one query is refused (each is one more condition).
MAX_TAG_FILTERS = 10
# Dates outside these years are refused: a window and the previous one of the same length (the
# overview's trend) must stay within what Python and both databases can represent.
EARLIEST_YEAR, LATEST_YEAR = 1900, 2999
# Real UTC offsets run from -12:00 to +14:00; PostgreSQL refuses literals beyond ±15:59.
MIN_UTC_OFFSET, MAX_UTC_OFFSET = timedelta(hours=-12), timedelta(hours=14)


class DateOrDateTimeField(forms.Field):
    """An ISO 8601 date or date-time. Naive values are in TIME_ZONE.

    A bare date means the start of that day; `end_of_day` makes it the start of the next one, so
    that `end_date=2026-11-20` includes all of the 20th.
    """

    def __init__(self, *, end_of_day: bool = False, **kwargs: Any) -> None:
        self.end_of_day = end_of_day
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> datetime | None:
        if value in self.empty_values:
            return None
        text = str(value).strip()
        if "T" in text:
            # An unencoded "+01:00" offset arrives as " 01:00" once the query string is decoded.
            text = text.replace(" ", "+")
        try:
            # parse_date first: Python's fromisoformat, behind parse_datetime, takes bare dates too.
            day = parse_date(text)
            moment = None if day else parse_datetime(text)
        except ValueError:
            moment = day = None
        if moment is None and day is None:
            raise forms.ValidationError(
                "Enter an ISO 8601 date or date-time, e.g. 2026-11-20 or 2026-11-20T14:00:00Z.", code="invalid"
            )
        if not EARLIEST_YEAR <= (moment or day).year <= LATEST_YEAR:
            raise forms.ValidationError(f"Enter a date between {EARLIEST_YEAR} and {LATEST_YEAR}.", code="out_of_range")
        offset = moment.utcoffset() if moment is not None else None
        if offset is not None and not MIN_UTC_OFFSET <= offset <= MAX_UTC_OFFSET:
            raise forms.ValidationError("Enter a UTC offset between -12:00 and +14:00.", code="out_of_range")
        if moment is None:
            moment = datetime.combine(day + timedelta(days=1) if self.end_of_day else day, time.min)
        if timezone.is_naive(moment):
            moment = timezone.make_aware(moment)
        return moment


class DateBoundFilter(django_filters.Filter):
    field_class = DateOrDateTimeField


class HoursFilter(django_filters.Filter):
    field_class = forms.IntegerField


class IdFilter(django_filters.NumberFilter):
    """A row's id: a whole number from 1 to the id column's 64-bit maximum; anything else ("1.5",
    "x", an id beyond 64 bits, which would overflow the query) is a 400 naming the parameter."""

    field_class = forms.IntegerField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ROW_ID)
        super().__init__(*args, **kwargs)


class TagListField(forms.Field):
    """`tag` given once or several times: each `key:value` (that value) or `key` (any value).

    Cleans to a list of (key, value or None); the key and value within the limits tags are stored
    with (llm.serializers.validate_tags), so a filter that could never match is a 400, not a scan.
    """

    widget = forms.MultipleHiddenInput

    def to_python(self, value: Any) -> list[tuple[str, str | None]]:
        if value in self.empty_values:
            return []
        values = [value] if isinstance(value, str) else list(value)
        if len(values) > MAX_TAG_FILTERS:
            raise forms.ValidationError(f"At most {MAX_TAG_FILTERS} tag filters.", code="too_many")
        return [self._one(str(text)) for text in values if str(text).strip()]

    @staticmethod
    def _one(text: str) -> tuple[str, str | None]:
        key, colon, tag_value = text.strip().partition(":")
        if not key or (colon and not tag_value):
            raise forms.ValidationError(
                "Give key:value (that value) or key (any value), e.g. tag=feature:summarize.", code="invalid"
            )
        if len(key) > TAG_KEY_MAX_CHARS or len(tag_value) > TAG_VALUE_MAX_CHARS:
            raise forms.ValidationError(
                f"Keys have 1 to {TAG_KEY_MAX_CHARS} characters, values at most {TAG_VALUE_MAX_CHARS}.",
                code="too_long",
            )
        if problem := text_problem(text):  # PostgreSQL refuses NUL in a query
            raise forms.ValidationError(problem, code="invalid")
        return key, tag_value if colon else None


class TagFilter(django_filters.Filter):
    field_class = TagListField


def tag_condition(key: str, value: str | None, vendor: str) -> Q:
    """Rows whose tags hold `key` (with `value`, unless None).

    On PostgreSQL as `tags @> '{"key": "value"}'` and `tags ? 'key'`, which the GIN index on
    tags answers (migration llm_log_tags_gin); SQLite has no containment: the key's text instead.
    KeyTextTransform takes the key whole, so a key with "__" or "." is not read as a path.
    """
    if value is None:
        return Q(tags__has_key=key)
    if vendor == "postgresql":
        return Q(tags__contains={key: value})
    return Q(Exact(KeyTextTransform(key, "tags"), value))


class LogFilterSet(django_filters.FilterSet):
    # The three window parameters only validate here: filter_logs turns them into one window.
    start_date = DateBoundFilter(
        method="window_only", help_text="ISO 8601 date or date-time (inclusive). Alone: from then until now."
    )
    end_date = DateBoundFilter(
        method="window_only",
        end_of_day=True,
        help_text="ISO 8601 date-time (exclusive); a bare date includes that whole day. Alone: the 24 hours before it.",
    )
    hours = HoursFilter(
        method="window_only",
        min_value=1,
        max_value=MAX_WINDOW_HOURS,
        help_text=f"The last N hours (1 to {MAX_WINDOW_HOURS}); not together with start_date or end_date.",
    )
    model = django_filters.CharFilter(field_name="model_name", help_text="Exact model name.")
    status = django_filters.ChoiceFilter(choices=LLMRequestLog.Status.choices, help_text="success or error.")
    user_id = django_filters.CharFilter(help_text="Exact user id.")
    session_id = django_filters.CharFilter(help_text="Exact session id.")
    source = django_filters.ChoiceFilter(
        choices=LLMRequestLog.Source.choices, help_text="How the call arrived: proxy, api (events) or otlp."
    )
    error_type = django_filters.ChoiceFilter(choices=LLMRequestLog.ErrorType.choices, help_text="Exact error type.")
    tag = TagFilter(
        method="with_tags",
        help_text=(
            "key:value (that value) or key (any value), e.g. feature:summarize; repeatable, all must match "
            f"(at most {MAX_TAG_FILTERS})."
        ),
    )

    class Meta:
        model = LLMRequestLog
        fields = [
            "start_date",
            "end_date",
            "hours",
            "model",
            "status",
            "user_id",
            "session_id",
            "source",
            "error_type",
            "tag",
        ]

    def window_only(self, queryset: LLMRequestLogQuerySet, name: str, value: Any) -> LLMRequestLogQuerySet:
        return queryset

    def with_tags(
        self, queryset: LLMRequestLogQuerySet, name: str, value: list[tuple[str, str | None]]
    ) -> LLMRequestLogQuerySet:
        vendor = connections[queryset.db].vendor
        for key, tag_value in value:
            queryset = queryset.filter(tag_condition(key, tag_value, vendor))
        return queryset

    def clean_window(self) -> tuple[datetime, datetime, bool]:
        """The window of WINDOW_RULE as (start, end, defaulted); a conflict is a form error."""
        start = self.form.cleaned_data.get("start_date")
        end = self.form.cleaned_data.get("end_date")
        hours = self.form.cleaned_data.get("hours")
        now = timezone.now()
        if hours is not None:
            if start or end:
                self.form.add_error("hours", "Give either hours or start_date/end_date, not both.")
            return now - timedelta(hours=hours), now, False
        if start and end:
            if end <= start:
                self.form.add_error("end_date", "end_date must be after start_date.")
            return start, end, False
        if start:
            if start >= now:
                self.form.add_error("start_date", "With no end_date the window ends now: start_date must be earlier.")
            return start, now, False
        if end:
            return end - DEFAULT_WINDOW, end, False
        return now - DEFAULT_WINDOW, now, True


@dataclass
class FilteredLogs:
    queryset: LLMRequestLogQuerySet
    start: datetime
    end: datetime
    # True when neither dates nor hours were given and the default window (last 24 hours) applied.
    window_defaulted: bool
    # What llm.metrics needs to read roll-ups: the model and status filters (blank: none), and
    # whether any other filter (user_id, search, ...) narrows the rows, which roll-ups cannot answer.
    model: str = ""
    status: str = ""
    other_filters: bool = False
    # When the other filters narrow the rows to one breakdown group and nothing else (`source=`,
    # or one `tag=key:value`): that group as (by, key), e.g. ("tag:feature", "search"), which
    # llm.metrics may read from the breakdown roll-ups.
    narrowed_to: tuple[str, str] | None = None

    def window(self) -> dict[str, Any]:
        """How a JSON answer states the window it covers."""
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "window_defaulted": self.window_defaulted}

    def window_headers(self) -> dict[str, str]:
        """How a file answer (the exports) states it."""
        return {
            "X-Window-Start": self.start.isoformat(),
            "X-Window-End": self.end.isoformat(),
            "X-Window-Defaulted": "true" if self.window_defaulted else "false",
        }


def filter_logs(params: Any, *, queryset: LLMRequestLogQuerySet | None = None) -> FilteredLogs:
    """Apply the shared filters of a query string over the window of WINDOW_RULE.

    Bad values raise a ValidationError naming the field. Unknown parameters are the view's
    business (llm/api/params.py): the dashboard passes its own.
    """
    filterset = LogFilterSet(params, queryset=queryset if queryset is not None else LLMRequestLog.objects.all())
    window = filterset.clean_window() if filterset.is_valid() else None
    if filterset.form.errors or window is None:
        raise ValidationError({field: list(errors) for field, errors in filterset.form.errors.items()})
    start, end, defaulted = window
    cleaned = filterset.form.cleaned_data
    return FilteredLogs(
        queryset=filterset.qs.in_window(start, end),
        start=start,
        end=end,
        window_defaulted=defaulted,
        model=cleaned.get("model") or "",
        status=cleaned.get("status") or "",
        other_filters=queryset is not None or any(cleaned.get(name) for name in ROLLUP_BLIND_FILTERS),
        narrowed_to=None if queryset is not None else one_group(cleaned),
    )


def one_group(cleaned: dict[str, Any]) -> tuple[str, str] | None:
    """The breakdown group (by, key) the roll-up-blind filters narrow the rows to, when that is
    all they do: one source, or one tag with a value."""
    blind = [name for name in ROLLUP_BLIND_FILTERS if cleaned.get(name)]
    if blind == ["source"]:
        return ("source", cleaned["source"])
    tags = cleaned.get("tag") or []
    if blind == ["tag"] and len(tags) == 1 and tags[0][1] is not None:
        key, value = tags[0]
        return (f"tag:{key}", value)
    return None


WINDOW_PARAMETERS = ("start_date", "end_date", "hours")


def _filters_only(params: Any) -> LogFilterSet:
    data = {name: params.get(name) for name in LogFilterSet.base_filters if name not in WINDOW_PARAMETERS}
    if hasattr(params, "getlist"):  # a query string: `tag` may come several times
        data["tag"] = params.getlist("tag") or None
    return LogFilterSet({name: value for name, value in data.items() if value is not None})


def filter_errors(params: Any) -> dict[str, list[str]]:
    """What is wrong with the shared filters other than the window (model, status, user_id), by
    parameter; empty when nothing is. For the pages, which show it in the filter bar."""
    filterset = _filters_only(params)
    return {} if filterset.is_valid() else {name: list(errors) for name, errors in filterset.form.errors.items()}


def narrowed_group(params: Any) -> tuple[str, str] | None:
    """The one breakdown group (by, key) valid filters other than the window narrow the rows to
    (`one_group`), for the pages, which read their filters apart from the window."""
    filterset = _filters_only(params)
    return one_group(filterset.form.cleaned_data) if filterset.is_valid() else None


def filter_rows(params: Any, start: datetime, end: datetime) -> LLMRequestLogQuerySet:
    """The shared filters other than the window, over a window already decided: start <= timestamp
    < end (the pages, whose previous-period comparison may reach before the earliest date a query
    string may give). Bad values raise a ValidationError naming the parameter."""
    filterset = _filters_only(params)
    if not filterset.is_valid():
        raise ValidationError({name: list(errors) for name, errors in filterset.form.errors.items()})
    return filterset.qs.in_window(start, end)


def date_range_label(filtered: FilteredLogs) -> str:
    """A file-name-safe label for the window in TIME_ZONE: 2026-11-01_to_2026-11-20 for whole days,
    2026-11-19T1400_to_2026-11-20T1400 otherwise (the default window, hours=N)."""
    start = timezone.localtime(filtered.start)
    end = timezone.localtime(filtered.end)
    if start.time() == end.time() == time.min:
        # The end is exclusive: a window of whole days ends on the day before.
        return f"{start.date().isoformat()}_to_{(end - timedelta(days=1)).date().isoformat()}"
    return f"{start:%Y-%m-%dT%H%M}_to_{end:%Y-%m-%dT%H%M}"


class Unindexed(Func):
    """A text column as an expression no index covers (`text || ''`, the same text): a search
    compared on it cannot be read through the trigram indexes, so PostgreSQL walks the window."""

    template = "(%(expressions)s || '')"
    output_field = TextField()


def search_logs(logs: LLMRequestLogQuerySet, params: Any, *, walk: bool = False) -> LLMRequestLogQuerySet:
    """The `search` parameter: text in the prompt or the response (logs list, logs page, export).

    `walk`: compare every call with text of the window instead of looking the text up in the
    trigram indexes (llm.paging.SearchReading says when; the rows are the same)."""
    search = params.get("search", "").strip()
    if len(search) > SEARCH_MAX_CHARS:
        raise ValidationError({"search": [f"At most {SEARCH_MAX_CHARS} characters."]})
    if problem := text_problem(search):  # PostgreSQL refuses NUL in a query
        raise ValidationError({"search": [problem]})
    if not search:
        return logs
    # A call with no text cannot hold a word: stating so lets the planner walk the partial index of
    # the calls with text (llm_log_text_time) and skip the text-less ones without reading their rows.
    logs = logs.filter(CARRIES_TEXT)
    if search == search.upper() == search.lower() and not TRIGRAM.search(search):
        # Nothing in it has a case (CJK, digits, signs), and no trigram index could find it: the
        # text itself is compared, without upper-casing every call's text first (at 10 million
        # calls, 24 hours of 72,000 calls with text: 45-66 ms instead of 150-240 ms).
        return logs.filter(Q(prompt_text__contains=search) | Q(response_text__contains=search))
    if walk:
        logs = logs.alias(prompt_walked=Unindexed("prompt_text"), response_walked=Unindexed("response_text"))
        return logs.filter(Q(prompt_walked__icontains=search) | Q(response_walked__icontains=search))
    return logs.filter(Q(prompt_text__icontains=search) | Q(response_text__icontains=search))
