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
"""

from __future__ import annotations

import json
import math

from django.core.paginator import EmptyPage, Page, Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils.functional import cached_property

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


def filters_on_text(node: object) -> bool:
    """Whether a query's WHERE (a node of it) tests the prompt or response text (`search`)."""
    for child in getattr(node, "children", ()):
        target = getattr(getattr(child, "lhs", None), "target", None)
        if getattr(target, "name", None) in TEXT_FIELDS or filters_on_text(child):
            return True
    return False


def exact_count_limit(queryset: QuerySet) -> int:
    """Up to how many rows `queryset` is counted exactly (see above)."""
    return SEARCH_EXACT_COUNT_UP_TO if filters_on_text(queryset.query.where) else EXACT_COUNT_UP_TO


def planner_estimate(queryset: QuerySet) -> int | None:
    """PostgreSQL's estimate of how many rows `queryset` answers; None elsewhere or when unknown."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    sql, params = queryset.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    try:
        return int(plan[0]["Plan"]["Plan Rows"])
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

    @cached_property
    def count(self) -> int:
        if not isinstance(self.object_list, QuerySet):
            return len(self.object_list)
        count, self.count_is_estimate = count_rows(self.object_list, self.exact_count_up_to)
        return count

    @cached_property
    def num_pages(self) -> int:
        if self.count == 0 and not self.allow_empty_first_page:
            return 0
        return max(1, math.ceil(self.count / self.per_page))

    def validate_number(self, number) -> int:
        try:
            return super().validate_number(number)
        except EmptyPage:
            if not self.count_is_estimate or int(float(number)) < 1:
                raise
            return int(float(number))  # past the estimated end: page() decides from the rows

    def page(self, number) -> WalkedPage:
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        rows = list(self.object_list[bottom : bottom + self.per_page + 1])
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
