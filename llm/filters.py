"""The filters shared by metrics, logs and export: the same query string means the same rows
everywhere (start_date, end_date, model, status, user_id)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

import django_filters
from django import forms
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from rest_framework.exceptions import ValidationError

from llm.models import LLMRequestLog, LLMRequestLogQuerySet

DEFAULT_METRICS_WINDOW = timedelta(hours=24)
SEARCH_MAX_CHARS = 200


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
        if moment is None:
            moment = datetime.combine(day + timedelta(days=1) if self.end_of_day else day, time.min)
        if timezone.is_naive(moment):
            moment = timezone.make_aware(moment)
        return moment


class DateBoundFilter(django_filters.Filter):
    field_class = DateOrDateTimeField


class LogFilterSet(django_filters.FilterSet):
    start_date = DateBoundFilter(field_name="timestamp", lookup_expr="gte")
    end_date = DateBoundFilter(field_name="timestamp", lookup_expr="lt", end_of_day=True)
    model = django_filters.CharFilter(field_name="model_name")
    status = django_filters.ChoiceFilter(choices=LLMRequestLog.Status.choices)
    user_id = django_filters.CharFilter()

    class Meta:
        model = LLMRequestLog
        fields = ["start_date", "end_date", "model", "status", "user_id"]

    def clean_window(self) -> None:
        start = self.form.cleaned_data.get("start_date")
        end = self.form.cleaned_data.get("end_date")
        if start and end and end <= start:
            self.form.add_error("end_date", "end_date must be after start_date.")


@dataclass
class FilteredLogs:
    queryset: LLMRequestLogQuerySet
    start: datetime | None
    end: datetime | None
    # True when no dates were given and the default window applied (metrics: last 24 hours).
    window_defaulted: bool

    def window(self) -> dict[str, Any]:
        """How a response states the window it covers."""
        return {
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "window_defaulted": self.window_defaulted,
        }


def filter_logs(
    params: Any, *, default_window: timedelta | None = None, queryset: LLMRequestLogQuerySet | None = None
) -> FilteredLogs:
    """Apply the shared filters of a query string; bad values raise a ValidationError naming the field.

    With `default_window` and neither date given, the rows are those of the last `default_window`.
    """
    filterset = LogFilterSet(params, queryset=queryset if queryset is not None else LLMRequestLog.objects.all())
    if filterset.is_valid():
        filterset.clean_window()
    if filterset.form.errors:
        raise ValidationError({field: list(errors) for field, errors in filterset.form.errors.items()})
    start = filterset.form.cleaned_data.get("start_date")
    end = filterset.form.cleaned_data.get("end_date")
    rows = filterset.qs
    defaulted = False
    if default_window is not None and start is None and end is None:
        end = timezone.now()
        start = end - default_window
        rows = rows.in_window(start, end)
        defaulted = True
    return FilteredLogs(queryset=rows, start=start, end=end, window_defaulted=defaulted)


def date_range_label(filtered: FilteredLogs) -> str:
    """A file-name-safe label for the window, e.g. 2026-11-01_to_2026-11-20."""

    def label(moment: datetime | None, fallback: str) -> str:
        return timezone.localtime(moment).date().isoformat() if moment else fallback

    end = filtered.end - timedelta(microseconds=1) if filtered.end else None
    return f"{label(filtered.start, 'beginning')}_to_{label(end, timezone.localdate().isoformat())}"


def search_logs(logs: LLMRequestLogQuerySet, params: Any) -> LLMRequestLogQuerySet:
    """The `search` parameter: text in the prompt or the response (logs list, logs page, export)."""
    search = params.get("search", "").strip()
    if len(search) > SEARCH_MAX_CHARS:
        raise ValidationError({"search": [f"At most {SEARCH_MAX_CHARS} characters."]})
    if not search:
        return logs
    return logs.filter(Q(prompt_text__icontains=search) | Q(response_text__icontains=search))
