"""POST/GET /api/feedback/ and GET /api/feedback/analytics/."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llm import metrics
from llm.api.base import WindowedList
from llm.api.params import DeclaredParameters
from llm.filters import FilteredLogs, filter_logs
from llm.models import APIKey, UserFeedback
from llm.serializers import FeedbackAnalyticsSerializer, FeedbackCreateSerializer, FeedbackSerializer


def feedback_on(filtered: FilteredLogs) -> QuerySet[UserFeedback]:
    """Feedback on the calls the shared filters keep (dates apply to the call, not the rating).
    Filtered by window and model only, from the call's time and model copied onto each rating."""
    if filtered.other_filters or filtered.status:
        return UserFeedback.objects.filter(request__in=filtered.queryset.values("id"))
    return UserFeedback.objects.of_calls(filtered.start, filtered.end, filtered.model)


def default_rater(request: Request) -> str:
    """The logged-in user, or the API key (one rating per call for an app that names no rater)."""
    if isinstance(request.auth, APIKey):
        return f"key:{request.auth.name}"
    return request.user.get_username()


class FeedbackListCreate(WindowedList, generics.CreateAPIView):
    """List feedback, newest first (shared filters apply to the rated call); submit one rating."""

    # Ratings and comments hold no prompt text: reading them is `read`; rating is the Analyst's.
    required_right = {"GET": "read", "POST": "feedback"}

    def get_serializer_class(self):
        return FeedbackCreateSerializer if self.request.method == "POST" else FeedbackSerializer

    def get_queryset(self):
        self.filter_logs()
        return feedback_on(self.filtered_logs).select_related("request").order_by("-created_at", "-id")

    @extend_schema(
        request=FeedbackCreateSerializer,
        responses={
            201: OpenApiResponse(FeedbackSerializer, description="A first rating of this call by this rater."),
            200: OpenApiResponse(FeedbackSerializer, description="This rater's earlier rating, replaced."),
        },
    )
    def post(self, request: Request, *args, **kwargs) -> Response:
        serializer = FeedbackCreateSerializer(data=request.data, context={})
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        rater = data["rater"].strip() or default_rater(request)
        feedback, created = UserFeedback.objects.rate(serializer.context["log"], rater, data["rating"], data["comment"])
        answer_status = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(FeedbackSerializer(feedback).data, status=answer_status)


class FeedbackAnalytics(DeclaredParameters, APIView):
    required_right = "read"
    filtered = True

    """Thumbs up and down, their total and satisfaction rate, overall and per model of the rated call."""

    @extend_schema(responses={200: FeedbackAnalyticsSerializer})
    def get(self, request: Request) -> Response:
        filtered = filter_logs(request.query_params)
        return Response({**filtered.window(), **metrics.feedback_summary(feedback_on(filtered))})
