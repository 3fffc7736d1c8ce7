"""Calls reported by other applications through POST /api/events/: parsing, validating, storing.

Each event becomes an unsaved `LLMRequestLog` stored through `LLMRequestLog.objects.record_many`,
so privacy rules, derived totals, cost and the "a request_id is stored once" rule apply exactly as
for calls made through the proxy. The OTLP receiver (`llm/otlp.py`) shares the limits in
`llm/ingest_limits.py`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.utils import timezone
from rest_framework import serializers

from llm.models import LLMRequestLog
from llm.serializers import EventSerializer

# A batch holds at most this many events; a client with more sends several batches.
MAX_EVENTS_PER_BATCH = 1_000


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
