"""POST/GET /api/feedback/ and GET /api/feedback/analytics/."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llm import metrics
from llm.api.logs import FeedbackSerializer, WindowedList
from llm.api.params import DeclaredParameters
from llm.filters import FilteredLogs, filter_logs
from llm.models import LLMRequestLog, UserFeedback

COMMENT_MAX_CHARS = 5_000


class FeedbackCreateSerializer(serializers.Serializer):
    request_id = serializers.UUIDField()
    rating = serializers.ChoiceField(choices=UserFeedback.Rating.choices)
    comment = serializers.CharField(required=False, allow_blank=True, max_length=COMMENT_MAX_CHARS, default="")

    def validate_request_id(self, value):
        log = LLMRequestLog.objects.filter(request_id=value).first()
        if log is None:
            raise serializers.ValidationError("No logged call has this request_id.")
        self.context["log"] = log
        return value

    def create(self, validated_data: dict) -> UserFeedback:
        return UserFeedback.objects.create(
            request=self.context["log"], rating=validated_data["rating"], comment=validated_data["comment"]
        )


def feedback_on(filtered: FilteredLogs) -> QuerySet[UserFeedback]:
    """Feedback on the calls the shared filters keep (dates apply to the call, not the rating)."""
    return UserFeedback.objects.filter(request__in=filtered.queryset.values("id"))


class FeedbackListCreate(WindowedList, generics.CreateAPIView):
    """List feedback, newest first (shared filters apply to the rated call); submit one rating."""

    def get_serializer_class(self):
        return FeedbackCreateSerializer if self.request.method == "POST" else FeedbackSerializer

    def get_queryset(self):
        self.filter_logs()
        return feedback_on(self.filtered_logs).select_related("request").order_by("-created_at", "-id")

    @extend_schema(request=FeedbackCreateSerializer, responses={201: FeedbackSerializer})
    def post(self, request: Request, *args, **kwargs) -> Response:
        serializer = FeedbackCreateSerializer(data=request.data, context={})
        serializer.is_valid(raise_exception=True)
        feedback = serializer.save()
        return Response(FeedbackSerializer(feedback).data, status=status.HTTP_201_CREATED)


class FeedbackAnalytics(DeclaredParameters, APIView):
    filtered = True

    @extend_schema(
        responses={
            200: OpenApiResponse(
                description="start, end, window_defaulted, thumbs_up, thumbs_down, total, satisfaction_rate, by_model"
            )
        },
    )
    def get(self, request: Request) -> Response:
        filtered = filter_logs(request.query_params)
        return Response({**filtered.window(), **metrics.feedback_summary(feedback_on(filtered))})
