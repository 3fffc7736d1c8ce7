"""The pagination of every API list (REST_FRAMEWORK["DEFAULT_PAGINATION_CLASS"]).

Its own module: DRF's generics read that setting while they are imported, so this module must
not import them (llm/api/base.py, which does, would close the circle).
"""

from __future__ import annotations

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response

from llm.paging import EXACT_COUNT_UP_TO, SEARCH_EXACT_COUNT_UP_TO, EstimatingPaginator

MAX_PAGE_SIZE = 500


class StrictPageNumberPagination(PageNumberPagination):
    """Every paginated list's pagination (REST_FRAMEWORK["DEFAULT_PAGINATION_CLASS"]).

    DRF caps a too large page_size silently; we answer 400, naming the field, so a client that
    asked for 1,000 rows does not take 500 for the whole list.

    `count` is exact up to llm.paging.EXACT_COUNT_UP_TO rows (SEARCH_EXACT_COUNT_UP_TO with
    `search`) and PostgreSQL's estimate above (`count_is_estimate`); `next` is there exactly while
    rows remain (see llm/paging.py).
    """

    django_paginator_class = EstimatingPaginator
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE
    page_size_query_description = f"Rows per page, 1 to {MAX_PAGE_SIZE} (default 50); outside that: 400."

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] |= {"minimum": 1, "maximum": self.max_page_size}
        return parameters

    def get_page_size(self, request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            raise ValidationError({"page_size": ["A whole number is required."]}) from None
        if not 1 <= size <= self.max_page_size:
            raise ValidationError({"page_size": [f"Must be between 1 and {self.max_page_size}."]})
        return size

    def paginate_queryset(self, queryset, request, view=None):
        # A page that is not a number is bad input (400); a number past the end is a 404.
        page = request.query_params.get(self.page_query_param)
        if page is not None and page not in self.last_page_strings and not (page.isdigit() and int(page) >= 1):
            raise ValidationError({"page": ["A whole number from 1 is required."]})
        return super().paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data) -> Response:
        response = super().get_paginated_response(data)
        rows = list(response.data.items())
        rows.insert(1, ("count_is_estimate", self.page.paginator.count_is_estimate))
        response.data = dict(rows)
        return response

    def get_paginated_response_schema(self, schema: dict) -> dict:
        paginated = super().get_paginated_response_schema(schema)
        properties = list(paginated["properties"].items())
        estimate = {
            "type": "boolean",
            "description": f"True when `count` is PostgreSQL's estimate: above {EXACT_COUNT_UP_TO:,} rows, or above "
            f"{SEARCH_EXACT_COUNT_UP_TO:,} matches with `search` (an estimate is never below that limit plus one). "
            "Up to the limit, and always on SQLite, `count` is exact. `next` is exact either way.",
        }
        properties.insert(1, ("count_is_estimate", estimate))
        paginated["properties"] = dict(properties)
        paginated["required"] = [*paginated.get("required", []), "count_is_estimate"]
        return paginated


class WindowedPagination(StrictPageNumberPagination):
    """A page of a filtered list states its window (`start`, `end`, `window_defaulted`) next to `count`."""

    def paginate_queryset(self, queryset, request, view=None):
        self.window = view.filtered_logs.window()
        return super().paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data) -> Response:
        response = super().get_paginated_response(data)
        response.data = {**self.window, **response.data}
        return response

    def get_paginated_response_schema(self, schema: dict) -> dict:
        paginated = super().get_paginated_response_schema(schema)
        paginated["properties"] = {
            "start": {"type": "string", "format": "date-time"},
            "end": {"type": "string", "format": "date-time"},
            "window_defaulted": {"type": "boolean"},
            **paginated["properties"],
        }
        paginated["required"] = ["start", "end", "window_defaulted", *paginated.get("required", [])]
        return paginated
