"""GET /api/sessions/, /api/sessions/<session_id>/, /api/users/ and /api/users/<user_id>/: who
the calls come from, per conversation and per user (llm.metrics.sessions, users, session_calls,
user_activity), over the shared filters."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llm import metrics, serializers
from llm.api.base import WindowedList
from llm.api.params import DeclaredParameters
from llm.filters import filter_logs
from llm.ingest_limits import SESSION_ID_MAX_CHARS, USER_ID_MAX_CHARS


def order_parameter(orders: dict, default: str) -> OpenApiParameter:
    return OpenApiParameter(
        "order_by", OpenApiTypes.STR, enum=list(orders), description=f"Largest or latest first (default {default})."
    )


def chosen_order(request: Request, orders: dict, default: str) -> str:
    order_by = request.query_params.get("order_by") or default
    if order_by not in orders:
        raise exceptions.ValidationError({"order_by": [f"One of {', '.join(orders)}."]})
    return order_by


def checked_id(value: str, name: str, max_chars: int) -> str:
    if len(value) > max_chars:
        raise exceptions.ValidationError({name: [f"At most {max_chars} characters."]})
    return value


class GroupedList(WindowedList):
    """A list of groups (sessions, users) summed over the window's calls: the sums, and the
    distinct counts' sorts, get the memory of llm.metrics.aggregate_queries (PostgreSQL)."""

    def list(self, request: Request, *args, **kwargs) -> Response:
        with metrics.aggregate_queries():
            return super().list(request, *args, **kwargs)


class SessionList(GroupedList):
    """Sessions of the window's calls (calls without a session_id left out), latest last call
    first (or costliest): first and last call, calls, users, models, tokens, cost, errors."""

    serializer_class = serializers.SessionRowSerializer
    parameters = (order_parameter(metrics.SESSION_ORDERS, "last_call"),)
    required_right = "read"

    def get_queryset(self):
        order_by = chosen_order(self.request, metrics.SESSION_ORDERS, "last_call")
        self.filter_logs()
        return metrics.sessions(metrics.Selection.of(self.filtered_logs), order_by)


class SessionDetail(DeclaredParameters, APIView):
    """A session's calls in time order: prompts and answers, each call's model, tokens, latency,
    cost, status, ratings and the running cost. Any time: not limited to a window."""

    renderer_classes = [JSONRenderer]
    # The prompts and the answers are text.
    required_right = "read_text"

    @extend_schema(
        responses={
            200: serializers.SessionDetailSerializer,
            404: OpenApiResponse(description="No call with this session id."),
        }
    )
    def get(self, request: Request, session_id: str) -> Response:
        checked_id(session_id, "session_id", SESSION_ID_MAX_CHARS)
        calls, truncated = metrics.session_calls(session_id)
        if not calls:
            raise exceptions.NotFound("No call with this session id.")
        answer = {"session_id": session_id, "calls": calls, "truncated": truncated}
        return Response(serializers.SessionDetailSerializer(answer).data)


class UserList(GroupedList):
    """Users of the window's calls (calls without a user_id left out), costliest first (or
    busiest, or latest seen): calls, sessions, tokens, cost, errors, first and last seen."""

    serializer_class = serializers.UserRowSerializer
    parameters = (order_parameter(metrics.USER_ORDERS, "cost"),)
    required_right = "read"

    def get_queryset(self):
        order_by = chosen_order(self.request, metrics.USER_ORDERS, "cost")
        self.filter_logs()
        return metrics.users(metrics.Selection.of(self.filtered_logs), order_by)


@extend_schema_view(
    get=extend_schema(
        responses={
            200: serializers.UserDetailSerializer,
            400: OpenApiResponse(description="Bad filter."),
            404: OpenApiResponse(description="No call of this user in the window."),
        }
    )
)
class UserDetail(DeclaredParameters, APIView):
    """One user over the window: totals, usage over time, per model, latest sessions, ratings."""

    renderer_classes = [JSONRenderer]
    filtered = True
    required_right = "read"

    def get(self, request: Request, user_id: str) -> Response:
        checked_id(user_id, "user_id", USER_ID_MAX_CHARS)
        params = request.query_params.copy()
        params["user_id"] = user_id  # the path's user, whatever the query string says
        filtered = filter_logs(params)
        group_by = metrics.group_by_for(filtered.end - filtered.start)
        with metrics.aggregate_queries():
            activity = metrics.user_activity(metrics.Selection.of(filtered), group_by)
        if not activity["totals"]["total_requests"]:
            raise exceptions.NotFound("No call of this user in the window.")
        answer = {
            **filtered.window(),
            "percentiles": metrics.percentiles_kind(filtered),
            "group_by": group_by,
            "user_id": user_id,
            **activity,
        }
        return Response(serializers.UserDetailSerializer(answer).data)
