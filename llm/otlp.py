"""Calls reported as OpenTelemetry spans through the OTLP/HTTP receiver (POST /v1/traces):
decoding the request (protobuf or JSON) and converting the spans that are LLM calls to log rows.

Rows are unsaved `LLMRequestLog`s the receiver stores through `LLMRequestLog.objects.record_many`,
like the events API (`llm/events.py`); both share the limits in `llm/ingest_limits.py`.
"""

from __future__ import annotations

import base64
import json
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
from llm.models import LLMRequestLog

# A span becomes a row when it names a model; these operations name one too, but they wrap the
# model calls they make (which have spans of their own), so storing them would count tokens twice.
NON_CALL_OPERATIONS = {"invoke_agent", "create_agent", "execute_tool", "invoke_workflow"}
# Fixed namespace for request ids derived from (trace_id, span_id): a re-sent span keeps its id.
OTLP_REQUEST_ID_NAMESPACE = uuid.UUID("6b1d8c52-8f3e-4e0c-9a57-2f4d3c1b0e71")
MAX_REJECTION_REASONS = 5


class OTLPDecodeError(ValueError):
    """The body is not an ExportTraceServiceRequest in the announced encoding."""


class SpanRejected(ValueError):
    """A GenAI span that cannot be stored; counted in partial_success.rejected_spans."""


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
    """What became of the spans of one export: rows to store, spans rejected (with why), and
    spans ignored because they are not LLM calls (an HTTP handler, a database query, an agent)."""

    logs: list[LLMRequestLog] = field(default_factory=list)
    rejected: int = 0
    ignored: int = 0
    reasons: list[str] = field(default_factory=list)

    def partial_success_message(self) -> str:
        """The answer's partial_success.error_message; empty when every span was stored.

        Ignored spans are reported as a warning (OTLP allows a message with rejected_spans 0), so a
        sender who expected rows for them learns why there are none.
        """
        parts = []
        if self.rejected:
            shown = "; ".join(self.reasons[:MAX_REJECTION_REASONS])
            more = (
                f" (and {self.rejected - MAX_REJECTION_REASONS} more)" if self.rejected > MAX_REJECTION_REASONS else ""
            )
            parts.append(f"{self.rejected} GenAI span(s) rejected: {shown}{more}.")
        if self.ignored:
            parts.append(f"{self.ignored} span(s) ignored: not LLM calls (no gen_ai model, or an agent or tool span).")
        return " ".join(parts)


def logs_from_trace_request(decoded: DecodedRequest) -> SpanConversion:
    """Rows for the spans that are LLM calls; other spans are ignored, broken ones rejected."""
    conversion = SpanConversion(rejected=len(decoded.rejected), reasons=list(decoded.rejected))
    now = timezone.now()
    for resource_spans in decoded.message.resource_spans:
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
    """An unsaved row for a GenAI span, or None for a span that is not an LLM call.

    Raises SpanRejected for a GenAI span that cannot be stored as it is.
    """
    attributes = attribute_dict(span.attributes)
    model = _text(attributes.get("gen_ai.response.model")) or _text(attributes.get("gen_ai.request.model"))
    operation = _text(attributes.get("gen_ai.operation.name"))
    if not model or operation in NON_CALL_OPERATIONS:
        return None
    _check_ids(span)
    started, latency_ms = _start_and_latency(span, now)
    prompt_tokens, completion_tokens, total_tokens = _token_counts(attributes)
    status, error_type, error_message = _outcome(span, attributes)
    prompt, completion = prompt_and_completion(attributes, span)
    trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
    log = LLMRequestLog(
        request_id=uuid.uuid5(OTLP_REQUEST_ID_NAMESPACE, trace_id + span_id),
        timestamp=started,
        source=LLMRequestLog.Source.OTLP,
        provider=_provider(attributes),
        model_name=model[:MODEL_MAX_CHARS],
        user_id=_first_text(attributes, resource, "user.id", "enduser.id")[:USER_ID_MAX_CHARS],
        session_id=_first_text(attributes, resource, "session.id", "gen_ai.conversation.id")[:SESSION_ID_MAX_CHARS],
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
        status=status,
        error_type=error_type,
        error_message=error_message,
        finish_reason=_finish_reason(attributes),
        temperature=_temperature(attributes),
        max_tokens=_positive_int_or_none(attributes.get("gen_ai.request.max_tokens")),
        tags=_tags(resource, operation),
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


def _token_counts(attributes: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, total); a total smaller than its parts is raised to their sum."""
    prompt_tokens = _count(attributes, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    completion_tokens = _count(attributes, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    total_tokens = _count(attributes, "gen_ai.usage.total_tokens", "llm.usage.total_tokens")
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


def _provider(attributes: dict[str, Any]) -> str:
    # gen_ai.system is the older name of gen_ai.provider.name.
    provider = _text(attributes.get("gen_ai.provider.name")) or _text(attributes.get("gen_ai.system"))
    return (provider or "unknown")[:PROVIDER_MAX_CHARS]


def _tags(resource: dict[str, Any], operation: str) -> dict[str, str]:
    tags = {}
    if service := _text(resource.get("service.name")):
        tags["service.name"] = service[:TAG_VALUE_MAX_CHARS]
    if operation:
        tags["operation"] = operation[:TAG_VALUE_MAX_CHARS]
    return tags


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
    prompt = _text_from_attributes(attributes, "gen_ai.prompt", "gen_ai.input.messages")
    completion = _text_from_attributes(attributes, "gen_ai.completion", "gen_ai.output.messages")
    if prompt and completion:
        return prompt, completion
    event_prompt, event_completion = _text_from_events(span)
    return prompt or event_prompt, completion or event_completion


def _text_from_attributes(attributes: dict[str, Any], plain_key: str, messages_key: str) -> str:
    return (
        _text(attributes.get(plain_key))
        or _indexed_messages(attributes, plain_key)
        or _structured_messages(attributes.get(messages_key))
    )


# The event that carries a whole call's messages (current semantic conventions); it wins over
# message-by-message events.
DETAILS_EVENT = "gen_ai.client.inference.operation.details"
PROMPT, COMPLETION = "prompt", "completion"


def _text_from_events(span: Span) -> tuple[str, str]:
    """The prompt and completion text carried by span events (older semantic conventions)."""
    messages: dict[str, list[tuple[str, str]]] = {PROMPT: [], COMPLETION: []}
    details = {PROMPT: "", COMPLETION: ""}
    for event in span.events:
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
            value = parse_json(value)
        except ValueError:  # not JSON (or too deep, or NaN): the text as it is
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


def _float_or_none(value: Any) -> float | None:
    """A number attribute as a float; None (not stored) for anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _temperature(attributes: dict[str, Any]) -> float | None:
    """gen_ai.request.temperature; NaN or Infinity rejects the span (neither is a temperature, and
    the JSON export could not carry it)."""
    temperature = _float_or_none(attributes.get("gen_ai.request.temperature"))
    if temperature is not None and (problem := finite_problem(temperature)):
        raise SpanRejected(f"gen_ai.request.temperature: {problem}")
    return temperature


def _positive_int_or_none(value: Any) -> int | None:
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
    return ",".join(distinct)[:FINISH_REASON_MAX_CHARS]


def _exception_event(span: Span) -> dict[str, Any]:
    for event in span.events:
        if event.name == "exception":
            return attribute_dict(event.attributes)
    return {}
