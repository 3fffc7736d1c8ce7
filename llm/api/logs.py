"""GET /api/logs/ (paginated, filtered, searchable), /api/logs/errors/ and /api/logs/<request_id>/.

All three need `read`; a caller without `read_text` gets `prompt_text` and `response_text` as null
(the text is hidden, not only unlinked), and `search`, which looks in the text, answers 403 for them.
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from rest_framework import generics

from llm.api.base import WindowedList
from llm.api.params import SEARCH_PARAMETER, DeclaredParameters
from llm.filters import search_logs
from llm.models import LLMRequestLog, LLMRequestLogQuerySet
from llm.permissions import caller_has, require
from llm.serializers import LogDetailSerializer, LogSerializer


class TextForTheRight:
    """The serializers write the text only for a caller with `read_text` (LogSerializer, `show_text`)."""

    required_right = "read"

    def get_serializer_context(self) -> dict:
        return {**super().get_serializer_context(), "show_text": caller_has(self.request, "read_text")}


class LogList(TextForTheRight, WindowedList):
    """Logs, newest first, over the shared filters; `search` looks in the prompt and the response.

    Without the right `read_text`, `prompt_text` and `response_text` are null and `search` answers 403."""

    serializer_class = LogSerializer
    parameters = (SEARCH_PARAMETER,)

    def base_queryset(self) -> LLMRequestLogQuerySet:
        return LLMRequestLog.objects.all()

    def get_queryset(self) -> LLMRequestLogQuerySet:
        logs = self.filter_logs(self.base_queryset())
        if self.request.query_params.get("search"):
            # Which calls match a word tells what their text holds.
            require(self.request, "read_text")
        return search_logs(logs, self.request.query_params).order_by("-timestamp", "-id")


class ErrorLogList(LogList):
    """Failed calls only, newest first; same filters and search as the log list."""

    def base_queryset(self) -> LLMRequestLogQuerySet:
        return LLMRequestLog.objects.failed()


class LogDetail(TextForTheRight, DeclaredParameters, generics.RetrieveAPIView):
    """One call with its feedback; without the right `read_text`, `prompt_text` and `response_text` are null."""

    serializer_class = LogDetailSerializer

    def get_object(self) -> LLMRequestLog:
        queryset = LLMRequestLog.objects.prefetch_related("feedback")
        return get_object_or_404(queryset, request_id=self.kwargs["request_id"])
