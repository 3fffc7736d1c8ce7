"""GET /api/logs/ (paginated, filtered, searchable), /api/logs/errors/ and /api/logs/<request_id>/."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from rest_framework import generics

from llm.api.base import WindowedList
from llm.api.params import SEARCH_PARAMETER, DeclaredParameters
from llm.filters import search_logs
from llm.models import LLMRequestLog, LLMRequestLogQuerySet
from llm.serializers import LogDetailSerializer, LogSerializer


class LogList(WindowedList):
    """Logs, newest first, over the shared filters; `search` looks in the prompt and the response."""

    serializer_class = LogSerializer
    parameters = (SEARCH_PARAMETER,)

    def base_queryset(self) -> LLMRequestLogQuerySet:
        return LLMRequestLog.objects.all()

    def get_queryset(self) -> LLMRequestLogQuerySet:
        logs = self.filter_logs(self.base_queryset())
        return search_logs(logs, self.request.query_params).order_by("-timestamp", "-id")


class ErrorLogList(LogList):
    """Failed calls only, newest first; same filters and search as the log list."""

    def base_queryset(self) -> LLMRequestLogQuerySet:
        return LLMRequestLog.objects.failed()


class LogDetail(DeclaredParameters, generics.RetrieveAPIView):
    """One call with its feedback."""

    serializer_class = LogDetailSerializer

    def get_object(self) -> LLMRequestLog:
        queryset = LLMRequestLog.objects.prefetch_related("feedback")
        return get_object_or_404(queryset, request_id=self.kwargs["request_id"])
