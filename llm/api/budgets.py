"""Budgets (CRUD, each answer with its current period's spend and forecast) and the spend
forecast of all calls or one model (GET /api/metrics/forecast/): llm/budgets.py, llm/forecast.py."""

from __future__ import annotations

from collections.abc import Iterable

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llm import budgets, forecast
from llm.api.params import DeclaredParameters
from llm.ingest_limits import MODEL_MAX_CHARS, text_problem
from llm.models import Budget
from llm.serializers import BudgetSerializer, ForecastSerializer

BUDGET_RIGHTS = {"GET": "read", "POST": "manage", "PUT": "manage", "PATCH": "manage", "DELETE": "manage"}


class StatusOf:
    """The current period of each budget answered, computed for all of a list in a few queries
    (llm.budgets.statuses) rather than one budget at a time."""

    def __init__(self) -> None:
        self.now = timezone.now()
        self.known: dict[int, budgets.BudgetStatus] = {}

    def prefetch(self, rows: Iterable[Budget]) -> None:
        self.known.update(budgets.statuses(list(rows), self.now))

    def __call__(self, budget: Budget) -> budgets.BudgetStatus:
        if budget.pk not in self.known:  # created or changed in this request
            self.prefetch([budget])
        return self.known[budget.pk]


class BudgetViewMixin:
    serializer_class = BudgetSerializer
    required_right = BUDGET_RIGHTS

    def get_serializer_context(self) -> dict:
        context = super().get_serializer_context()
        context["status_of"] = self.status_of = getattr(self, "status_of", None) or StatusOf()
        return context


class BudgetList(BudgetViewMixin, DeclaredParameters, generics.ListCreateAPIView):
    """All budgets, each with its current period's spend and forecast (there are few: not paginated)."""

    queryset = Budget.objects.prefetch_related("channels").order_by("id")
    pagination_class = None
    required_right = {"GET": "read", "POST": "manage"}

    def list(self, request: Request, *args, **kwargs) -> Response:
        rows = list(self.get_queryset())
        serializer = self.get_serializer(rows, many=True)
        self.status_of.prefetch(rows)
        return Response(serializer.data)


class BudgetDetail(BudgetViewMixin, DeclaredParameters, generics.RetrieveUpdateDestroyAPIView):
    queryset = Budget.objects.prefetch_related("channels")

    def perform_update(self, serializer: BudgetSerializer) -> None:
        super().perform_update(serializer)
        self.status_of.known.pop(serializer.instance.pk, None)  # its scope or period may have changed


PERIOD_PARAMETER = OpenApiParameter(
    "period", OpenApiTypes.STR, enum=list(forecast.PERIODS), description="day, week or month (default) in TIME_ZONE."
)
MODEL_PARAMETER = OpenApiParameter("model", OpenApiTypes.STR, description="Only this model's calls (default: all).")


class ForecastView(DeclaredParameters, APIView):
    """The projected spend at the end of the current day, week or month: the same hours of the
    previous weeks, scaled by how this period compares so far, with a range (one scenario per
    previous week); a straight line when there is no history yet."""

    parameters = (PERIOD_PARAMETER, MODEL_PARAMETER)
    required_right = "read"

    @extend_schema(responses={200: ForecastSerializer})
    def get(self, request: Request) -> Response:
        period = request.query_params.get("period", "month")
        if period not in forecast.PERIODS:
            raise ValidationError({"period": [f"Must be one of: {', '.join(forecast.PERIODS)}."]})
        model_name = request.query_params.get("model", "")
        problem = f"At most {MODEL_MAX_CHARS} characters." if len(model_name) > MODEL_MAX_CHARS else None
        if problem := problem or text_problem(model_name):
            raise ValidationError({"model": [problem]})
        scope = forecast.everything(model_name)
        found = forecast.forecasts([scope], period, timezone.now())[scope]
        answer = {
            "period": period,
            "model": model_name or None,
            "start": found.start,
            "end": found.end,
            "spent_so_far": found.spent_so_far,
            "forecast": found.forecast,
            "low": found.low,
            "high": found.high,
            "method": found.method,
            "weeks": found.weeks,
            "scale": found.scale,
        }
        return Response(ForecastSerializer(answer).data)
