"""Calls reported by other applications through POST /api/events/: parsing, validating, storing.

Each event becomes an unsaved `LLMRequestLog` stored through `LLMRequestLog.objects.record_many`,
so privacy rules, derived totals, cost and the "a request_id is stored once" rule apply exactly as
for calls made through the proxy. The OTLP receiver (`llm/otlp.py`) shares the limits in
`llm/ingest_limits.py`.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework import ISO_8601, serializers
from rest_framework.fields import empty
from rest_framework.settings import api_settings

from llm.ingest_limits import EARLIEST_TIMESTAMP, FUTURE_TOLERANCE, UNSTORABLE_CHARACTER, fill_ids_from_tags
from llm.models import LLMRequestLog
from llm.row_insert import RowShape
from llm.serializers import EventSerializer, NumberField, TagsField, TextField, WholeNumberField, validate_tags

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
    zone = field_time_zone()
    validated: list[dict | None] = [plain_event(event, zone) for event in events]
    unsure = [index for index, data in enumerate(validated) if data is None]
    if unsure:
        for index, data in zip(unsure, serializer_decides([events[index] for index in unsure], unsure), strict=True):
            validated[index] = data
    return validated


def serializer_decides(events: list, indexes: list[int]) -> list[dict]:
    """EventSerializer's validated data for the events the plain check was not sure of; raises
    its errors, each under the event's index in the whole batch (`indexes`). One list serializer
    for all of them: a serializer per event would copy its fields each time, several times slower."""
    serializer = EventSerializer(data=events, many=True)
    if not serializer.is_valid():
        errors = serializer.errors  # {position: {field: [...]}} for the bad events only
        if isinstance(errors, list):  # older DRF: one entry per event, {} when valid
            errors = {position: event_errors for position, event_errors in enumerate(errors) if event_errors}
        raise serializers.ValidationError({"events": {indexes[position]: errors[position] for position in errors}})
    return serializer.validated_data


# The plain check of an event: EventSerializer's rules as plain functions over its own declared
# fields (their limits are read from it, so the two cannot drift), for the events of a batch,
# which would otherwise spend most of the request in DRF's per-field machinery. It answers exactly
# what EventSerializer's validated_data would be, for an event it is sure is valid, and None for
# anything else (a bad value, or a form it does not handle: a UUID in braces, a number as text):
# such events go through EventSerializer, which decides and answers the error (tests/test_events_fast.py
# checks that both agree on valid and invalid events).


class Unsure(Exception):
    """The plain check leaves this event to EventSerializer."""


Check = Callable[[Any], Any]
HEX = re.compile(r"[0-9a-fA-F]*")
CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _text_check(field: serializers.CharField) -> Check:
    max_length, allow_blank, trim = field.max_length, field.allow_blank, field.trim_whitespace
    regex = next((validator.regex for validator in field.validators if hasattr(validator, "regex")), None)
    if regex is not None and not (regex.pattern.startswith("^[0-9a-fA-F]{") and regex.pattern.endswith("}$")):
        raise ValueError(f"no plain check for {regex.pattern}")
    length = int(regex.pattern[len("^[0-9a-fA-F]{") : -2]) if regex is not None else None

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Unsure
        if trim:
            value = value.strip()
        if not value:
            if not allow_blank:
                raise Unsure
            return ""
        if max_length is not None and len(value) > max_length:
            raise Unsure
        if length is not None and (len(value) != length or not HEX.fullmatch(value)):
            raise Unsure
        if UNSTORABLE_CHARACTER.search(value):
            raise Unsure
        return value

    return check


def _number_check(field: WholeNumberField | NumberField) -> Check:
    whole = isinstance(field, WholeNumberField)
    low, high = field.min_value, field.max_value

    def check(value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
            raise Unsure
        if not whole:
            if isinstance(value, int) and abs(value) > 2**53:
                raise Unsure
            value = float(value)
            if not math.isfinite(value):
                raise Unsure
        if (low is not None and value < low) or (high is not None and value > high):
            raise Unsure
        return value

    return check


def _choice_check(field: serializers.ChoiceField) -> Check:
    values = {str(choice): choice for choice in field.choices}
    allow_blank = field.allow_blank

    def check(value: Any) -> str:
        if value == "" and allow_blank:
            return ""
        if not isinstance(value, str) or value not in values:
            raise Unsure
        return values[value]

    return check


def _uuid_check(value: Any) -> uuid.UUID:
    if not isinstance(value, str) or not CANONICAL_UUID.fullmatch(value):
        raise Unsure
    return uuid.UUID(value)


def field_time_zone() -> tzinfo | None:
    """The zone DRF's DateTimeField gives a parsed time (`default_timezone`), read once per batch:
    asking asgiref's context-local state for it took a twentieth of a 500-event batch."""
    return timezone.get_current_timezone() if settings.USE_TZ else None


def _datetime_check(field: serializers.DateTimeField) -> Check | None:
    """DateTimeField.to_internal_value for an ISO 8601 text with an offset, in `zone` (the batch's
    `field_time_zone()`); None when the field reads other forms or has a zone of its own."""
    formats = getattr(field, "input_formats", api_settings.DATETIME_INPUT_FORMATS)
    if type(field) is not serializers.DateTimeField or hasattr(field, "timezone"):
        return None
    if [input_format.lower() for input_format in formats] != [ISO_8601]:
        return None

    def check(value: Any, zone: tzinfo | None) -> datetime:
        # A naive time (made aware in the zone, checked for a gap), a naive zone setting: the field decides.
        if zone is None or not isinstance(value, str):
            raise Unsure
        try:
            parsed = parse_datetime(value)
        except (ValueError, TypeError):
            raise Unsure from None
        if parsed is None or parsed.utcoffset() is None:
            raise Unsure
        try:
            return parsed.astimezone(zone)
        except OverflowError:
            raise Unsure from None

    return check


def _field_check(field: serializers.Field) -> Check:
    """The plain check of one of EventSerializer's fields, from what it declares."""
    if isinstance(field, serializers.UUIDField):
        return _uuid_check
    if isinstance(field, TextField | serializers.RegexField):
        return _text_check(field)
    if isinstance(field, serializers.ChoiceField):
        return _choice_check(field)
    if isinstance(field, WholeNumberField | NumberField):
        return _number_check(field)
    # The rest (timestamp, cost_usd, tags) are converted by the field itself, then bounded.
    return _converted_check(field)


def _converted_check(field: serializers.Field) -> Check:
    low, high = getattr(field, "min_value", None), getattr(field, "max_value", None)

    def check(value: Any) -> Any:
        if value is None or isinstance(value, bool) or isinstance(field, TagsField) and not isinstance(value, dict):
            raise Unsure
        try:
            value = validate_tags(value) if isinstance(field, TagsField) else field.to_internal_value(value)
        except Exception:  # noqa: BLE001 - whatever it is, EventSerializer answers it
            raise Unsure from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise Unsure
        return value

    return check


@dataclass(frozen=True)
class PlainField:
    name: str
    check: Check
    allow_null: bool
    required: bool
    default: Any  # `empty`: none
    zoned: bool  # check(value, zone): a time, given in the batch's field_time_zone()


def _plain_fields() -> list[PlainField]:
    fields = EventSerializer().fields
    plain = []
    for name, field in fields.items():
        zoned_check = _datetime_check(field) if isinstance(field, serializers.DateTimeField) else None
        check = zoned_check or _field_check(field)
        plain.append(PlainField(name, check, field.allow_null, field.required, field.default, zoned_check is not None))
    return plain


PLAIN_FIELDS = _plain_fields()


_NO_ZONE = object()


def plain_event(event: object, zone: Any = _NO_ZONE) -> dict | None:
    """EventSerializer's validated data for `event` when the plain check is sure it is valid;
    None when EventSerializer must look at it. `zone`: field_time_zone(), once for a batch."""
    if not isinstance(event, dict):
        return None
    if zone is _NO_ZONE:
        zone = field_time_zone()
    data: dict[str, Any] = {}
    try:
        for field in PLAIN_FIELDS:
            value = event.get(field.name, empty)
            if value is empty:
                if field.required:
                    raise Unsure
                if field.default is not empty:
                    data[field.name] = field.default
                continue
            if value is None and field.allow_null:
                data[field.name] = None
            else:
                data[field.name] = field.check(value, zone) if field.zoned else field.check(value)
    except Unsure:
        return None
    return _plain_event_rules(data)


def _plain_event_rules(data: dict[str, Any]) -> dict | None:
    """EventSerializer.validate_timestamp and .validate, on checked values: None for any error."""
    timestamp = data.get("timestamp")
    if timestamp is not None and not EARLIEST_TIMESTAMP <= timestamp <= timezone.now() + FUTURE_TOLERANCE:
        return None
    if EventSerializer.total_tokens_error(data) or EventSerializer.cached_tokens_error(data):
        return None
    ttft = data.get("ttft_ms")
    if ttft is not None and "latency_ms" in data and ttft > data["latency_ms"]:
        return None
    error_type = data.get("error_type", "")
    status = data.get("status") or (LLMRequestLog.Status.ERROR if error_type else LLMRequestLog.Status.SUCCESS)
    if status == LLMRequestLog.Status.SUCCESS and error_type:
        return None
    data["status"] = status
    data.setdefault("prompt_tokens", 0)
    data.setdefault("completion_tokens", 0)
    data.setdefault("latency_ms", 0.0)
    data["error_type"] = error_type or (LLMRequestLog.ErrorType.OTHER if status == "error" else "")
    return data


# Rows by position: Django's keyword constructor took a tenth of a 500-event batch.
ROW_SHAPE = RowShape(LLMRequestLog)


def log_from_event(data: dict) -> LLMRequestLog:
    """An unsaved row for one validated event."""
    prompt_tokens, completion_tokens = data["prompt_tokens"], data["completion_tokens"]
    log = ROW_SHAPE.row(
        {
            "request_id": data.get("request_id") or uuid.uuid4(),
            "timestamp": data.get("timestamp") or timezone.now(),
            "source": LLMRequestLog.Source.API,
            "provider": data["provider"],
            "model_name": data["model"],
            "user_id": data.get("user_id", ""),
            "session_id": data.get("session_id", ""),
            "trace_id": data.get("trace_id", "").lower(),
            "span_id": data.get("span_id", "").lower(),
            "parent_span_id": data.get("parent_span_id", "").lower(),
            "prompt_text": data.get("prompt", ""),
            "response_text": data.get("response", ""),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": data.get("total_tokens") or prompt_tokens + completion_tokens,
            "cached_tokens": data.get("cached_tokens", 0),
            "latency_ms": data["latency_ms"],
            "ttft_ms": data.get("ttft_ms"),
            "cost_estimate": data.get("cost_usd"),  # None: record_many prices it
            "status": data["status"],
            "error_type": data["error_type"],
            "error_message": data.get("error_message", ""),
            "finish_reason": data.get("finish_reason", ""),
            "temperature": data.get("temperature"),
            "max_tokens": data.get("max_tokens"),
            "tags": data.get("tags", {}),
        }
    )
    fill_ids_from_tags(log)
    return log


@dataclass
class StoredEvents:
    created: int
    duplicates: int
    request_ids: list[str]


def store_events(validated: list[dict]) -> StoredEvents:
    logs = [log_from_event(data) for data in validated]
    created, duplicates = LLMRequestLog.objects.record_many(logs)
    return StoredEvents(created, duplicates, [str(log.request_id) for log in logs])
