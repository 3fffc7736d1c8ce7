"""Properties of the date filters in llm/filters.py (hypothesis): any ISO 8601 date or date-time,
and any other text, either filters or answers a ValidationError naming the field; never another
exception (which the API would turn into a 500)."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone

import pytest
from django.db import transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rest_framework.exceptions import ValidationError

from llm.filters import filter_logs

pytestmark = pytest.mark.django_db

BOUNDED = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

OFFSETS = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
ISO_DATES = st.dates().map(lambda day: day.isoformat())
ISO_DATETIMES = st.datetimes(timezones=st.none() | st.just(UTC) | OFFSETS).map(lambda moment: moment.isoformat())
ANY_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
DATE_VALUES = st.one_of(ISO_DATES, ISO_DATETIMES, ANY_TEXT)


def answers_rows_or_names_the_field(params: dict[str, str]) -> None:
    # A savepoint per example: on PostgreSQL one failed query would otherwise hide the next ones.
    with transaction.atomic():
        rows_or_refusal(params)


def rows_or_refusal(params: dict[str, str]) -> None:
    try:
        filtered = filter_logs(params)
    except ValidationError as error:
        assert set(error.detail) <= set(params) | {"non_field_errors", "end_date", "start_date"}
        assert error.detail
    else:
        assert list(filtered.queryset[:1]) == []  # the query runs on the database as well


@BOUNDED
@given(value=DATE_VALUES, field=st.sampled_from(["start_date", "end_date"]))
@example(value="9999-12-31", field="end_date")
def test_one_date_bound_filters_or_is_refused(value, field):
    answers_rows_or_names_the_field({field: value})


@BOUNDED
@given(start=DATE_VALUES, end=DATE_VALUES)
def test_both_date_bounds_filter_or_are_refused(start, end):
    answers_rows_or_names_the_field({"start_date": start, "end_date": end})


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=DATE_VALUES, end=DATE_VALUES)
# Found by the test: the first and last days Python knows overflowed the window arithmetic (500).
@example(start="0001-01-01T00:00:00+05:00", end="")
@example(start="0001-01-01", end="")
@example(start="", end="0001-01-01")
@example(start="", end="9999-12-31")
@example(start="9998-12-31", end="9999-12-31T23:59:59-05:00")
def test_the_api_answers_200_or_400_for_any_dates(api_client, start, end):
    response = api_client.get("/api/metrics/overview/", {"start_date": start, "end_date": end})
    assert response.status_code in (200, 400), response.content[:300]
    if response.status_code == 400:
        assert set(response.json()["fields"]) <= {"start_date", "end_date"}
