"""What every API view module may import besides llm/api/params.py and llm/api/pagination.py
(none imports another view module): the list over the shared filters that states its window."""

from __future__ import annotations

from rest_framework import generics

from llm.api.pagination import WindowedPagination
from llm.api.params import DeclaredParameters
from llm.filters import FilteredLogs, filter_logs
from llm.models import LLMRequestLogQuerySet


class WindowedList(DeclaredParameters, generics.ListAPIView):
    """A paginated list over the shared filters and their window (llm.filters.WINDOW_RULE)."""

    pagination_class = WindowedPagination
    filtered = True
    filtered_logs: FilteredLogs

    def filter_logs(self, queryset: LLMRequestLogQuerySet | None = None) -> LLMRequestLogQuerySet:
        self.filtered_logs = filter_logs(self.request.query_params, queryset=queryset)
        return self.filtered_logs.queryset
