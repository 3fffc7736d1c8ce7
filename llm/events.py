"""Calls reported by other applications through POST /api/events/: parsing, validating, storing.

Each event becomes an unsaved `LLMRequestLog` stored through `LLMRequestLog.objects.record_many`,
so privacy rules, derived totals, cost and the "a request_id is stored once" rule apply exactly as
for calls made through the proxy. The OTLP receiver (`llm/otlp.py`) shares the limits in
`llm/ingest_limits.py`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone
from rest_framework import serializers

from llm.ingest_limits import (
    ERROR_MESSAGE_MAX_CHARS,
    FINISH_REASON_MAX_CHARS,
    FUTURE_TOLERANCE,
    FUTURE_TOLERANCE_TEXT,
    HEX_SPAN_ID,
    HEX_TRACE_ID,
    MAX_COUNT,
    MAX_LATENCY_MS,
    MODEL_MAX_CHARS,
    PROVIDER_MAX_CHARS,
    SESSION_ID_MAX_CHARS,
    USER_ID_MAX_CHARS,
)
from llm.models import LLMRequestLog
from llm.serializers import PROMPT_MAX_CHARS, TagsField

# A batch holds at most this many events; a client with more sends several batches.
MAX_EVENTS_PER_BATCH = 1_000

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
    model = TextField(max_length=MODEL_MAX_CHARS)
    provider = TextField(max_length=PROVIDER_MAX_CHARS, required=False, default="unknown")
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
    user_id = TextField(max_length=USER_ID_MAX_CHARS, required=False, allow_blank=True)
    session_id = TextField(max_length=SESSION_ID_MAX_CHARS, required=False, allow_blank=True)
    prompt = TextField(max_length=PROMPT_MAX_CHARS, required=False, allow_blank=True, trim_whitespace=False)
    response = TextField(max_length=PROMPT_MAX_CHARS, required=False, allow_blank=True, trim_whitespace=False)
    finish_reason = TextField(max_length=FINISH_REASON_MAX_CHARS, required=False, allow_blank=True)
    temperature = NumberField(min_value=0, max_value=2, required=False, allow_null=True)
    max_tokens = WholeNumberField(min_value=1, max_value=MAX_COUNT, required=False, allow_null=True)
    trace_id = serializers.RegexField(HEX_TRACE_ID, required=False, allow_blank=True)
    span_id = serializers.RegexField(HEX_SPAN_ID, required=False, allow_blank=True)
    parent_span_id = serializers.RegexField(HEX_SPAN_ID, required=False, allow_blank=True)
    tags = TagsField(required=False)

    def validate_timestamp(self, value: datetime) -> datetime:
        if value > timezone.now() + FUTURE_TOLERANCE:
            raise serializers.ValidationError(f"Must not be {FUTURE_TOLERANCE_TEXT}.")
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
