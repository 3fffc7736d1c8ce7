"""Calls reported from elsewhere: POST /api/events/ and the OTLP/HTTP receiver POST /v1/traces."""

from __future__ import annotations

import zlib

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer, extend_schema
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceResponse,
)
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llm import events, otlp, throttles
from llm.api.parsers import JSONParser
from llm.auth import APIKeyAuthentication, api_key_from, key_refusal
from llm.ingest_limits import JSONError, parse_json
from llm.models import LLMRequestLog, TraceSpan
from llm.serializers import EventBatchSerializer, EventsAnswerSerializer, EventSerializer

# Largest body accepted, before and after decompression: 1,000 events with sizeable prompts, or
# a large OTLP export. Larger gets 413. We read the body ourselves rather than through
# request.body, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) does not apply here.
MAX_BODY_BYTES = 10 * 1024 * 1024


class BodyTooLarge(Exception):
    pass


class UnsupportedEncoding(Exception):
    pass


class MalformedBody(Exception):
    pass


def read_body(request: HttpRequest, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, decompressed per Content-Encoding (gzip, deflate), at most `limit` bytes."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise BodyTooLarge
    # Reading one byte more than allowed tells a too-large body from one exactly at the limit.
    data = request.read(limit + 1)
    if len(data) > limit:
        raise BodyTooLarge
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding == "gzip":
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decompressor = zlib.decompressobj()
    else:
        raise UnsupportedEncoding(encoding)
    try:
        # max_length bounds the memory a small "zip bomb" body can make us use.
        decompressed = decompressor.decompress(data, limit + 1)
    except zlib.error as error:
        raise MalformedBody(f"Cannot decompress the body: {error}") from error
    if len(decompressed) > limit or decompressor.unconsumed_tail:
        raise BodyTooLarge
    if not decompressor.eof:
        raise MalformedBody("The compressed body is truncated.")
    return decompressed


def media_type(request: HttpRequest) -> str:
    return request.content_type.split(";")[0].strip().lower()


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = f"Request body larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB."
    default_code = "payload_too_large"


EVENT_OR_BATCH = PolymorphicProxySerializer(
    component_name="EventOrBatch",
    serializers=[EventSerializer, EventBatchSerializer],
    resource_type_field_name=None,
)


class EventsView(APIView):
    """Store calls reported by another application: one event or {"events": [...]}."""

    required_right = "ingest"
    renderer_classes = [JSONRenderer]
    # The body is read as JSON below (a form is a 415): the document offers JSON only.
    parser_classes = [JSONParser]

    @extend_schema(
        request=EVENT_OR_BATCH,
        responses={
            201: EventsAnswerSerializer,
            200: OpenApiResponse(EventsAnswerSerializer, description="Every event was already stored."),
            400: OpenApiResponse(description="Invalid input; names each bad event by index, and its fields."),
            413: OpenApiResponse(description="Body over 10 MiB, before or after decompression."),
            415: OpenApiResponse(description="Not JSON, or a Content-Encoding other than gzip or deflate."),
            429: OpenApiResponse(
                description="Over INGEST_RATE_LIMIT events a minute for this API key or user (Retry-After)."
            ),
        },
        description=(
            "One event, or {'events': [...]} with up to 1,000. A batch with any bad event stores nothing. "
            "A request_id already stored is counted in `duplicates` and not stored again."
        ),
    )
    def post(self, request: Request) -> Response:
        if media_type(request) != "application/json":
            raise exceptions.UnsupportedMediaType(request.content_type or "none", detail="Send application/json.")
        try:
            body = read_body(request._request)
        except BodyTooLarge as error:
            raise PayloadTooLarge from error
        except UnsupportedEncoding as error:
            raise exceptions.UnsupportedMediaType(
                str(error), detail="Content-Encoding must be gzip or deflate."
            ) from error
        except MalformedBody as error:
            raise exceptions.ParseError(str(error)) from error
        try:
            payload = parse_json(body)
        except JSONError as error:
            raise exceptions.ParseError(f"Malformed JSON: {error}") from error
        parsed = events.parse_events(payload)
        # INGEST_RATE_LIMIT counts events, checked once the batch is known to be valid.
        throttles.check(throttles.EVENTS, throttles.caller_of(request), len(parsed))
        stored = events.store_events(parsed)
        answer = {"created": stored.created, "duplicates": stored.duplicates, "request_ids": stored.request_ids}
        return Response(answer, status=201 if stored.created else 200)


# OTLP/HTTP: https://opentelemetry.io/docs/specs/otlp/#otlphttp
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def otlp_response(message, encoding: str, status: int = 200, headers: dict | None = None) -> HttpResponse:
    """A protobuf message in the request's encoding, as OTLP/HTTP expects for answers and errors."""
    body = json_format.MessageToJson(message, indent=None).encode() if encoding == JSON else message.SerializeToString()
    return HttpResponse(body, status=status, content_type=encoding, headers=headers)


def otlp_error(encoding: str, status: int, code: int, message: str, headers: dict | None = None) -> HttpResponse:
    return otlp_response(status_pb2.Status(code=code, message=message), encoding, status, headers)


@csrf_exempt  # Bearer key only, never a cookie: no cross-site request can carry the credential.
@require_POST
def otlp_traces(request: HttpRequest) -> HttpResponse:
    """OTLP/HTTP traces receiver: spans that are LLM calls become log rows, the others context spans."""
    content_type = media_type(request)
    encoding = JSON if content_type == JSON else PROTOBUF
    if refusal := key_refusal(request, EventsView.required_right):
        status, why = refusal
        if status == 403:
            return otlp_error(encoding, 403, code_pb2.PERMISSION_DENIED, why)
        return otlp_error(
            encoding, 401, code_pb2.UNAUTHENTICATED, why, {"WWW-Authenticate": APIKeyAuthentication.keyword}
        )
    api_key = api_key_from(request)
    if content_type not in (JSON, PROTOBUF):
        return otlp_error(encoding, 415, code_pb2.INVALID_ARGUMENT, f"Content-Type must be {PROTOBUF} or {JSON}.")
    try:
        body = read_body(request)
    except BodyTooLarge:
        return otlp_error(encoding, 413, code_pb2.INVALID_ARGUMENT, PayloadTooLarge.default_detail)
    except UnsupportedEncoding:
        return otlp_error(encoding, 415, code_pb2.INVALID_ARGUMENT, "Content-Encoding must be gzip or deflate.")
    except MalformedBody as error:
        return otlp_error(encoding, 400, code_pb2.INVALID_ARGUMENT, str(error))
    try:
        decoded = otlp.decode_trace_request(body, json_encoded=encoding == JSON)
    except otlp.OTLPDecodeError as error:
        return otlp_error(encoding, 400, code_pb2.INVALID_ARGUMENT, f"Not an ExportTraceServiceRequest: {error}")
    # INGEST_RATE_LIMIT counts spans; OTLP exporters honour 429 with Retry-After.
    refusal = throttles.use(throttles.EVENTS, throttles.caller_for_key(api_key), throttles.span_count(decoded.message))
    if refusal is not None:
        retry_after = {"Retry-After": str(refusal.wait_seconds)}
        return otlp_error(encoding, 429, code_pb2.RESOURCE_EXHAUSTED, refusal.message, retry_after)

    conversion = otlp.logs_from_trace_request(decoded)
    if conversion.logs:
        LLMRequestLog.objects.record_many(conversion.logs)
    TraceSpan.objects.store(conversion.spans)
    answer = ExportTraceServiceResponse()
    if partial_message := conversion.partial_success_message():
        answer.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=conversion.rejected, error_message=partial_message)
        )
    return otlp_response(answer, encoding)
