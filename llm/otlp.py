"""Calls reported as OpenTelemetry spans through the OTLP/HTTP receiver (POST /v1/traces):
decoding the request (protobuf or JSON), converting the spans that are LLM calls, in any dialect
`llm/otlp_dialects.py` knows, to log rows, and the others to context spans (`TraceSpan`) for the
trace's waterfall.

Rows are unsaved `LLMRequestLog`s the receiver stores through `LLMRequestLog.objects.record_many`,
like the events API (`llm/events.py`); both share the limits in `llm/ingest_limits.py`.
"""

from __future__ import annotations

import base64
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from llm import otlp_dialects as dialects
from llm.ingest_limits import (
    EPOCH,
    ERROR_MESSAGE_MAX_CHARS,
    FINISH_REASON_MAX_CHARS,
    FUTURE_TOLERANCE,
    FUTURE_TOLERANCE_TEXT,
    MAX_COUNT,
    MAX_LATENCY_MS,
    MODEL_MAX_CHARS,
    PROVIDER_MAX_CHARS,
    SESSION_ID_MAX_CHARS,
    TAG_VALUE_MAX_CHARS,
    USER_ID_MAX_CHARS,
    fill_ids_from_tags,
    finite_problem,
    parse_json,
    text_problem,
)
from llm.models import LLMRequestLog, TraceSpan
from llm.row_insert import RowShape

# Fixed namespace for request ids derived from (trace_id, span_id): a re-sent span keeps its id.
OTLP_REQUEST_ID_NAMESPACE = uuid.UUID("6b1d8c52-8f3e-4e0c-9a57-2f4d3c1b0e71")
MAX_REJECTION_REASONS = 5


class OTLPDecodeError(ValueError):
    """The body is not an ExportTraceServiceRequest in the announced encoding."""


class SpanRejected(ValueError):
    """A span that cannot be stored; counted in partial_success.rejected_spans, with the reason."""


@dataclass
class DecodedRequest:
    message: ExportTraceServiceRequest
    # Spans refused while decoding (OTLP/JSON only), each with its reason.
    rejected: list[str] = field(default_factory=list)


def decode_trace_request(body: bytes, *, json_encoded: bool) -> DecodedRequest:
    """The request's spans. A body that is not an export at all raises OTLPDecodeError; in
    OTLP/JSON, a span (or its resource or scope) that protobuf's JSON mapping refuses, such as an
    unpaired surrogate or an integer beyond 64 bits, is rejected alone.

    A protobuf body is decoded whole: protobuf refuses a message with invalid UTF-8 anywhere.
    """
    try:
        if json_encoded:
            document = parse_json(body)
            if not isinstance(document, dict):
                raise OTLPDecodeError("Expected a JSON object.")
            return _request_from_json(document)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
    except OTLPDecodeError:
        raise
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as error:
        raise OTLPDecodeError(str(error) or error.__class__.__name__) from error
    return DecodedRequest(message)


ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
RESOURCE_CHILDREN = ("scopeSpans", "scope_spans")
SCOPE_CHILDREN = ("spans",)


def _request_from_json(document: dict) -> DecodedRequest:
    """The message of an OTLP/JSON document, parsed span by span so that one bad span (or the
    resource or scope it belongs to) is rejected without the others."""
    decoded = DecodedRequest(ExportTraceServiceRequest())
    for resource_json in _list(document, "resourceSpans", "resource_spans"):
        resource_spans = decoded.message.resource_spans.add()
        resource_problem = _parse_part(resource_json, resource_spans, RESOURCE_CHILDREN, "resource")
        for scope_json in _list(resource_json, *RESOURCE_CHILDREN):
            scope_spans = resource_spans.scope_spans.add()
            scope_problem = resource_problem or _parse_part(scope_json, scope_spans, SCOPE_CHILDREN, "scope")
            for span_json in _list(scope_json, *SCOPE_CHILDREN):
                span_id = span_json.get("spanId") if isinstance(span_json, dict) else None  # hex, before parsing
                if problem := scope_problem or _parse_span(span_json, scope_spans):
                    decoded.rejected.append(f"span {str(span_id or '?')[:32]}: {problem}")
    return decoded


JSON_MAPPING_ERRORS = (json_format.ParseError, OTLPDecodeError, ValueError, TypeError, RecursionError)


def _parse_part(part: dict, target, children: tuple[str, ...], name: str) -> str | None:
    """Parse a resource or scope without its children into `target`; answers what was wrong."""
    try:
        # The OTLP spec tells receivers to ignore fields they do not know.
        json_format.ParseDict(
            {key: value for key, value in part.items() if key not in children}, target, ignore_unknown_fields=True
        )
    except JSON_MAPPING_ERRORS as error:
        return f"{name}: {error}"
    return None


def _parse_span(span_json: object, scope_spans) -> str | None:
    """Parse one span into `scope_spans`; answers what was wrong (and adds nothing) or None."""
    if plain_span(span_json, scope_spans):
        return None
    span = scope_spans.spans.add()
    try:
        if not isinstance(span_json, dict):
            raise OTLPDecodeError("Expected a JSON object.")
        _convert_ids(span_json)
        for link in _list(span_json, "links"):
            _convert_ids(link)
        json_format.ParseDict(span_json, span, ignore_unknown_fields=True)
    except JSON_MAPPING_ERRORS as error:
        del scope_spans.spans[-1]
        return str(error) or error.__class__.__name__
    return None


# The plain reading of an OTLP/JSON span: the usual form (hex ids, a name, a kind, times, scalar
# attributes, a status) set straight into the message, which protobuf's JSON mapping (pure Python)
# takes several times longer to do. It sets exactly what json_format.ParseDict would, for a span
# it is sure of, and nothing for any other (another field, another spelling, a value it does not
# take): those go through json_format, which decides and names the error
# (tests/test_otlp_plain.py checks that both agree).

PLAIN_SPAN_KEYS = frozenset(
    {"traceId", "spanId", "parentSpanId", "name", "kind", "startTimeUnixNano", "endTimeUnixNano"}
    | {"attributes", "status"}
)
UNSIGNED = re.compile(r"0|[1-9][0-9]{0,19}")
SIGNED = re.compile(r"-?(?:0|[1-9][0-9]{0,18})")
SURROGATE = re.compile(r"[\ud800-\udfff]")
KINDS = range(6)  # SPAN_KIND_UNSPECIFIED … SPAN_KIND_CONSUMER
STATUS_CODES = range(3)  # STATUS_CODE_UNSET, _OK, _ERROR


class NotPlain(Exception):
    """The plain reading leaves this span to json_format."""


def plain_span(span_json: object, scope_spans) -> bool:
    """Add the span to `scope_spans` when the plain reading is sure of it; False (nothing added)
    otherwise."""
    if not isinstance(span_json, dict) or not PLAIN_SPAN_KEYS.issuperset(span_json):
        return False
    span = scope_spans.spans.add()
    try:
        _plain_fields(span_json, span)
    except NotPlain:
        del scope_spans.spans[-1]
        return False
    return True


def _plain_fields(span_json: dict, span: Span) -> None:
    for key, attribute in (("traceId", "trace_id"), ("spanId", "span_id"), ("parentSpanId", "parent_span_id")):
        if key in span_json:
            setattr(span, attribute, _plain_id(span_json[key]))
    if "name" in span_json:
        span.name = _plain_text(span_json["name"])
    if "kind" in span_json:
        span.kind = _plain_enum(span_json["kind"], KINDS)
    for key, attribute in (("startTimeUnixNano", "start_time_unix_nano"), ("endTimeUnixNano", "end_time_unix_nano")):
        if key in span_json:
            setattr(span, attribute, _plain_integer(span_json[key], UNSIGNED, 0, 2**64 - 1))
    attributes = span_json.get("attributes", [])
    if not isinstance(attributes, list):
        raise NotPlain
    for item in attributes:
        _plain_attribute(item, span.attributes.add())
    if "status" in span_json:
        _plain_status(span_json["status"], span)


def _plain_id(value: object) -> bytes:
    if not isinstance(value, str):
        raise NotPlain
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise NotPlain from None


def _plain_text(value: object) -> str:
    if not isinstance(value, str) or SURROGATE.search(value):
        raise NotPlain
    return value


def _plain_enum(value: object, allowed: range) -> int:
    if type(value) is not int or value not in allowed:
        raise NotPlain
    return value


def _plain_integer(value: object, form: re.Pattern, low: int, high: int) -> int:
    if type(value) is str and form.fullmatch(value):
        value = int(value)
    if type(value) is not int or not low <= value <= high:
        raise NotPlain
    return value


def _plain_attribute(item: object, target) -> None:
    if not isinstance(item, dict) or item.keys() != {"key", "value"}:
        raise NotPlain
    value = item["value"]
    if not isinstance(value, dict) or len(value) != 1:
        raise NotPlain
    target.key = _plain_text(item["key"])
    [(kind, scalar)] = value.items()
    if kind == "stringValue":
        target.value.string_value = _plain_text(scalar)
    elif kind == "intValue":
        target.value.int_value = _plain_integer(scalar, SIGNED, -(2**63), 2**63 - 1)
    elif kind == "doubleValue" and type(scalar) in (int, float) and abs(scalar) <= 2**53:
        target.value.double_value = float(scalar)
    elif kind == "boolValue" and type(scalar) is bool:
        target.value.bool_value = scalar
    else:
        raise NotPlain


def _plain_status(status: object, span: Span) -> None:
    if not isinstance(status, dict) or not {"code", "message"}.issuperset(status):
        raise NotPlain
    span.status.SetInParent()
    if "code" in status:
        span.status.code = _plain_enum(status["code"], STATUS_CODES)
    if "message" in status:
        span.status.message = _plain_text(status["message"])


def _list(container: object, *keys: str) -> list:
    if not isinstance(container, dict):
        raise OTLPDecodeError("Expected a JSON object.")
    for key in keys:
        if key in container:
            value = container[key]
            if not isinstance(value, list):
                raise OTLPDecodeError(f"{key} must be a list.")
            return value
    return []


def _convert_ids(item: dict) -> None:
    if not isinstance(item, dict):
        raise OTLPDecodeError("Expected a JSON object.")
    for key in ID_KEYS:
        value = item.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise OTLPDecodeError(f"{key} must be a hex string.")
        try:
            item[key] = base64.b64encode(bytes.fromhex(value)).decode()
        except ValueError as error:
            raise OTLPDecodeError(f"{key} is not hex: {value[:40]!r}") from error


@dataclass
class SpanConversion:
    """What became of the spans of one export: rows for the LLM calls, context spans for the
    others (an HTTP handler, a database query, an agent step), and spans rejected, with why."""

    logs: list[LLMRequestLog] = field(default_factory=list)
    spans: list[TraceSpan] = field(default_factory=list)
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    def partial_success_message(self) -> str:
        """The answer's partial_success.error_message; empty when every span was stored."""
        if not self.rejected:
            return ""
        shown = "; ".join(self.reasons[:MAX_REJECTION_REASONS])
        more = f" (and {self.rejected - MAX_REJECTION_REASONS} more)" if self.rejected > MAX_REJECTION_REASONS else ""
        return f"{self.rejected} span(s) rejected: {shown}{more}."


def logs_from_trace_request(decoded: DecodedRequest) -> SpanConversion:
    """Rows for the spans that are LLM calls, context spans for the others; broken ones rejected."""
    conversion = SpanConversion(rejected=len(decoded.rejected), reasons=list(decoded.rejected))
    now = timezone.now()
    for resource_spans in decoded.message.resource_spans:
        resource = attribute_dict(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = attribute_dict(span.attributes)
                try:
                    log = log_from_span(span, resource, now, attributes)
                    if log is None:
                        conversion.spans.append(context_span(span, resource, now, attributes))
                    else:
                        conversion.logs.append(log)
                except SpanRejected as reason:
                    conversion.rejected += 1
                    conversion.reasons.append(f"span {span.span_id.hex() or '?'}: {reason}")
    return conversion


# Rows by position (llm/row_insert.py): the keyword constructor was a tenth of an export's work.
ROW_SHAPE = RowShape(LLMRequestLog)


def log_from_span(
    span: Span, resource: dict[str, Any], now: datetime, attributes: dict[str, Any] | None = None
) -> LLMRequestLog | None:
    """An unsaved row for a span that is an LLM call in any dialect (llm/otlp_dialects.py), or None
    for a span that is not one.

    Raises SpanRejected for a call span that cannot be stored as it is.
    """
    attributes = attribute_dict(span.attributes) if attributes is None else attributes
    dialect = dialects.dialect_of(attributes)
    model = _text(dialects.first_present(attributes, dialect.model))
    if not model or not dialect.is_call(attributes):
        return None
    _check_ids(span)
    started, latency_ms = _start_and_latency(span, now)
    prompt_tokens, completion_tokens, total_tokens = _token_counts(attributes, dialect)
    status, error_type, error_message = _outcome(span, attributes)
    prompt, completion = prompt_and_completion(attributes, span, dialect)
    trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
    log = ROW_SHAPE.row(
        {
            "request_id": uuid.uuid5(OTLP_REQUEST_ID_NAMESPACE, trace_id + span_id),
            "timestamp": started,
            "source": LLMRequestLog.Source.OTLP,
            "provider": _provider(attributes, dialect),
            "model_name": model[:MODEL_MAX_CHARS],
            "user_id": _first_text(attributes, resource, *dialect.user)[:USER_ID_MAX_CHARS],
            "session_id": _first_text(attributes, resource, *dialect.session)[:SESSION_ID_MAX_CHARS],
            "trace_id": trace_id,
            "span_id": span_id,
            "parent_span_id": span.parent_span_id.hex(),
            "prompt_text": prompt,
            "response_text": completion,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": total_tokens,
            "latency_ms": latency_ms,
            "ttft_ms": _ttft_ms(span, attributes, dialect, latency_ms),
            "cost_estimate": None,  # priced by record_many
            "status": status,
            "error_type": error_type,
            "error_message": error_message,
            "finish_reason": _finish_reason(attributes, dialect),
            "temperature": _temperature(attributes, dialect),
            "max_tokens": _positive_int_or_none(dialects.first_present(attributes, dialect.max_tokens)),
            "tags": _tags(resource, attributes, dialect),
        }
    )
    fill_ids_from_tags(log)
    _check_text(log)
    return log


# The text columns a span fills, checked for what the databases cannot store.
TEXT_COLUMNS = (
    "provider",
    "model_name",
    "user_id",
    "session_id",
    "prompt_text",
    "response_text",
    "error_message",
    "finish_reason",
)


def _check_text(log: LLMRequestLog) -> None:
    for name in TEXT_COLUMNS:
        if problem := text_problem(getattr(log, name)):
            raise SpanRejected(f"{name}: {problem}")
    for key, value in log.tags.items():
        if problem := text_problem(value):
            raise SpanRejected(f"tag {key}: {problem}")


# Context spans: what is kept of a span that is not an LLM call.
SPAN_NAME_MAX_CHARS = 200
SERVICE_MAX_CHARS = 200
STATUS_MESSAGE_MAX_CHARS = 1_000
MAX_CONTEXT_ATTRIBUTES = 32
ATTRIBUTE_KEY_MAX_CHARS = 128
ATTRIBUTE_VALUE_MAX_CHARS = 256
# Attributes that carry prompt or response text (or a tool's input and output) are not kept on a
# context span: the text belongs to the call's row, where the privacy settings and the
# `read_text` right apply; an agent or workflow span would otherwise keep it out of their reach.
TEXT_ATTRIBUTE_PREFIXES = (
    "input.",
    "output.",
    "llm.input_messages",
    "llm.output_messages",
    "llm.prompts",
    "llm.completions",
    "llm.prompt",
    "llm.response",
    "gen_ai.prompt",
    "gen_ai.completion",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
    "ai.prompt",
    "ai.response.text",
    "ai.response.object",
    "ai.response.toolCalls",
    "ai.toolCall.args",
    "ai.toolCall.result",
    "traceloop.entity.input",
    "traceloop.entity.output",
    "tool.parameters",
)
SPAN_KINDS = {
    Span.SPAN_KIND_INTERNAL: TraceSpan.Kind.INTERNAL,
    Span.SPAN_KIND_SERVER: TraceSpan.Kind.SERVER,
    Span.SPAN_KIND_CLIENT: TraceSpan.Kind.CLIENT,
    Span.SPAN_KIND_PRODUCER: TraceSpan.Kind.PRODUCER,
    Span.SPAN_KIND_CONSUMER: TraceSpan.Kind.CONSUMER,
}
SPAN_STATUSES = {Status.STATUS_CODE_OK: TraceSpan.Status.OK, Status.STATUS_CODE_ERROR: TraceSpan.Status.ERROR}


def context_span(span: Span, resource: dict[str, Any], now: datetime, attributes: dict[str, Any]) -> TraceSpan:
    """An unsaved TraceSpan for a span that is not an LLM call; raises SpanRejected when its ids or
    times are broken, or its name or service cannot be stored."""
    _check_ids(span)
    started, duration_ms = _start_and_latency(span, now)
    status = SPAN_STATUSES.get(span.status.code, TraceSpan.Status.UNSET)
    message = span.status.message
    if status == TraceSpan.Status.ERROR and not message:
        message = _text(_exception_event(span).get("exception.message"))
    kept, dropped = context_attributes(attributes)
    trace_span = TraceSpan(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        name=span.name[:SPAN_NAME_MAX_CHARS],
        service=_text(resource.get("service.name"))[:SERVICE_MAX_CHARS],
        kind=SPAN_KINDS.get(span.kind, TraceSpan.Kind.UNSPECIFIED),
        start=started,
        end=started + timedelta(milliseconds=duration_ms),
        status=status,
        status_message=message[:STATUS_MESSAGE_MAX_CHARS],
        attributes=kept,
        dropped_attributes=min(dropped + span.dropped_attributes_count, MAX_COUNT),
    )
    for name in ("name", "service", "status_message"):
        if problem := text_problem(getattr(trace_span, name)):
            raise SpanRejected(f"{name}: {problem}")
    return trace_span


def context_attributes(attributes: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """(kept, dropped): at most MAX_CONTEXT_ATTRIBUTES attributes in key order, each value a
    number, a boolean or text of at most ATTRIBUTE_VALUE_MAX_CHARS (a list or map as JSON text).
    Not kept, and counted: text-bearing attributes, keys over ATTRIBUTE_KEY_MAX_CHARS, values
    the databases cannot store, and whatever is over the limit."""
    kept: dict[str, Any] = {}
    for key in sorted(attributes):
        if len(kept) == MAX_CONTEXT_ATTRIBUTES:
            break
        if len(key) > ATTRIBUTE_KEY_MAX_CHARS or key.startswith(TEXT_ATTRIBUTE_PREFIXES) or text_problem(key):
            continue
        value = _context_value(attributes[key])
        if value is not None:
            kept[key] = value
    return kept, len(attributes) - len(kept)


def _context_value(value: Any) -> Any:
    """A storable attribute value, or None when it cannot be stored."""
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        # JSON (PostgreSQL's jsonb) has no NaN or Infinity: those are kept as text.
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        value = value.hex()
    elif not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, default=str)
    value = value[:ATTRIBUTE_VALUE_MAX_CHARS]
    return None if text_problem(value) else value


def _check_ids(span: Span) -> None:
    """Trace and span ids of the sizes OTLP requires; a row without them could not join its trace."""
    if len(span.trace_id) != 16 or not any(span.trace_id):
        raise SpanRejected("trace_id must be 16 bytes, not all zero")
    if len(span.span_id) != 8 or not any(span.span_id):
        raise SpanRejected("span_id must be 8 bytes, not all zero")
    if len(span.parent_span_id) not in (0, 8):
        raise SpanRejected("parent_span_id must be empty or 8 bytes")


def _start_and_latency(span: Span, now: datetime) -> tuple[datetime, float]:
    """When the call started, and how long it took in ms (0 for a span that has not ended)."""
    if not span.start_time_unix_nano:
        raise SpanRejected("start_time_unix_nano is missing")
    started = EPOCH + timedelta(microseconds=span.start_time_unix_nano // 1000)
    if started > now + FUTURE_TOLERANCE:
        raise SpanRejected(f"starts {FUTURE_TOLERANCE_TEXT}")
    if not span.end_time_unix_nano:
        return started, 0.0
    if span.end_time_unix_nano < span.start_time_unix_nano:
        raise SpanRejected("ends before it starts")
    latency_ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
    if latency_ms > MAX_LATENCY_MS:
        raise SpanRejected(f"lasts more than {MAX_LATENCY_MS / 3_600_000:g} hours (end_time_unix_nano)")
    return started, latency_ms


def _token_counts(attributes: dict[str, Any], dialect: dialects.Dialect) -> tuple[int, int, int]:
    """(prompt, completion, total); a total smaller than its parts is raised to their sum."""
    prompt_tokens = _count(attributes, *dialect.prompt_tokens)
    completion_tokens = _count(attributes, *dialect.completion_tokens)
    total_tokens = _count(attributes, *dialect.total_tokens)
    if prompt_tokens + completion_tokens > MAX_COUNT:  # the total is a 32-bit column too
        raise SpanRejected(f"input + output tokens must be at most {MAX_COUNT}")
    return prompt_tokens, completion_tokens, max(total_tokens, prompt_tokens + completion_tokens)


def _outcome(span: Span, attributes: dict[str, Any]) -> tuple[str, str, str]:
    """(status, error_type, error_message). A span failed when its status says so or it names an
    `error.type`; the name, or failing that the exception event or HTTP status, picks the type."""
    error_name = _text(attributes.get("error.type"))
    if span.status.code != Status.STATUS_CODE_ERROR and not error_name:
        return LLMRequestLog.Status.SUCCESS, "", ""
    exception = _exception_event(span)
    error_name = error_name or _text(exception.get("exception.type"))
    error_type = error_type_for(error_name or _text(attributes.get("http.response.status_code")))
    error_message = span.status.message or _text(exception.get("exception.message")) or error_name
    return LLMRequestLog.Status.ERROR, error_type, error_message[:ERROR_MESSAGE_MAX_CHARS]


def _provider(attributes: dict[str, Any], dialect: dialects.Dialect) -> str:
    provider = _text(dialects.first_present(attributes, dialect.provider))
    if dialect.provider_before_dot:
        provider = provider.split(".")[0]
    return (provider or "unknown")[:PROVIDER_MAX_CHARS]


def _tags(resource: dict[str, Any], attributes: dict[str, Any], dialect: dialects.Dialect) -> dict[str, str]:
    tags = {}
    if service := _text(resource.get("service.name")):
        tags["service.name"] = service[:TAG_VALUE_MAX_CHARS]
    if operation := _text(dialects.first_present(attributes, dialect.operation)):
        tags["operation"] = operation[:TAG_VALUE_MAX_CHARS]
    for tag, key in dialect.tags:
        if value := _text(attributes.get(key)):
            tags[tag] = value[:TAG_VALUE_MAX_CHARS]
    return tags


def _ttft_ms(span: Span, attributes: dict[str, Any], dialect: dialects.Dialect, latency_ms: float) -> float | None:
    """Time to first token in ms: the dialect's attribute, or the time of its first-token event
    after the span's start; None when the span says nothing (or something outside the call)."""
    value = _float_or_none(dialects.first_present(attributes, dialect.ttft_ms))
    if value is None and dialect.first_token_events:
        for event in span.events:
            if event.name in dialect.first_token_events and event.time_unix_nano >= span.start_time_unix_nano:
                value = (event.time_unix_nano - span.start_time_unix_nano) / 1e6
                break
    if value is None or not math.isfinite(value) or not 0 <= value <= max(latency_ms, 0):
        return None
    return value


def attribute_dict(key_values) -> dict[str, Any]:
    return {key_value.key: any_value(key_value.value) for key_value in key_values}


def any_value(value) -> Any:
    """A Python value for an OTLP AnyValue (nested arrays and key-value lists included)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: any_value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind)


# Checked in this order, on the error name lower-cased with punctuation removed, so that
# "APITimeoutError" is a timeout and "APIConnectionError" a connection error.
ERROR_NAME_HINTS = [
    (("timeout", "timedout", "deadlineexceeded"), LLMRequestLog.ErrorType.TIMEOUT),
    (("ratelimit", "toomanyrequests", "resourceexhausted", "quota"), LLMRequestLog.ErrorType.RATE_LIMIT),
    (("auth", "permissiondenied", "forbidden", "apikey"), LLMRequestLog.ErrorType.AUTHENTICATION),
    (("connect", "network", "socket", "dns"), LLMRequestLog.ErrorType.CONNECTION_ERROR),
    (("server", "internal", "unavailable", "overloaded", "badgateway"), LLMRequestLog.ErrorType.SERVER_ERROR),
    (("badrequest", "invalid", "unprocessable", "notfound", "validation"), LLMRequestLog.ErrorType.BAD_REQUEST),
    (("config",), LLMRequestLog.ErrorType.CONFIGURATION),
]


def error_type_for(error_name: str) -> str:
    """Our error_type for an OpenTelemetry `error.type` (an exception name or an HTTP status)."""
    if error_name.isdigit():
        code = int(error_name)
        if code in (408, 504):
            return LLMRequestLog.ErrorType.TIMEOUT
        if code == 429:
            return LLMRequestLog.ErrorType.RATE_LIMIT
        if code in (401, 403):
            return LLMRequestLog.ErrorType.AUTHENTICATION
        if 400 <= code < 500:
            return LLMRequestLog.ErrorType.BAD_REQUEST
        if 500 <= code < 600:
            return LLMRequestLog.ErrorType.SERVER_ERROR
        return LLMRequestLog.ErrorType.OTHER
    normalized = re.sub(r"[^a-z0-9]", "", error_name.lower())
    for hints, error_type in ERROR_NAME_HINTS:
        if any(hint in normalized for hint in hints):
            return error_type
    return LLMRequestLog.ErrorType.OTHER


def prompt_and_completion(
    attributes: dict[str, Any], span: Span, dialect: dialects.Dialect = dialects.GEN_AI
) -> tuple[str, str]:
    """The prompt and completion text, wherever this dialect puts them (its `prompt` and
    `response` sources, in order), and failing that in span events (`gen_ai.user.message`,
    `gen_ai.choice`, …), which every dialect may use."""
    prompt = dialects.first_text(attributes, dialect.prompt)
    completion = dialects.first_text(attributes, dialect.response)
    if prompt and completion:
        return prompt, completion
    event_prompt, event_completion = _text_from_events(span)
    return prompt or event_prompt, completion or event_completion


# The event that carries a whole call's messages (current semantic conventions); it wins over
# message-by-message events.
DETAILS_EVENT = "gen_ai.client.inference.operation.details"
PROMPT, COMPLETION = "prompt", "completion"


def _text_from_events(span: Span) -> tuple[str, str]:
    """The prompt and completion text carried by span events (older semantic conventions)."""
    messages: dict[str, list[tuple[str, str]]] = {PROMPT: [], COMPLETION: []}
    details = {PROMPT: "", COMPLETION: ""}
    for event in span.events:
        if event.name == "exception" or not event.name.startswith("gen_ai."):
            continue
        event_attributes = attribute_dict(event.attributes)
        if event.name == DETAILS_EVENT:
            details[PROMPT] = details[PROMPT] or _structured_messages(event_attributes.get("gen_ai.input.messages"))
            details[COMPLETION] = details[COMPLETION] or _structured_messages(
                event_attributes.get("gen_ai.output.messages")
            )
        elif message := _event_message(event.name, event_attributes):
            side, role, content = message
            messages[side].append((role, content))
    return (
        details[PROMPT] or _join_messages(messages[PROMPT]),
        details[COMPLETION] or _join_messages(messages[COMPLETION]),
    )


def _event_message(name: str, event_attributes: dict[str, Any]) -> tuple[str, str, str] | None:
    """(PROMPT or COMPLETION, role, content) for an event that carries one message; else None."""
    if name == "gen_ai.content.prompt":
        return PROMPT, "", _text(event_attributes.get("gen_ai.prompt"))
    if name == "gen_ai.content.completion":
        return COMPLETION, "", _text(event_attributes.get("gen_ai.completion"))
    if name.startswith("gen_ai.") and name.endswith(".message"):  # gen_ai.user.message, gen_ai.system.message, …
        return PROMPT, name.removeprefix("gen_ai.").removesuffix(".message"), _content(event_attributes.get("content"))
    if name == "gen_ai.choice":
        message = event_attributes.get("message")
        content = message.get("content") if isinstance(message, dict) else event_attributes.get("content")
        return COMPLETION, "", _content(content)
    return None


_structured_messages = dialects.structured_messages
_join_messages = dialects.join_messages
_content = dialects.content_text
_text = dialects.text_value


def _first_text(attributes: dict[str, Any], resource: dict[str, Any], *keys: str) -> str:
    for source in (attributes, resource):
        for key in keys:
            if text := _text(source.get(key)):
                return text
    return ""


def _count(attributes: dict[str, Any], *keys: str) -> int:
    """A token count from the first attribute present; a nonsense value rejects the span."""
    for key in keys:
        value = attributes.get(key)
        if value is None:
            continue
        # Some instrumentations send counts as doubles or strings.
        if (isinstance(value, float) and value.is_integer()) or (isinstance(value, str) and value.strip().isdigit()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            raise SpanRejected(f"{key} must be a whole number from 0 to {MAX_COUNT}")
        return value
    return 0


def _float_or_none(value: Any) -> float | None:
    """A number attribute as a float; None (not stored) for anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _temperature(attributes: dict[str, Any], dialect: dialects.Dialect) -> float | None:
    """The request's temperature; NaN or Infinity rejects the span (neither is a temperature, and
    the JSON export could not carry it)."""
    for key in dialect.temperature:
        temperature = _float_or_none(attributes.get(key))
        if temperature is not None:
            if problem := finite_problem(temperature):
                raise SpanRejected(f"{key}: {problem}")
            return temperature
    return None


def _positive_int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        return None
    return value


def _finish_reason(attributes: dict[str, Any], dialect: dialects.Dialect) -> str:
    reasons = dialects.first_present(attributes, dialect.finish_reason)
    if isinstance(reasons, str):
        reasons = [reasons]
    if not isinstance(reasons, list):
        return ""
    # Several choices usually share one reason; keep each distinct one once.
    distinct = dict.fromkeys(_text(reason) for reason in reasons if _text(reason))
    return ",".join(distinct)[:FINISH_REASON_MAX_CHARS]


def _exception_event(span: Span) -> dict[str, Any]:
    for event in span.events:
        if event.name == "exception":
            return attribute_dict(event.attributes)
    return {}
