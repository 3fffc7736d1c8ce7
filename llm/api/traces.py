"""GET /api/traces/<trace_id>/: every call of one trace, as a tree, and its context spans
(LLMRequestLog.objects.trace)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llm.api.params import DeclaredParameters
from llm.models import LLMRequestLog
from llm.serializers import TraceSerializer
from llm.traces import normal_trace_id


class TraceView(DeclaredParameters, APIView):
    """Every call of one trace, in time order, with what a page needs to draw it as a tree, and
    the trace's other spans (its context)."""

    required_right = "read"  # the calls' figures and ids, never their text
    renderer_classes = [JSONRenderer]

    @extend_schema(
        responses={
            200: TraceSerializer,
            400: OpenApiResponse(description="Not a 32-character hex trace id."),
            404: OpenApiResponse(description="No call and no span with this trace id."),
        }
    )
    def get(self, request: Request, trace_id: str) -> Response:
        trace_id = normal_trace_id(trace_id)
        if trace_id is None:
            raise exceptions.ValidationError({"trace_id": ["Must be 32 hexadecimal characters."]})
        trace = LLMRequestLog.objects.trace(trace_id)
        if not trace:
            raise exceptions.NotFound("No call and no span with this trace id.")
        return Response(
            {"trace_id": trace_id, "calls": trace.calls, "spans": trace.spans, "truncated": trace.truncated}
        )
