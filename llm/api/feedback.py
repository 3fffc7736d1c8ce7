"""POST/GET /api/feedback/ and GET /api/feedback/analytics/."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llm import metrics
from llm.api.logs import FeedbackSerializer, StrictPageNumberPagination
from llm.api.metrics import FILTER_PARAMETERS
from llm.filters import filter_logs
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


def feedback_for(params) -> QuerySet[UserFeedback]:
    """Feedback on the calls the shared filters keep (dates apply to the call, not the rating)."""
    logs = filter_logs(params).queryset
    return UserFeedback.objects.filter(request__in=logs.values("id"))


class FeedbackListCreate(generics.ListCreateAPIView):
    """List feedback, newest first (shared filters apply to the rated call); submit one rating."""

    pagination_class = StrictPageNumberPagination

    def get_serializer_class(self):
        return FeedbackCreateSerializer if self.request.method == "POST" else FeedbackSerializer

    def get_queryset(self):
        return feedback_for(self.request.query_params).select_related("request").order_by("-created_at", "-id")

    @extend_schema(request=FeedbackCreateSerializer, responses={201: FeedbackSerializer})
    def post(self, request: Request, *args, **kwargs) -> Response:
        serializer = FeedbackCreateSerializer(data=request.data, context={})
        serializer.is_valid(raise_exception=True)
        feedback = serializer.save()
        return Response(FeedbackSerializer(feedback).data, status=status.HTTP_201_CREATED)

    @extend_schema(parameters=FILTER_PARAMETERS)
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class FeedbackAnalytics(APIView):
    @extend_schema(
        parameters=FILTER_PARAMETERS,
        responses={200: OpenApiResponse(description="thumbs_up, thumbs_down, total, satisfaction_rate, by_model")},
    )
    def get(self, request: Request) -> Response:
        return Response(metrics.feedback_summary(feedback_for(request.query_params)))
