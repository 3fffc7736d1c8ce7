"""Calls made elsewhere: events posted to /api/events/ and OpenTelemetry spans posted to /v1/traces.

Both become unsaved `LLMRequestLog` rows stored through `LLMRequestLog.objects.record_many`, so
privacy rules, derived totals, cost and the "a request_id is stored once" rule apply exactly as
for calls made through the proxy.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from rest_framework import serializers

from llm.models import LLMRequestLog
from llm.serializers import PROMPT_MAX_CHARS, TAG_VALUE_MAX_CHARS, TagsField

# A batch holds at most this many events; a client with more sends several batches.
MAX_EVENTS_PER_BATCH = 1_000
# A timestamp may run this far ahead of our clock (clock skew between hosts); further ahead is a
# bug in the sender (milliseconds sent as seconds, a wrong time zone) and is refused.
FUTURE_TOLERANCE = timedelta(minutes=5)
# PositiveIntegerField is a 32-bit integer on PostgreSQL.
MAX_COUNT = 2_147_483_647
# One call cannot have lasted longer than a day; a larger figure is a unit mistake.
MAX_LATENCY_MS = 24 * 60 * 60 * 1000.0
ERROR_MESSAGE_MAX_CHARS = 10_000
HEX_TRACE_ID = r"^[0-9a-fA-F]{32}$"
HEX_SPAN_ID = r"^[0-9a-fA-F]{16}$"


# ---------------------------------------------------------------------------------------------
# Events API

# JSON has types; a number where text is expected (or text where a number is) is a bug in the
# sender, so these fields refuse it rather than converting as DRF's fields do.


class TextField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class WholeNumberField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class NumberField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class EventSerializer(serializers.Serializer):
    """One call reported by another application (the body of POST /api/events/)."""

    request_id = serializers.UUIDField(required=False, help_text="Send the same id on a retry; it is stored once.")
    timestamp = serializers.DateTimeField(required=False, help_text="ISO 8601, when the call started; default now.")
    model = TextField(max_length=200)
    provider = TextField(max_length=64, required=False, default="unknown")
    prompt_tokens = WholeNumberField(min_value=0, max_value=MAX_COUNT, required=False)
    completion_tokens = WholeNumberField(min_value=0, max_value=MAX_COUNT, required=False)
    total_tokens = WholeNumberField(
        min_value=0, max_value=MAX_COUNT, required=False, help_text="Default prompt + completion."
    )
    latency_ms = NumberField(min_value=0, max_value=MAX_LATENCY_MS, required=False)
    ttft_ms = NumberField(min_value=0, max_value=MAX_LATENCY_MS, required=False, allow_null=True)
    status = serializers.ChoiceField(LLMRequestLog.Status.choices, required=False)
    error_type = serializers.ChoiceField(LLMRequestLog.ErrorType.choices, required=False, allow_blank=True)
    error_message = TextField(
        max_length=ERROR_MESSAGE_MAX_CHARS, required=False, allow_blank=True, trim_whitespace=False
    )
    cost_usd = serializers.DecimalField(
        max_digits=20,
        decimal_places=10,
        coerce_to_string=False,  # a number in the API document, like every cost
        min_value=0,
        required=False,
        allow_null=True,
        help_text="Computed from the model's price when absent.",
    )
    user_id = TextField(max_length=200, required=False, allow_blank=True)
    session_id = TextField(max_length=200, required=False, allow_blank=True)
    prompt = TextField(max_length=PROMPT_MAX_CHARS, required=False, allow_blank=True, trim_whitespace=False)
    response = TextField(max_length=PROMPT_MAX_CHARS, required=False, allow_blank=True, trim_whitespace=False)
    finish_reason = TextField(max_length=32, required=False, allow_blank=True)
    temperature = NumberField(min_value=0, max_value=2, required=False, allow_null=True)
    max_tokens = WholeNumberField(min_value=1, max_value=MAX_COUNT, required=False, allow_null=True)
    trace_id = serializers.RegexField(HEX_TRACE_ID, required=False, allow_blank=True)
    span_id = serializers.RegexField(HEX_SPAN_ID, required=False, allow_blank=True)
    parent_span_id = serializers.RegexField(HEX_SPAN_ID, required=False, allow_blank=True)
    tags = TagsField(required=False)

    def validate_timestamp(self, value: datetime) -> datetime:
        if value > timezone.now() + FUTURE_TOLERANCE:
            raise serializers.ValidationError("Must not be more than 5 minutes in the future.")
        return value

    def validate(self, attrs: dict) -> dict:
        errors: dict[str, str] = {}
        prompt_tokens, completion_tokens = attrs.get("prompt_tokens", 0), attrs.get("completion_tokens", 0)
        total = attrs.get("total_tokens")
        # Only a total may be known (some providers report nothing else); with parts it must add up.
        counts_given = "prompt_tokens" in attrs or "completion_tokens" in attrs
        if total is not None and counts_given and total != prompt_tokens + completion_tokens:
            errors["total_tokens"] = (
                f"Must equal prompt_tokens + completion_tokens ({prompt_tokens + completion_tokens})."
            )
        ttft = attrs.get("ttft_ms")
        if ttft is not None and "latency_ms" in attrs and ttft > attrs["latency_ms"]:
            errors["ttft_ms"] = "Must not exceed latency_ms."
        error_type = attrs.get("error_type", "")
        status = attrs.get("status") or (LLMRequestLog.Status.ERROR if error_type else LLMRequestLog.Status.SUCCESS)
        if status == LLMRequestLog.Status.SUCCESS and error_type:
            errors["error_type"] = "Must be empty when status is success."
        if errors:
            raise serializers.ValidationError(errors)
        attrs["status"] = status
        attrs.setdefault("prompt_tokens", 0)
        attrs.setdefault("completion_tokens", 0)
        attrs.setdefault("latency_ms", 0.0)
        attrs["error_type"] = error_type or (LLMRequestLog.ErrorType.OTHER if status == "error" else "")
        return attrs


def parse_events(payload: object) -> list[dict]:
    """Validate one event or {"events": [...]}; answers validated data for every event.

    Raises ValidationError naming each bad event by index when any is bad, so that a batch is
    stored whole or not at all.
    """
    if not isinstance(payload, dict):
        raise serializers.ValidationError(
            {"non_field_errors": ["Expected a JSON object: one event or {events: [...]}."]}
        )
    if "events" not in payload:
        serializer = EventSerializer(data=payload)
        serializer.is_valid(raise_exception=True)
        return [serializer.validated_data]
    events = payload["events"]
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS_PER_BATCH:
        raise serializers.ValidationError({"events": [f"Expected a list of 1 to {MAX_EVENTS_PER_BATCH:,} events."]})
    # One list serializer validates every event with one set of fields (a serializer per event
    # would copy its fields each time: several times slower for a full batch).
    serializer = EventSerializer(data=events, many=True)
    if not serializer.is_valid():
        errors = serializer.errors  # {index: {field: [...]}} for the bad events only
        if isinstance(errors, list):  # older DRF: one entry per event, {} when valid
            errors = {index: event_errors for index, event_errors in enumerate(errors) if event_errors}
        raise serializers.ValidationError({"events": dict(errors)})
    return serializer.validated_data


def log_from_event(data: dict) -> LLMRequestLog:
    """An unsaved row for one validated event."""
    prompt_tokens, completion_tokens = data["prompt_tokens"], data["completion_tokens"]
    return LLMRequestLog(
        request_id=data.get("request_id") or uuid.uuid4(),
        timestamp=data.get("timestamp") or timezone.now(),
        source=LLMRequestLog.Source.API,
        provider=data["provider"],
        model_name=data["model"],
        user_id=data.get("user_id", ""),
        session_id=data.get("session_id", ""),
        trace_id=data.get("trace_id", "").lower(),
        span_id=data.get("span_id", "").lower(),
        parent_span_id=data.get("parent_span_id", "").lower(),
        prompt_text=data.get("prompt", ""),
        response_text=data.get("response", ""),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=data.get("total_tokens") or prompt_tokens + completion_tokens,
        latency_ms=data["latency_ms"],
        ttft_ms=data.get("ttft_ms"),
        cost_estimate=data.get("cost_usd"),  # None: record_many prices it
        status=data["status"],
        error_type=data["error_type"],
        error_message=data.get("error_message", ""),
        finish_reason=data.get("finish_reason", ""),
        temperature=data.get("temperature"),
        max_tokens=data.get("max_tokens"),
        tags=data.get("tags", {}),
    )


@dataclass
class StoredEvents:
    created: int
    duplicates: int
    request_ids: list[str]


def store_events(validated: list[dict]) -> StoredEvents:
    logs = [log_from_event(data) for data in validated]
    created, duplicates = LLMRequestLog.objects.record_many(logs)
    return StoredEvents(created, duplicates, [str(log.request_id) for log in logs])


# ---------------------------------------------------------------------------------------------
# OpenTelemetry (OTLP/HTTP traces)

# A span becomes a row when it names a model; these operations name one too, but they wrap the
# model calls they make (which have spans of their own), so storing them would count tokens twice.
NON_CALL_OPERATIONS = {"invoke_agent", "create_agent", "execute_tool", "invoke_workflow"}
# Fixed namespace for request ids derived from (trace_id, span_id): a re-sent span keeps its id.
OTLP_REQUEST_ID_NAMESPACE = uuid.UUID("6b1d8c52-8f3e-4e0c-9a57-2f4d3c1b0e71")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_REJECTION_REASONS = 5


class OTLPDecodeError(ValueError):
    """The body is not an ExportTraceServiceRequest in the announced encoding."""


class SpanRejected(ValueError):
    """A GenAI span that cannot be stored; counted in partial_success.rejected_spans."""


def decode_trace_request(body: bytes, *, json_encoded: bool) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    try:
        if json_encoded:
            document = json.loads(body)
            if not isinstance(document, dict):
                raise OTLPDecodeError("Expected a JSON object.")
            _hex_ids_to_base64(document)
            # The OTLP spec tells receivers to ignore fields they do not know.
            json_format.ParseDict(document, message, ignore_unknown_fields=True)
        else:
            message.ParseFromString(body)
    except OTLPDecodeError:
        raise
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as error:
        raise OTLPDecodeError(str(error) or error.__class__.__name__) from error
    return message


ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(document: dict) -> None:
    """OTLP/JSON carries trace and span ids as hex, where protobuf's JSON mapping expects base64."""
    for resource_spans in _list(document, "resourceSpans", "resource_spans"):
        for scope_spans in _list(resource_spans, "scopeSpans", "scope_spans"):
            for span in _list(scope_spans, "spans"):
                _convert_ids(span)
                for link in _list(span, "links"):
                    _convert_ids(link)


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
    logs: list[LLMRequestLog] = field(default_factory=list)
    rejected: int = 0
    ignored: int = 0
    reasons: list[str] = field(default_factory=list)

    def rejection_message(self) -> str:
        if not self.rejected:
            return ""
        shown = "; ".join(self.reasons[:MAX_REJECTION_REASONS])
        more = f" (and {self.rejected - MAX_REJECTION_REASONS} more)" if self.rejected > MAX_REJECTION_REASONS else ""
        return f"{self.rejected} GenAI span(s) rejected: {shown}{more}"


def logs_from_trace_request(message: ExportTraceServiceRequest) -> SpanConversion:
    """Rows for the spans that are LLM calls; other spans are ignored, broken ones rejected."""
    conversion = SpanConversion()
    now = timezone.now()
    for resource_spans in message.resource_spans:
        resource = attribute_dict(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                try:
                    log = log_from_span(span, resource, now)
                except SpanRejected as reason:
                    conversion.rejected += 1
                    conversion.reasons.append(f"span {span.span_id.hex() or '?'}: {reason}")
                    continue
                if log is None:
                    conversion.ignored += 1
                else:
                    conversion.logs.append(log)
    return conversion


def log_from_span(span: Span, resource: dict[str, Any], now: datetime) -> LLMRequestLog | None:
    """An unsaved row for a GenAI span, or None for a span that is not an LLM call."""
    attributes = attribute_dict(span.attributes)
    model = _text(attributes.get("gen_ai.response.model")) or _text(attributes.get("gen_ai.request.model"))
    operation = _text(attributes.get("gen_ai.operation.name"))
    if not model or operation in NON_CALL_OPERATIONS:
        return None

    if len(span.trace_id) != 16 or not any(span.trace_id):
        raise SpanRejected("trace_id must be 16 bytes, not all zero")
    if len(span.span_id) != 8 or not any(span.span_id):
        raise SpanRejected("span_id must be 8 bytes, not all zero")
    if len(span.parent_span_id) not in (0, 8):
        raise SpanRejected("parent_span_id must be empty or 8 bytes")
    if not span.start_time_unix_nano:
        raise SpanRejected("start_time_unix_nano is missing")
    started = EPOCH + timedelta(microseconds=span.start_time_unix_nano // 1000)
    if started > now + FUTURE_TOLERANCE:
        raise SpanRejected("starts more than 5 minutes in the future")
    if span.end_time_unix_nano and span.end_time_unix_nano < span.start_time_unix_nano:
        raise SpanRejected("ends before it starts")
    latency_ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6 if span.end_time_unix_nano else 0.0

    prompt_tokens = _count(attributes, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    completion_tokens = _count(attributes, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    total_tokens = _count(attributes, "gen_ai.usage.total_tokens", "llm.usage.total_tokens")
    if total_tokens < prompt_tokens + completion_tokens:
        total_tokens = prompt_tokens + completion_tokens

    error_name = _text(attributes.get("error.type"))
    exception = _exception_event(span)
    is_error = span.status.code == Status.STATUS_CODE_ERROR or bool(error_name)
    error_type, error_message = "", ""
    if is_error:
        error_name = error_name or _text(exception.get("exception.type"))
        error_type = error_type_for(error_name or _text(attributes.get("http.response.status_code")))
        error_message = span.status.message or _text(exception.get("exception.message")) or error_name
        error_message = error_message[:ERROR_MESSAGE_MAX_CHARS]

    prompt, completion = prompt_and_completion(attributes, span)
    tags = {}
    if service := _text(resource.get("service.name")):
        tags["service.name"] = service[:TAG_VALUE_MAX_CHARS]
    if operation:
        tags["operation"] = operation[:TAG_VALUE_MAX_CHARS]

    trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
    return LLMRequestLog(
        request_id=uuid.uuid5(OTLP_REQUEST_ID_NAMESPACE, trace_id + span_id),
        timestamp=started,
        source=LLMRequestLog.Source.OTLP,
        provider=(_text(attributes.get("gen_ai.provider.name")) or _text(attributes.get("gen_ai.system")) or "unknown")[
            :64
        ],
        model_name=model[:200],
        user_id=_first_text(attributes, resource, "user.id", "enduser.id")[:200],
        session_id=_first_text(attributes, resource, "session.id", "gen_ai.conversation.id")[:200],
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=span.parent_span_id.hex(),
        prompt_text=prompt,
        response_text=completion,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=total_tokens,
        latency_ms=latency_ms,
        cost_estimate=None,  # priced by record_many
        status=LLMRequestLog.Status.ERROR if is_error else LLMRequestLog.Status.SUCCESS,
        error_type=error_type,
        error_message=error_message,
        finish_reason=_finish_reason(attributes),
        temperature=_number(attributes.get("gen_ai.request.temperature")),
        max_tokens=_positive_int(attributes.get("gen_ai.request.max_tokens")),
        tags=tags,
    )


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


def prompt_and_completion(attributes: dict[str, Any], span: Span) -> tuple[str, str]:
    """The prompt and completion text, wherever this instrumentation put them.

    In order: plain `gen_ai.prompt`/`gen_ai.completion` attributes; indexed
    `gen_ai.prompt.N.content` (OpenLLMetry); `gen_ai.input.messages`/`gen_ai.output.messages`
    (current semantic conventions); and span events (`gen_ai.user.message`, `gen_ai.choice`, …).
    """
    prompt = (
        _text(attributes.get("gen_ai.prompt"))
        or _indexed_messages(attributes, "gen_ai.prompt")
        or _structured_messages(attributes.get("gen_ai.input.messages"))
    )
    completion = (
        _text(attributes.get("gen_ai.completion"))
        or _indexed_messages(attributes, "gen_ai.completion")
        or _structured_messages(attributes.get("gen_ai.output.messages"))
    )
    if prompt and completion:
        return prompt, completion

    prompt_messages: list[tuple[str, str]] = []
    completion_messages: list[tuple[str, str]] = []
    for event in span.events:
        event_attributes = attribute_dict(event.attributes)
        name = event.name
        if name == "gen_ai.content.prompt":
            prompt_messages.append(("", _text(event_attributes.get("gen_ai.prompt"))))
        elif name == "gen_ai.content.completion":
            completion_messages.append(("", _text(event_attributes.get("gen_ai.completion"))))
        elif name.startswith("gen_ai.") and name.endswith(".message"):
            role = name.removeprefix("gen_ai.").removesuffix(".message")
            prompt_messages.append((role, _content(event_attributes.get("content"))))
        elif name == "gen_ai.choice":
            message = event_attributes.get("message")
            content = message.get("content") if isinstance(message, dict) else event_attributes.get("content")
            completion_messages.append(("", _content(content)))
        elif name == "gen_ai.client.inference.operation.details":
            prompt = prompt or _structured_messages(event_attributes.get("gen_ai.input.messages"))
            completion = completion or _structured_messages(event_attributes.get("gen_ai.output.messages"))
    return prompt or _join_messages(prompt_messages), completion or _join_messages(completion_messages)


INDEXED_CONTENT = re.compile(r"^(?P<prefix>gen_ai\.(?:prompt|completion))\.(?P<index>\d+)\.content$")


def _indexed_messages(attributes: dict[str, Any], prefix: str) -> str:
    messages = []
    for key, value in attributes.items():
        match = INDEXED_CONTENT.match(key)
        if match and match["prefix"] == prefix:
            index = int(match["index"])
            messages.append((index, _text(attributes.get(f"{prefix}.{index}.role")), _content(value)))
    messages.sort()
    return _join_messages([(role, content) for _, role, content in messages])


def _structured_messages(value: Any) -> str:
    """Text of `gen_ai.input.messages`-style messages: [{"role", "parts": [{"type", "content"}]}]."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if not isinstance(value, list):
        return _content(value)
    messages = []
    for message in value:
        if not isinstance(message, dict):
            messages.append(("", _content(message)))
            continue
        parts = message.get("parts")
        if isinstance(parts, list):
            texts = [
                _content(part.get("content"))
                for part in parts
                if isinstance(part, dict) and part.get("type", "text") == "text"
            ]
            content = "\n".join(text for text in texts if text)
        else:
            content = _content(message.get("content"))
        messages.append((_text(message.get("role")), content))
    return _join_messages(messages)


def _join_messages(messages: list[tuple[str, str]]) -> str:
    messages = [(role, content) for role, content in messages if content]
    if len(messages) == 1:
        return messages[0][1]
    return "\n\n".join(f"{role}: {content}" if role else content for role, content in messages)


def _content(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _text(value: Any) -> str:
    if value is None or isinstance(value, dict | list | bytes):
        return ""
    return str(value)


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


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        return None
    return value


def _finish_reason(attributes: dict[str, Any]) -> str:
    reasons = attributes.get("gen_ai.response.finish_reasons")
    if reasons is None:
        reasons = attributes.get("gen_ai.completion.0.finish_reason")
    if isinstance(reasons, str):
        reasons = [reasons]
    if not isinstance(reasons, list):
        return ""
    # Several choices usually share one reason; keep each distinct one once.
    distinct = dict.fromkeys(_text(reason) for reason in reasons if _text(reason))
    return ",".join(distinct)[:32]


def _exception_event(span: Span) -> dict[str, Any]:
    for event in span.events:
        if event.name == "exception":
            return attribute_dict(event.attributes)
    return {}
