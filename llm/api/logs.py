"""GET /api/logs/ (paginated, filtered, searchable), /api/logs/errors/ and /api/logs/<request_id>/."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from rest_framework import generics, serializers
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response

from llm.api.params import SEARCH_PARAMETER, DeclaredParameters
from llm.filters import FilteredLogs, filter_logs, search_logs
from llm.models import LLMRequestLog, LLMRequestLogQuerySet, UserFeedback

LOG_FIELDS = [
    "request_id",
    "timestamp",
    "source",
    "provider",
    "model_name",
    "user_id",
    "session_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "prompt_text",
    "response_text",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "latency_ms",
    "ttft_ms",
    "cost_estimate",
    "status",
    "error_type",
    "error_message",
    "finish_reason",
    "temperature",
    "max_tokens",
    "tags",
]


class LogSerializer(serializers.ModelSerializer):
    # A JSON number, like every cost in the API (a ModelSerializer would make the Decimal a string).
    cost_estimate = serializers.DecimalField(max_digits=20, decimal_places=10, coerce_to_string=False, read_only=True)

    class Meta:
        model = LLMRequestLog
        fields = LOG_FIELDS
        read_only_fields = LOG_FIELDS


class FeedbackSerializer(serializers.ModelSerializer):
    request_id = serializers.UUIDField(source="request.request_id")

    class Meta:
        model = UserFeedback
        fields = ["id", "request_id", "rating", "comment", "rater", "created_at"]
        read_only_fields = ["id", "created_at"]


class LogDetailSerializer(LogSerializer):
    feedback = FeedbackSerializer(many=True, read_only=True)

    class Meta(LogSerializer.Meta):
        fields = [*LOG_FIELDS, "feedback"]
        read_only_fields = fields


class StrictPageNumberPagination(PageNumberPagination):
    """DRF caps a too large page_size silently; we say so, naming the field."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

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


class WindowedList(DeclaredParameters, generics.ListAPIView):
    """A paginated list over the shared filters and their window (llm.filters.WINDOW_RULE)."""

    pagination_class = WindowedPagination
    filtered = True
    filtered_logs: FilteredLogs

    def filter_logs(self, queryset: LLMRequestLogQuerySet | None = None) -> LLMRequestLogQuerySet:
        self.filtered_logs = filter_logs(self.request.query_params, queryset=queryset)
        return self.filtered_logs.queryset


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
