"""POST /v1/traces: the real OpenTelemetry SDK exports GenAI spans to the live test server."""

from __future__ import annotations

import gzip
import json
import time
import uuid
import zlib
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode, set_span_in_context

from llm.api.ingest import MAX_BODY_BYTES
from llm.models import LLMRequestLog, ModelPrice, TraceSpan
from llm.otlp import OTLP_REQUEST_ID_NAMESPACE, error_type_for

URL = "/v1/traces"
# A fixed start, in nanoseconds since the epoch, so latencies are exact.
T0 = int(datetime(2025, 6, 1, 12, 0, tzinfo=UTC).timestamp()) * 1_000_000_000
MS = 1_000_000

INPUT_MESSAGES = json.dumps(
    [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Capital of France?"}]},
    ]
)
OUTPUT_MESSAGES = json.dumps(
    [{"role": "assistant", "parts": [{"type": "text", "content": "Paris."}], "finish_reason": "stop"}]
)


def record_genai_spans() -> list:
    """Finished SDK spans: an HTTP handler, calls with current and older GenAI attributes, an
    error, and an agent span (which wraps calls and is not one)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")

    handler = tracer.start_span("POST /ask", start_time=T0)
    in_handler = set_span_in_context(handler)
    current = tracer.start_span(
        "chat llama-3.3-70b-versatile",
        context=in_handler,
        start_time=T0 + 10 * MS,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "groq",
            "gen_ai.request.model": "llama-3.3-70b-versatile",
            "gen_ai.response.model": "llama-3.3-70b-versatile",
            "gen_ai.usage.input_tokens": 2_000,
            "gen_ai.usage.output_tokens": 1_000,
            "gen_ai.response.finish_reasons": ("stop",),
            "gen_ai.request.temperature": 0.2,
            "gen_ai.request.max_tokens": 512,
            "gen_ai.conversation.id": "conv-1",
            "user.id": "u-1",
            "gen_ai.input.messages": INPUT_MESSAGES,
            "gen_ai.output.messages": OUTPUT_MESSAGES,
        },
    )
    older = tracer.start_span(
        "openai.chat",
        context=set_span_in_context(current),
        start_time=T0 + 20 * MS,
        attributes={
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.prompt_tokens": 10,
            "gen_ai.usage.completion_tokens": 5,
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "Say hi",
            "gen_ai.completion.0.content": "Hi!",
            "gen_ai.completion.0.finish_reason": "length",
            "enduser.id": "u-2",
            "session.id": "sess-2",
        },
    )
    older.end(end_time=T0 + 270 * MS)
    current.end(end_time=T0 + 1_510 * MS)

    failed = tracer.start_span(
        "chat llama-3.1-8b-instant",
        context=in_handler,
        start_time=T0 + 1_600 * MS,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "groq",
            "gen_ai.request.model": "llama-3.1-8b-instant",
            "error.type": "groq.RateLimitError",
        },
    )
    failed.add_event("gen_ai.user.message", {"content": "Tell me a joke"})
    failed.record_exception(RuntimeError("Rate limit reached for model"))
    failed.set_status(Status(StatusCode.ERROR, "Rate limit reached for model"))
    failed.end(end_time=T0 + 1_650 * MS)

    agent = tracer.start_span(
        "invoke_agent helper",
        context=in_handler,
        start_time=T0 + 1_700 * MS,
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "llama-3.1-8b-instant"},
    )
    agent.end(end_time=T0 + 1_800 * MS)
    handler.end(end_time=T0 + 2_000 * MS)
    return list(memory.get_finished_spans())


def exporter_for(live_server, api_key: str, compression=Compression.NoCompression) -> OTLPSpanExporter:
    return OTLPSpanExporter(
        endpoint=live_server.url + URL,
        headers={"Authorization": f"Bearer {api_key}"},
        compression=compression,
        timeout=10,
    )


def expected_request_id(span) -> uuid.UUID:
    context = span.get_span_context()
    return uuid.uuid5(OTLP_REQUEST_ID_NAMESPACE, f"{context.trace_id:032x}{context.span_id:016x}")


def by_name(spans) -> dict:
    return {span.name: span for span in spans}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_sdk_export_stores_genai_spans_with_both_attribute_generations(live_server, api_key, model_prices, compression):
    # gpt-4o-mini unpriced here (the seeded OpenAI prices are there or not, by the tests run before).
    ModelPrice.objects.filter(model_name__startswith="gpt-4o").delete()
    spans = record_genai_spans()
    exporter = exporter_for(live_server, api_key, compression)
    assert exporter.export(spans) == SpanExportResult.SUCCESS

    named = by_name(spans)
    trace_id = f"{named['POST /ask'].context.trace_id:032x}"
    rows = {row.span_id: row for row in LLMRequestLog.objects.all()}
    # The HTTP handler and the agent span are not LLM calls: they are the trace's context.
    assert len(rows) == 3
    assert sorted(TraceSpan.objects.values_list("name", flat=True)) == ["POST /ask", "invoke_agent helper"]

    current = rows[f"{named['chat llama-3.3-70b-versatile'].context.span_id:016x}"]
    assert current.request_id == expected_request_id(named["chat llama-3.3-70b-versatile"])
    assert (current.source, current.provider, current.model_name) == ("otlp", "groq", "llama-3.3-70b-versatile")
    assert current.timestamp == datetime(2025, 6, 1, 12, 0, 0, 10_000, tzinfo=UTC)
    assert current.latency_ms == 1_500.0
    assert (current.prompt_tokens, current.completion_tokens, current.total_tokens) == (2_000, 1_000, 3_000)
    assert current.cost_estimate == (2_000 * Decimal("0.59") + 1_000 * Decimal("0.79")) / 1_000_000
    assert (current.status, current.error_type, current.finish_reason) == ("success", "", "stop")
    assert (current.temperature, current.max_tokens) == (0.2, 512)
    assert (current.user_id, current.session_id) == ("u-1", "conv-1")
    assert current.prompt_text == "system: Be brief.\n\nuser: Capital of France?"
    assert current.response_text == "Paris."
    assert (current.trace_id, current.parent_span_id) == (trace_id, f"{named['POST /ask'].context.span_id:016x}")
    assert current.tags == {"service.name": "checkout", "operation": "chat"}

    older = rows[f"{named['openai.chat'].context.span_id:016x}"]
    assert (older.provider, older.model_name, older.latency_ms) == ("openai", "gpt-4o-mini", 250.0)
    assert (older.prompt_tokens, older.completion_tokens, older.total_tokens) == (10, 5, 15)
    assert older.cost_estimate == Decimal(0)  # no price for this model
    assert (older.prompt_text, older.response_text, older.finish_reason) == ("Say hi", "Hi!", "length")
    assert (older.user_id, older.session_id) == ("u-2", "sess-2")
    assert older.parent_span_id == current.span_id and older.trace_id == trace_id
    assert older.tags == {"service.name": "checkout"}

    failed = rows[f"{named['chat llama-3.1-8b-instant'].context.span_id:016x}"]
    assert (failed.status, failed.error_type) == ("error", "rate_limit")
    assert failed.error_message == "Rate limit reached for model"
    assert (failed.prompt_text, failed.latency_ms, failed.total_tokens) == ("Tell me a joke", 50.0, 0)

    # The exporter retries on its own; a span sent again is not stored twice.
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    assert (LLMRequestLog.objects.count(), TraceSpan.objects.count()) == (3, 2)


@pytest.mark.django_db(transaction=True)
def test_sdk_export_without_the_key_is_refused(live_server, api_key):
    exporter = OTLPSpanExporter(endpoint=live_server.url + URL, timeout=10)
    assert exporter.export(record_genai_spans()) == SpanExportResult.FAILURE
    assert LLMRequestLog.objects.count() == 0


# Requests built by hand, through Django's test client.


def protobuf_body(spans) -> bytes:
    return encode_spans(spans).SerializeToString()


def otlp_json_span(**overrides) -> dict:
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "parentSpanId": "eee19b7ec3c1b173",
        "name": "chat qwen/qwen3-32b",
        "kind": 3,
        "startTimeUnixNano": str(T0),
        "endTimeUnixNano": str(T0 + 420 * MS),
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.provider.name", "value": {"stringValue": "groq"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "qwen/qwen3-32b"}},
            # OTLP/JSON sends 64-bit integers as strings; numbers are allowed too.
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1000"}},
            {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 3000}},
            {
                "key": "gen_ai.response.finish_reasons",
                "value": {"arrayValue": {"values": [{"stringValue": "stop"}, {"stringValue": "stop"}]}},
            },
        ],
        "events": [
            {"timeUnixNano": str(T0), "name": "gen_ai.content.prompt", "attributes": [
                {"key": "gen_ai.prompt", "value": {"stringValue": "Why is the sky blue?"}}
            ]},
            {"timeUnixNano": str(T0), "name": "gen_ai.choice", "attributes": [
                {"key": "message", "value": {"kvlistValue": {"values": [
                    {"key": "role", "value": {"stringValue": "assistant"}},
                    {"key": "content", "value": {"stringValue": "Rayleigh scattering."}},
                ]}}}
            ]},
        ],
        "status": {},
    }  # fmt: skip
    span.update(overrides)
    return span


def otlp_json(*spans: dict) -> dict:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "search"}}]},
                "scopeSpans": [{"scope": {"name": "manual"}, "spans": list(spans)}],
            }
        ]
    }


def post_json(client, document, **extra):
    return client.post(URL, json.dumps(document), content_type="application/json", **extra)


@pytest.fixture
def bearer(api_key) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {api_key}"}


@pytest.mark.django_db
def test_json_encoding_with_hex_ids_is_stored(client, bearer):
    response = post_json(client, otlp_json(otlp_json_span()), **bearer)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json() == {}  # full success: no partialSuccess

    row = LLMRequestLog.objects.get()
    assert (row.trace_id, row.span_id, row.parent_span_id) == (
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
        "eee19b7ec3c1b173",
    )
    assert row.request_id == uuid.uuid5(OTLP_REQUEST_ID_NAMESPACE, "5b8efff798038103d269b633813fc60ceee19b7ec3c1b174")
    assert (row.model_name, row.prompt_tokens, row.completion_tokens, row.latency_ms) == (
        "qwen/qwen3-32b",
        1000,
        3000,
        420,
    )
    assert row.cost_estimate == (1_000 * Decimal("0.29") + 3_000 * Decimal("0.59")) / 1_000_000
    assert (row.prompt_text, row.response_text, row.finish_reason) == (
        "Why is the sky blue?",
        "Rayleigh scattering.",
        "stop",
    )
    assert row.tags == {"service.name": "search", "operation": "chat"}


@pytest.mark.django_db
def test_gzip_json_is_accepted(client, bearer):
    body = gzip.compress(json.dumps(otlp_json(otlp_json_span())).encode())
    response = client.post(URL, body, content_type="application/json", HTTP_CONTENT_ENCODING="gzip", **bearer)
    assert response.status_code == 200, response.content
    assert LLMRequestLog.objects.count() == 1


@pytest.mark.django_db
def test_deflate_json_is_accepted(client, bearer):
    body = zlib.compress(json.dumps(otlp_json(otlp_json_span())).encode())
    response = client.post(URL, body, content_type="application/json", HTTP_CONTENT_ENCODING="deflate", **bearer)
    assert response.status_code == 200, response.content
    assert LLMRequestLog.objects.count() == 1


@pytest.mark.django_db
def test_gzip_that_is_not_gzip_is_400(client, bearer):
    body = json.dumps(otlp_json(otlp_json_span())).encode()
    response = client.post(URL, body, content_type="application/json", HTTP_CONTENT_ENCODING="gzip", **bearer)
    assert response.status_code == 400 and "decompress" in response.json()["message"]


@pytest.mark.django_db
def test_gzip_protobuf_is_accepted(client, bearer):
    body = gzip.compress(protobuf_body(record_genai_spans()))
    response = client.post(URL, body, content_type="application/x-protobuf", HTTP_CONTENT_ENCODING="gzip", **bearer)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-protobuf"
    assert LLMRequestLog.objects.count() == 3
    # Nothing was rejected: the HTTP handler and the agent span are kept as the trace's context.
    partial = ExportTraceServiceResponse.FromString(response.content).partial_success
    assert (partial.rejected_spans, partial.error_message) == (0, "")
    assert sorted(TraceSpan.objects.values_list("name", flat=True)) == ["POST /ask", "invoke_agent helper"]


@pytest.mark.django_db
def test_broken_genai_spans_are_rejected_and_counted_the_rest_stored(client, bearer):
    good = otlp_json_span()
    negative_tokens = otlp_json_span(spanId="0000000000000002")
    negative_tokens["attributes"] = [
        {"key": "gen_ai.request.model", "value": {"stringValue": "m"}},
        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "-5"}},
    ]
    backwards = otlp_json_span(spanId="0000000000000003", endTimeUnixNano=str(T0 - 1))
    short_trace = otlp_json_span(spanId="0000000000000004", traceId="abcd")
    not_genai = otlp_json_span(spanId="0000000000000005", attributes=[])
    response = post_json(client, otlp_json(good, negative_tokens, backwards, short_trace, not_genai), **bearer)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 3
    assert "gen_ai.usage.input_tokens" in partial["errorMessage"] and "ends before it starts" in partial["errorMessage"]
    assert partial["errorMessage"].startswith("3 span(s) rejected: ")
    assert list(LLMRequestLog.objects.values_list("span_id", flat=True)) == ["eee19b7ec3c1b174"]
    # The span without a model is not a call: it is kept as context.
    assert list(TraceSpan.objects.values_list("span_id", flat=True)) == ["0000000000000005"]


@pytest.mark.django_db
def test_protobuf_answer_carries_partial_success(client, bearer):
    spans = record_genai_spans()
    request = encode_spans(spans)
    # Break one GenAI span's id: it is rejected, the others are stored.
    target = next(s for s in request.resource_spans[0].scope_spans[0].spans if s.name == "openai.chat")
    target.span_id = b"\x01\x02"
    response = client.post(URL, request.SerializeToString(), content_type="application/x-protobuf", **bearer)
    assert response.status_code == 200
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 1
    assert "span_id must be 8 bytes" in answer.partial_success.error_message
    assert LLMRequestLog.objects.count() == 2


@pytest.mark.django_db
def test_malformed_protobuf_is_400_with_a_status_message(client, bearer):
    valid = protobuf_body(record_genai_spans())
    for body in (valid[: len(valid) // 2], b"\xff\xff\xff\xff", b"\x0a\x05abc"):
        response = client.post(URL, body, content_type="application/x-protobuf", **bearer)
        assert response.status_code == 400, body
        status = status_pb2.Status.FromString(response.content)
        assert status.code == code_pb2.INVALID_ARGUMENT and "ExportTraceServiceRequest" in status.message
    assert LLMRequestLog.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        json.dumps({"resourceSpans": {"not": "a list"}}).encode(),
    ],
)
def test_malformed_json_is_400(client, bearer, body):
    """A body that is no export at all; a bad span in a good export is rejected alone
    (tests/test_hostile_input.py)."""
    response = client.post(URL, body, content_type="application/json", **bearer)
    assert response.status_code == 400
    assert response.json()["code"] == code_pb2.INVALID_ARGUMENT
    assert LLMRequestLog.objects.count() == 0


@pytest.mark.django_db
def test_missing_or_wrong_key_is_401(client):
    document = otlp_json(otlp_json_span())
    assert post_json(client, document).status_code == 401
    response = post_json(client, document, HTTP_AUTHORIZATION="Bearer llmo_nope")
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Bearer"
    assert response.json()["code"] == code_pb2.UNAUTHENTICATED
    assert LLMRequestLog.objects.count() == 0


@pytest.mark.django_db
def test_a_logged_in_session_is_not_enough(logged_in_client):
    # Bearer only: the endpoint is CSRF-exempt, so a cookie must not authenticate it.
    assert post_json(logged_in_client, otlp_json(otlp_json_span())).status_code == 401


@pytest.mark.django_db
def test_other_content_types_and_encodings_are_415(client, bearer):
    assert client.post(URL, b"x", content_type="text/plain", **bearer).status_code == 415
    body = json.dumps(otlp_json(otlp_json_span()))
    assert (
        client.post(URL, body, content_type="application/json", HTTP_CONTENT_ENCODING="br", **bearer).status_code == 415
    )


@pytest.mark.django_db
def test_oversized_body_is_413(client, bearer):
    body = gzip.compress(b"\x00" * (MAX_BODY_BYTES + 1))
    response = client.post(URL, body, content_type="application/x-protobuf", HTTP_CONTENT_ENCODING="gzip", **bearer)
    assert response.status_code == 413
    response = client.post(
        URL, b"x", content_type="application/x-protobuf", CONTENT_LENGTH=str(MAX_BODY_BYTES + 1), **bearer
    )
    assert response.status_code == 413


@pytest.mark.django_db
def test_get_is_405(client, bearer):
    assert client.get(URL, **bearer).status_code == 405


@pytest.mark.django_db
def test_span_far_in_the_future_is_rejected(client, bearer):
    future = (time.time_ns() // MS + 60 * 60 * 1000) * MS
    span = otlp_json_span(startTimeUnixNano=str(future), endTimeUnixNano=str(future + MS))
    response = post_json(client, otlp_json(span), **bearer)
    assert int(response.json()["partialSuccess"]["rejectedSpans"]) == 1
    assert LLMRequestLog.objects.count() == 0


@pytest.mark.parametrize(
    ("error_name", "error_type"),
    [
        ("timeout", "timeout"),
        ("openai.APITimeoutError", "timeout"),
        ("httpx.ConnectTimeout", "timeout"),
        ("504", "timeout"),
        ("groq.RateLimitError", "rate_limit"),
        ("429", "rate_limit"),
        ("RESOURCE_EXHAUSTED", "rate_limit"),
        ("openai.AuthenticationError", "authentication"),
        ("PermissionDeniedError", "authentication"),
        ("401", "authentication"),
        ("403", "authentication"),
        ("openai.APIConnectionError", "connection_error"),
        ("ConnectionResetError", "connection_error"),
        ("InternalServerError", "server_error"),
        ("ServiceUnavailableError", "server_error"),
        ("503", "server_error"),
        ("BadRequestError", "bad_request"),
        ("NotFoundError", "bad_request"),
        ("UnprocessableEntityError", "bad_request"),
        ("404", "bad_request"),
        ("_OTHER", "other"),
        ("ValueError", "other"),
        ("", "other"),
    ],
)
def test_error_type_maps_otel_error_names(error_name, error_type):
    assert error_type_for(error_name) == error_type
