"""Pages of a long list without counting all of it: the paginator of the logs page and of every
API list (llm/api/pagination.py), below both so the pages do not import llm/api/*.

Why not Django's Paginator as it is: it counts the whole filtered list for every page, and a
90-day window at 10 million calls holds millions of rows (0.6-1.3 s per page on PostgreSQL, and
5-9 s with `search`). So:

- The count is exact up to EXACT_COUNT_UP_TO rows (SEARCH_EXACT_COUNT_UP_TO with `search`): a
  COUNT over at most that many rows plus one (`SELECT count(*) FROM (SELECT … LIMIT n + 1)`), which
  stops as soon as it knows the list is longer.
- Beyond that, on PostgreSQL, the count is the planner's estimate for the filtered query (one
  EXPLAIN, about a millisecond), never less than EXACT_COUNT_UP_TO + 1, and the page says so
  (`count_is_estimate`). SQLite has no such estimate: it counts exactly (its windows are bounded).
- Whether there is a next page does not depend on the count: each page reads one row more than it
  shows, so `next` appears exactly while rows remain, and following `next` from page 1 visits every
  row once whatever the estimate said. A page number past the estimated end that still has rows
  is served; an empty page after the first is "not found".

A `search` list is read within a time budget (settings.SEARCH_TIMEOUT_MS, PostgreSQL): see
SearchReading below.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from django.conf import settings
from django.core.paginator import EmptyPage, Page, Paginator
from django.db import OperationalError, connections, transaction
from django.db.models import QuerySet
from django.db.models.sql.where import WhereNode
from django.utils.functional import cached_property
from rest_framework.exceptions import ValidationError

from llm.ingest_limits import MAX_ROW_ID

# Counted exactly up to here: a bounded COUNT of 10,000 rows costs ~7 ms on PostgreSQL, while
# one of 100,000 cost 55-145 ms (bench/quickfix_bench.py, 1M rows). A 24-hour window at 10
# million calls over 90 days holds ~110,000 rows: its count is an estimate.
EXACT_COUNT_UP_TO = 10_000
# With `search` (text in the prompt or the response), exactly up to here only: no index says which
# calls of a window match, so a bounded count reads the window's calls until it has found that many
# matches, each call's text read and compared. At 10 million calls, 10,001 matches of "refund"
# among one model's calls were ~228,000 calls read (116-249 ms, bench/scale_bench.py); 1,001 are a
# tenth of that. The walk reads only calls with text (the partial index llm_log_text_time): at 10
# million calls a bounded count of 1,001 "refund" matches took 14-47 ms, one model included.
SEARCH_EXACT_COUNT_UP_TO = 1_000
TEXT_FIELDS = frozenset({"prompt_text", "response_text"})
# pg_trgm looks a LIKE up by the trigrams of its words (letters and digits): 3 of them in a row.
# How llm.filters.search_logs compares the text: `icontains`, or `contains` for a text without case.
SEARCH_LOOKUPS = frozenset({"icontains", "contains"})
TRIGRAM = re.compile(r"[^\W_]{3}")


def filters_on_text(node: object) -> bool:
    """Whether a query's WHERE (a node of it) tests the prompt or response text (`search`)."""
    for child in getattr(node, "children", ()):
        target = getattr(getattr(child, "lhs", None), "target", None)
        if getattr(target, "name", None) in TEXT_FIELDS or filters_on_text(child):
            return True
    return False


def searched_texts(node: object) -> list[str]:
    """The texts a query's WHERE (a node of it) looks for in the prompt or response."""
    texts = []
    for child in getattr(node, "children", ()):
        target = getattr(getattr(child, "lhs", None), "target", None)
        if getattr(target, "name", None) in TEXT_FIELDS and getattr(child, "lookup_name", None) in SEARCH_LOOKUPS:
            texts.append(child.rhs)
        texts += searched_texts(child)
    return texts


def exact_count_limit(queryset: QuerySet) -> int:
    """Up to how many rows `queryset` is counted exactly (see above)."""
    return SEARCH_EXACT_COUNT_UP_TO if filters_on_text(queryset.query.where) else EXACT_COUNT_UP_TO


def query_plan(queryset: QuerySet) -> dict:
    """PostgreSQL's plan of `queryset` (EXPLAIN, not run): its top node, as JSON."""
    connection = connections[queryset.db]
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return plan[0]["Plan"]


def planner_estimate(queryset: QuerySet) -> int | None:
    """PostgreSQL's estimate of how many rows `queryset` answers; None elsewhere or when unknown."""
    if connections[queryset.db].vendor != "postgresql":
        return None
    try:
        return int(query_plan(queryset.order_by().values("pk"))["Plan Rows"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def count_rows(queryset: QuerySet, exact_up_to: int | None = None) -> tuple[int, bool]:
    """(count, is_estimate): exact up to `exact_up_to` rows (default: exact_count_limit), and on
    PostgreSQL an estimate above."""
    if exact_up_to is None:
        exact_up_to = exact_count_limit(queryset)
    bounded = queryset.order_by()[: exact_up_to + 1].count()
    if bounded <= exact_up_to:
        return bounded, False
    estimate = planner_estimate(queryset)
    if estimate is None:
        return queryset.count(), False
    return max(estimate, exact_up_to + 1), True


# The trigram indexes of migration 0008 (PostgreSQL): GIN, so only a bitmap scan reads them.
TRIGRAM_INDEXES = frozenset({"llm_log_prompt_trgm", "llm_log_response_trgm"})
# The two ways PostgreSQL reads a search, and the settings that leave it only that way:
# - "trigrams": the trigram indexes give the calls holding every trigram of the text (anywhere in
#   the table), each read and rechecked. Fast for a rare text; for a phrase of common words that
#   rarely meet (`your refund we`) the candidates are a million calls, whatever the window (22-32 s).
# - "walk": the calls with text of the window, newest first (llm_log_text_time, or a filter's own
#   index such as user_id's), each compared, stopping once the page or the count has its rows.
#   Bounded by the window (~2 us a call: 24 hours of 10 million calls over 90 days, 72,000 calls
#   with text, 150 ms when nothing matches), and the only way for a text of 1-2 characters.
# PostgreSQL's estimate of a text's matches comes from its statistics, not from the candidates, so
# it picks "trigrams" for any text it deems rare; SearchReading gives that pick a share of the
# budget and then walks.
PLAN_SETTINGS = {"planner": (), "walk": ("enable_bitmapscan",)}
# The share of the budget the planner's trigram pick gets before the walk is tried.
TRIGRAM_SHARE = 0.1
# A walk PostgreSQL costs at most this much (its cost units) is tried alone, before any trigram
# pick: at 10 million calls over 90 days the last 24 hours cost 28,700 (72,000 calls with text;
# 150 ms when nothing matches), 7 days 200,000.
WALK_FIRST_COST = 50_000


class SearchTooLong(ValidationError):
    """A search that did not finish within the budget: a 400 naming `search`, saying what to narrow."""

    def __init__(self, budget_ms: int) -> None:
        super().__init__(
            {
                "search": [
                    f"This search did not finish within {budget_ms / 1000:g} s. No index finds it quickly in a "
                    "window this long: a text of 1 or 2 characters, or common words that rarely occur "
                    "together, is compared with every call of the window. Narrow the window (hours, "
                    "start_date, end_date), add a filter (model, user_id, ...) or search a longer text."
                ]
            }
        )


Result = TypeVar("Result")


class SearchReading:
    """The readings of one `search` list (its count, then its page) within one time budget.

    On PostgreSQL each reading runs with a statement timeout (the time left of the budget, from the
    first reading on). When PostgreSQL would read the trigram indexes, that plan gets TRIGRAM_SHARE
    of the budget and, if it does not finish, the walk gets the rest (see PLAN_SETTINGS); the plan
    that answered the count also reads the page. A reading that does not finish in time raises
    SearchTooLong (400), never a 500. Answers are exact either way: only the way of reading changes.
    SQLite (small windows) reads as it always did.
    """

    def __init__(self, budget_ms: int | None = None) -> None:
        self.budget_ms = settings.SEARCH_TIMEOUT_MS if budget_ms is None else budget_ms
        self.deadline: float | None = None
        self.plan: str | None = None  # the plan that answered, reused for the next reading

    def read(self, queryset: QuerySet, reading: Callable[[QuerySet], Result]) -> Result:
        connection = connections[queryset.db]
        if connection.vendor != "postgresql" or not self.budget_ms:
            return reading(queryset)
        if self.deadline is None:
            self.deadline = time.monotonic() + self.budget_ms / 1000
        plans = [self.plan] if self.plan else self.plans(queryset)
        for number, plan in enumerate(plans):
            left_ms = (self.deadline - time.monotonic()) * 1000
            share_ms = left_ms if number == len(plans) - 1 else min(left_ms, self.budget_ms * TRIGRAM_SHARE)
            if share_ms < 1:
                break
            try:
                result = self._read_as(queryset, reading, plan, max(1, int(share_ms)))
            except OperationalError as error:
                if getattr(error.__cause__, "sqlstate", None) != "57014":  # query_canceled: the timeout
                    raise
                continue
            self.plan = plan
            return result
        raise SearchTooLong(self.budget_ms)

    def first_matches(self, queryset: QuerySet, limit: int) -> list:
        """The ids of up to `limit` + 1 rows of a search, in no order, within the budget."""
        return self.read(queryset, lambda rows: list(rows.order_by().values_list("pk", flat=True)[: limit + 1]))

    @staticmethod
    def plans(queryset: QuerySet) -> list[str]:
        """The planner's own pick first; when it reads the trigram indexes, the walk after it. A
        text without 3 letters or digits in a row has no trigram to look up: the trigram indexes
        would be read whole (8.5 s at 10 million calls, deaf to the timeout), so it only walks."""
        if not all(TRIGRAM.search(text) for text in searched_texts(queryset.query.where)):
            return ["walk"]
        plan = query_plan(queryset.order_by().values("pk")[:1])
        if not uses_indexes(plan, TRIGRAM_INDEXES):
            return ["planner"]
        # A window PostgreSQL can walk whole in about the trigram pick's share: walked at once.
        with local_settings(queryset.db, {"enable_bitmapscan": "off"}):
            walk = query_plan(queryset.order_by().values("pk"))
        return ["walk"] if walk["Total Cost"] <= WALK_FIRST_COST else ["planner", "walk"]

    @staticmethod
    def _read_as(queryset: QuerySet, reading: Callable[[QuerySet], Result], plan: str, timeout_ms: int) -> Result:
        values = {"statement_timeout": str(timeout_ms)} | dict.fromkeys(PLAN_SETTINGS[plan], "off")
        with local_settings(queryset.db, values):
            return reading(queryset)


@contextmanager
def local_settings(using: str, values: dict[str, str]) -> Iterator[None]:
    """PostgreSQL settings for the readings inside (reads only), in a transaction (a savepoint
    inside one) that is rolled back after them, which takes the settings with it.

    A setting made local to a savepoint outlives the savepoint once it is released, up to the end
    of the enclosing transaction; so they are not released but rolled back. Nor put back by a
    statement: that statement ran under the reading's own statement_timeout (as short as 1 ms),
    and under load it was cancelled (57014) after a reading that had finished, which then counted
    as a search too long (400). PostgreSQL stops a statement's timeout before it does the work of a
    ROLLBACK (TO SAVEPOINT) (postgres.c, finish_xact_command): 1,600 settings are rolled back under
    a 1 ms timeout in tests/test_search_faults.py. If the rollback still fails, Django closes the
    connection (autocommit) or leaves the enclosing transaction to be rolled back: the settings
    never outlive the readings. What a reading writes is undone with them."""
    calls = ", ".join("set_config(%s, %s, true)" for _ in values)
    with transaction.atomic(using=using):
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT " + calls, [item for pair in values.items() for item in pair])
        yield
        transaction.set_rollback(True, using=using)


def uses_indexes(node: dict, names: frozenset[str]) -> bool:
    """Whether a plan node (EXPLAIN's JSON) or one below it reads one of the indexes `names`."""
    return node.get("Index Name") in names or any(uses_indexes(child, names) for child in node.get("Plans", ()))


def by_ids(queryset: QuerySet, ids: list) -> QuerySet:
    """`queryset` (its order, columns and joins) with its conditions replaced by `pk in ids`: the
    rows of a search whose matches were already found, read through the primary key."""
    rows = queryset.all()
    rows.query.where = WhereNode()
    return rows.filter(pk__in=ids)


def search_to_stream(rows: QuerySet, walked: Callable[[], QuerySet]) -> QuerySet:
    """A search's rows for a reading that cannot be cut short once it has begun (the export's
    stream), decided within the budget first: up to SEARCH_EXACT_COUNT_UP_TO matches are read by
    id (the window is read once); more, through the plan that found the first of them in time
    (`walked()`: the same rows compared on an expression no index covers). Raises SearchTooLong."""
    if not filters_on_text(rows.query.where):
        return rows
    reading = SearchReading()
    ids = reading.first_matches(rows, SEARCH_EXACT_COUNT_UP_TO)
    if len(ids) <= SEARCH_EXACT_COUNT_UP_TO:
        return by_ids(rows, ids)
    return walked() if reading.plan == "walk" else rows


class WalkedPage(Page):
    """A page that knows from its own rows whether another page follows."""

    more = False

    def has_next(self) -> bool:
        return self.more

    def end_index(self) -> int:
        if not self.object_list:
            return 0
        return (self.number - 1) * self.paginator.per_page + len(self.object_list)


class EstimatingPaginator(Paginator):
    """Django's Paginator with the bounded count above; `count_is_estimate` says which count it is."""

    count_is_estimate = False
    exact_count_up_to: int | None = None  # exact_count_limit of the rows
    matched: list | None = None  # a search's matches by id, when the count read all of them

    @cached_property
    def search(self) -> SearchReading | None:
        """The time budget of a `search` list's readings; None for any other list."""
        if isinstance(self.object_list, QuerySet) and filters_on_text(self.object_list.query.where):
            return SearchReading()
        return None

    def _read(self, reading: Callable[[QuerySet], Result]) -> Result:
        return self.search.read(self.object_list, reading) if self.search else reading(self.object_list)

    @cached_property
    def count(self) -> int:
        if not isinstance(self.object_list, QuerySet):
            return len(self.object_list)
        if self.search:
            return self._search_count()
        count, self.count_is_estimate = count_rows(self.object_list, self.exact_count_up_to)
        return count

    def _search_count(self) -> int:
        """A search's count reads the ids of its matches, up to its exact limit plus one. When
        that is all of them, its pages read those rows by id (`matched`) instead of walking the
        window again: a search that matches little reads its window once. Above the limit the
        matches are dense enough for a page to find its rows quickly; the count is estimated."""
        limit = exact_count_limit(self.object_list) if self.exact_count_up_to is None else self.exact_count_up_to
        ids = self.search.first_matches(self.object_list, limit)
        if len(ids) <= limit:
            self.matched = ids
            return len(ids)
        estimate = planner_estimate(self.object_list)
        if estimate is None:  # SQLite: exactly (its windows are small)
            return self._read(lambda rows: rows.count())
        self.count_is_estimate = True
        return max(estimate, limit + 1)

    @cached_property
    def num_pages(self) -> int:
        if self.count == 0 and not self.allow_empty_first_page:
            return 0
        return max(1, math.ceil(self.count / self.per_page))

    def validate_number(self, number) -> int:
        try:
            return super().validate_number(number)
        except EmptyPage:
            number = int(float(number))
            # Past the estimated end page() decides from the rows; past the largest row id no row
            # can be (and the offset would not fit PostgreSQL's bigint: a 500, not a 404).
            if not self.count_is_estimate or number < 1 or (number - 1) * self.per_page > MAX_ROW_ID:
                raise
            return number

    def _rows(self, number: int) -> list:
        """Page `number`'s rows and the next page's first (whether one follows)."""
        bottom = (number - 1) * self.per_page
        if self.matched is not None:
            return list(by_ids(self.object_list, self.matched)[bottom : bottom + self.per_page + 1])
        if isinstance(self.object_list, QuerySet):
            return self._read(lambda rows: list(rows[bottom : bottom + self.per_page + 1]))
        return list(self.object_list[bottom : bottom + self.per_page + 1])

    def page(self, number) -> WalkedPage:
        number = self.validate_number(number)
        rows = self._rows(number)
        if not rows and number > 1:
            raise EmptyPage(self.error_messages["no_results"])
        page = self._get_page(rows[: self.per_page], number, self)
        page.more = len(rows) > self.per_page
        return page

    def get_page(self, number) -> WalkedPage:
        """The logs page: a number past the end shows the last page (Django's rule), or the first
        when the end was only estimated."""
        try:
            return super().get_page(number)
        except EmptyPage:
            return self.page(1)

    def _get_page(self, *args, **kwargs) -> WalkedPage:
        return WalkedPage(*args, **kwargs)
