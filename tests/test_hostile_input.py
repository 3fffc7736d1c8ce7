"""Hostile input on every door: values the storage cannot hold, filters, deep JSON, control
characters in rule names. Each door answers 400 naming the field (an OTLP span is rejected alone,
with its reason), and what the doors accept can always be read back, shown and exported.

Real parts only: the events API, the OTLP receiver (protobuf and JSON), the prompt endpoint against
tests/fake_groq.py, feedback, alert rules, the pages and admin, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from llm import alerts
from llm.ingest_limits import MAX_COST_USD, MAX_COUNT, MAX_JSON_DEPTH, MAX_LATENCY_MS
from llm.models import AlertRule, LLMRequestLog, UserFeedback
from tests.factories import make_alert, make_feedback, make_log, make_rule
from tests.fake_groq import Behaviour

pytestmark = pytest.mark.django_db

MAX_U64 = 2**64 - 1
BEYOND_64_BITS = "99999999999999999999999"


# json.dumps writes infinity as the literal Infinity, which is not JSON; these stand for the
# number 1e999, which json.loads (like most parsers) reads as infinity.
HUGE, MINUS_HUGE = "__1e999__", "__-1e999__"


def post_json(client, url: str, body, method: str = "post", **extra):
    text = body if isinstance(body, str) else json.dumps(body)
    text = text.replace(f'"{HUGE}"', "1e999").replace(f'"{MINUS_HUGE}"', "-1e999")
    return getattr(client, method)(url, text, content_type="application/json", **extra)


def refuse_constant(name: str):
    raise AssertionError(f"{name} in a JSON answer")


def strict_json(text: str | bytes):
    return json.loads(text, parse_constant=refuse_constant)


def named_fields(response) -> set[str]:
    return set(response.json()["fields"])


# 1. Values the storage cannot hold: the events API.

NOW = timezone.now()


def event(**overrides) -> dict:
    return {"model": "llama-3.1-8b-instant", "prompt_tokens": 10, "completion_tokens": 5, "latency_ms": 12, **overrides}


UNSTORABLE_EVENTS = [
    ({"tags": {"k": "v\x00"}}, "tags"),
    ({"tags": {"k\x00": "v"}}, "tags"),
    ({"tags": {"k": "\ud800"}}, "tags"),
    ({"tags": {"\udfff": "v"}}, "tags"),
    ({"model": "m\x00"}, "model"),
    ({"provider": "\ud83d"}, "provider"),
    ({"user_id": "u\x00"}, "user_id"),
    ({"session_id": "s\udc00"}, "session_id"),
    ({"prompt": "p\x00"}, "prompt"),
    ({"response": "r\ud800"}, "response"),
    ({"error_message": "e\x00", "status": "error"}, "error_message"),
    ({"finish_reason": "stop\x00"}, "finish_reason"),
    # Two counts of 2^31-1 each fit; their total does not.
    ({"prompt_tokens": MAX_COUNT, "completion_tokens": MAX_COUNT}, "total_tokens"),
    ({"prompt_tokens": MAX_COUNT + 1}, "prompt_tokens"),
    ({"completion_tokens": MAX_COUNT + 1}, "completion_tokens"),
    ({"max_tokens": 2**40}, "max_tokens"),
    ({"cost_usd": "9999999999.9999999999"}, "cost_usd"),
    ({"cost_usd": str(MAX_COST_USD + Decimal("0.0000000001"))}, "cost_usd"),
    ({"cost_usd": HUGE}, "cost_usd"),
    ({"timestamp": "0001-01-01T00:00:00Z"}, "timestamp"),
    ({"timestamp": "1969-12-31T23:59:59Z"}, "timestamp"),
    ({"timestamp": "9999-12-31T23:59:59Z"}, "timestamp"),
    # json.loads reads 1e999 as Infinity.
    ({"latency_ms": HUGE}, "latency_ms"),
    ({"latency_ms": MINUS_HUGE}, "latency_ms"),
    ({"latency_ms": MAX_LATENCY_MS + 1}, "latency_ms"),
    ({"latency_ms": 10**400}, "latency_ms"),
    ({"ttft_ms": HUGE}, "ttft_ms"),
    ({"temperature": HUGE}, "temperature"),
    ({"temperature": 10**400}, "temperature"),
]


@pytest.mark.parametrize(("overrides", "field"), UNSTORABLE_EVENTS)
def test_events_refuse_what_the_storage_cannot_hold(api_client, overrides, field):
    single = post_json(api_client, "/api/events/", event(**overrides))
    assert single.status_code == 400, single.content
    assert named_fields(single) == {field}

    batch = post_json(api_client, "/api/events/", {"events": [event(), event(**overrides), event()]})
    assert batch.status_code == 400
    assert batch.json()["fields"] == {"events": {"1": {field: single.json()["fields"][field]}}}
    assert LLMRequestLog.objects.count() == 0


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_events_refuse_json_constants_that_are_not_json(api_client, constant):
    response = post_json(api_client, "/api/events/", '{"model": "m", "latency_ms": ' + constant + "}")
    assert response.status_code == 400
    assert constant.lstrip("-") in response.json()["error"]
    assert LLMRequestLog.objects.count() == 0


def test_events_at_the_limits_are_stored_exactly(api_client):
    half = MAX_COUNT // 2
    body = event(
        prompt_tokens=half,
        completion_tokens=MAX_COUNT - half,
        cost_usd=str(MAX_COST_USD),
        latency_ms=MAX_LATENCY_MS,
        ttft_ms=MAX_LATENCY_MS,
        timestamp="1970-01-01T00:00:00Z",
    )
    assert post_json(api_client, "/api/events/", body).status_code == 201
    row = LLMRequestLog.objects.get()
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (half, MAX_COUNT - half, MAX_COUNT)
    assert (row.cost_estimate, row.latency_ms) == (MAX_COST_USD, MAX_LATENCY_MS)
    assert row.timestamp == datetime(1970, 1, 1, tzinfo=UTC)


# 1. The OTLP receiver: a bad span is rejected alone, with its reason; the others are stored.

T0 = int(datetime(2025, 6, 1, 12, 0, tzinfo=UTC).timestamp()) * 1_000_000_000
MS = 1_000_000
TRACE_ID = "5b8efff798038103d269b633813fc60c"
GOOD_SPAN, BAD_SPAN = "aaaaaaaaaaaaaaa1", "bbbbbbbbbbbbbbb2"


def otlp_span(span_id: str, attributes: dict | None = None, **fields) -> dict:
    values = {
        "gen_ai.operation.name": {"stringValue": "chat"},
        "gen_ai.request.model": {"stringValue": "llama-3.1-8b-instant"},
        "gen_ai.usage.input_tokens": {"intValue": "10"},
        "gen_ai.usage.output_tokens": {"intValue": "5"},
        **(attributes or {}),
    }
    return {
        "traceId": TRACE_ID,
        "spanId": span_id,
        "name": "chat",
        "startTimeUnixNano": str(T0),
        "endTimeUnixNano": str(T0 + 420 * MS),
        "attributes": [{"key": key, "value": value} for key, value in values.items()],
        **fields,
    }


def otlp_document(bad_span: dict, resource_attributes: dict | None = None) -> dict:
    """A clean resource with a good span, and a second resource (maybe hostile) with the bad one."""

    def resource_spans(attributes: dict, span: dict) -> dict:
        return {
            "resource": {"attributes": [{"key": key, "value": value} for key, value in attributes.items()]},
            "scopeSpans": [{"scope": {"name": "tests"}, "spans": [span]}],
        }

    clean = {"service.name": {"stringValue": "clean"}}
    return {
        "resourceSpans": [
            resource_spans(clean, otlp_span(GOOD_SPAN)),
            resource_spans({**clean, **(resource_attributes or {})}, bad_span),
        ]
    }


def as_protobuf(document: dict) -> bytes:
    """The same export in protobuf, built by protobuf's own JSON mapping (ids as base64)."""
    document = copy.deepcopy(document)
    for resource_spans in document["resourceSpans"]:
        for span in resource_spans["scopeSpans"][0]["spans"]:
            for key in ("traceId", "spanId"):
                span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return json_format.ParseDict(document, ExportTraceServiceRequest()).SerializeToString()


def export(client, api_key: str, document: dict, encoding: str) -> tuple[int, str]:
    """POST the export; answers (rejected spans, partial_success message)."""
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key}"}
    if encoding == "json":
        response = client.post("/v1/traces", json.dumps(document), content_type="application/json", **auth)
        assert response.status_code == 200, response.content
        partial = response.json().get("partialSuccess", {})
        return int(partial.get("rejectedSpans", 0)), partial.get("errorMessage", "")
    response = client.post("/v1/traces", as_protobuf(document), content_type="application/x-protobuf", **auth)
    assert response.status_code == 200, response.content
    answer = ExportTraceServiceResponse.FromString(response.content)
    return answer.partial_success.rejected_spans, answer.partial_success.error_message


# (what is wrong, the bad span's attributes, its other fields, its resource's attributes, the reason)
BAD_SPANS = [
    ("model NUL", {"gen_ai.request.model": {"stringValue": "m\x00"}}, {}, {}, "model_name: Null characters"),
    ("provider NUL", {"gen_ai.provider.name": {"stringValue": "g\x00"}}, {}, {}, "provider: Null"),
    ("user NUL", {"user.id": {"stringValue": "u\x00"}}, {}, {}, "user_id: Null"),
    ("session NUL", {"session.id": {"stringValue": "s\x00"}}, {}, {}, "session_id: Null"),
    ("prompt NUL", {"gen_ai.prompt": {"stringValue": "p\x00"}}, {}, {}, "prompt_text: Null"),
    ("completion NUL", {"gen_ai.completion": {"stringValue": "c\x00"}}, {}, {}, "response_text: Null"),
    ("error NUL", {"error.type": {"stringValue": "Boom\x00"}}, {}, {}, "error_message: Null"),
    ("finish NUL", {"gen_ai.response.finish_reasons": {"stringValue": "stop\x00"}}, {}, {}, "finish_reason: Null"),
    ("resource NUL", {}, {}, {"service.name": {"stringValue": "svc\x00"}}, "tag service.name: Null"),
    ("temperature NaN", {"gen_ai.request.temperature": {"doubleValue": "NaN"}}, {}, {}, "temperature"),
    ("temperature Infinity", {"gen_ai.request.temperature": {"doubleValue": "Infinity"}}, {}, {}, "temperature"),
    ("tokens Infinity", {"gen_ai.usage.input_tokens": {"doubleValue": "Infinity"}}, {}, {}, "input_tokens"),
    ("tokens NaN", {"gen_ai.usage.output_tokens": {"doubleValue": "NaN"}}, {}, {}, "output_tokens"),
    ("tokens beyond 32 bits", {"gen_ai.usage.input_tokens": {"intValue": str(MAX_COUNT + 1)}}, {}, {}, "input_tokens"),
    (
        "token sum beyond 32 bits",
        {"gen_ai.usage.input_tokens": {"intValue": str(MAX_COUNT)}, "gen_ai.usage.output_tokens": {"intValue": "1"}},
        {},
        {},
        "input + output tokens",
    ),
    ("ends 528 years later", {}, {"endTimeUnixNano": str(MAX_U64)}, {}, "lasts more than 24 hours"),
]
# What protobuf's JSON mapping refuses; a protobuf body cannot carry these (a protobuf message
# with invalid UTF-8 is undecodable as a whole).
BAD_JSON_SPANS = [
    ("lone surrogate", {"gen_ai.prompt": {"stringValue": "\ud800"}}, {}, {}, "Unpaired surrogate"),
    ("resource surrogate", {}, {}, {"host.name": {"stringValue": "\udc00"}}, "resource: "),
    ("int beyond 64 bits", {"gen_ai.usage.input_tokens": {"intValue": BEYOND_64_BITS}}, {}, {}, "intValue"),
    ("trace id not hex", {}, {"traceId": "zz" * 16}, {}, "traceId is not hex"),
    ("start not a number", {}, {"startTimeUnixNano": "soon"}, {}, "startTimeUnixNano"),
]


@pytest.mark.parametrize(
    ("encoding", "case"),
    [*[("json", case) for case in BAD_SPANS + BAD_JSON_SPANS], *[("protobuf", case) for case in BAD_SPANS]],
    ids=lambda value: value if isinstance(value, str) else value[0],
)
def test_otlp_rejects_the_bad_span_with_its_reason_and_stores_the_others(client, api_key, encoding, case):
    _, attributes, fields, resource_attributes, reason = case
    document = otlp_document(otlp_span(BAD_SPAN, attributes, **fields), resource_attributes)

    rejected, message = export(client, api_key, document, encoding)

    assert rejected == 1
    assert f"span {BAD_SPAN}: " in message and reason in message, message
    assert list(LLMRequestLog.objects.values_list("span_id", flat=True)) == [GOOD_SPAN]


def test_otlp_keeps_json_in_an_attribute_it_cannot_read_as_text(client, api_key):
    """Messages given as a JSON string too deep (or with NaN) to read: kept as the text they are."""
    deep = "[" * 5_000 + "]" * 5_000
    with_nan = '[{"role": "user", "content": NaN}]'
    span = otlp_span(
        BAD_SPAN,
        {"gen_ai.input.messages": {"stringValue": deep}, "gen_ai.output.messages": {"stringValue": with_nan}},
    )
    rejected, message = export(client, api_key, otlp_document(span), "json")
    assert (rejected, message) == (0, "")
    row = LLMRequestLog.objects.get(span_id=BAD_SPAN)
    assert (row.prompt_text, row.response_text) == (deep, with_nan)


# 1. The prompt endpoint (the fake Groq server must not be called for a refused request).

BAD_PROMPTS = [
    ({"prompt": "p\x00"}, "prompt"),
    ({"prompt": "p\ud800"}, "prompt"),
    ({"system_prompt": "s\x00"}, "system_prompt"),
    ({"user_id": "u\udfff"}, "user_id"),
    ({"session_id": "s\x00"}, "session_id"),
    ({"model": "m\x00"}, "model"),
    ({"tags": {"k": "v\x00"}}, "tags"),
    ({"tags": {"k\ud800": "v"}}, "tags"),
    ({"temperature": HUGE}, "temperature"),
    ({"temperature": 10**400}, "temperature"),
    ({"max_tokens": 10**30}, "max_tokens"),
]


@pytest.mark.parametrize(("overrides", "field"), BAD_PROMPTS)
def test_prompt_refuses_unstorable_values_before_calling_the_provider(api_client, fake_groq, overrides, field):
    response = post_json(api_client, "/api/llm/prompt/", {"prompt": "hi", **overrides})
    assert response.status_code == 400, response.content
    assert named_fields(response) == {field}
    assert fake_groq.requests == [] and LLMRequestLog.objects.count() == 0


def test_prompt_tags_sent_as_a_form_field_are_read_with_the_depth_limit(api_client, fake_groq):
    response = api_client.post("/api/llm/prompt/", {"prompt": "hi", "tags": "[" * 3_000 + "]" * 3_000})
    assert response.status_code == 400
    assert named_fields(response) == {"tags"}
    assert fake_groq.requests == []


@pytest.mark.parametrize("character", ["\x00", "\ud800"])
def test_text_a_provider_answers_that_cannot_be_stored_is_logged_with_it_replaced(api_client, fake_groq, character):
    """The call happened: its answer is passed on (JSON escapes what UTF-8 cannot carry) and logged
    with the character replaced by U+FFFD."""
    fake_groq.will(
        Behaviour(text=f"a{character}b"), Behaviour(mode="status", status=500, error_message=f"bad{character}news")
    )
    answered = post_json(api_client, "/api/llm/prompt/", {"prompt": "hi"})
    assert answered.status_code == 200 and strict_json(answered.content)["response"] == f"a{character}b"
    failed = post_json(api_client, "/api/llm/prompt/", {"prompt": "hi"})
    assert failed.status_code == 502 and strict_json(failed.content)["upstream_message"] == f"bad{character}news"
    ok, error = LLMRequestLog.objects.order_by("timestamp", "id")
    assert ok.response_text == "a\ufffdb"
    assert error.error_message.endswith("bad\ufffdnews")
    for row in (ok, error):
        assert api_client.get(f"/api/logs/{row.request_id}/").status_code == 200


# 1. Feedback and alert rules.


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"comment": "c\x00"}, "comment"), ({"comment": "c\ud800"}, "comment"), ({"rater": "r\x00"}, "rater")],
)
def test_feedback_refuses_unstorable_text(api_client, overrides, field):
    log = make_log()
    body = {"request_id": str(log.request_id), "rating": "thumbs_up", **overrides}
    response = post_json(api_client, "/api/feedback/", body)
    assert response.status_code == 400
    assert named_fields(response) == {field}
    assert UserFeedback.objects.count() == 0


RULE = {"name": "Cost", "metric_type": "cost", "threshold": 1.0}
BAD_RULES = [
    ({"name": "Cost\nBcc: victim@example.com"}, "name"),
    ({"name": "Cost\rper day"}, "name"),
    ({"name": "Cost\tper day"}, "name"),
    ({"name": "Cost\x1b[31m"}, "name"),
    ({"name": "Cost\u2028line"}, "name"),
    ({"name": "Cost\x00"}, "name"),
    ({"name": "Cost\ud800"}, "name"),
    ({"description": "d\x00"}, "description"),
    ({"model_name": "m\ud800"}, "model_name"),
    ({"threshold": HUGE}, "threshold"),
    ({"threshold": MINUS_HUGE}, "threshold"),
    ({"threshold": 10**400}, "threshold"),
    ({"time_window_minutes": 10**30}, "time_window_minutes"),
    ({"cooldown_minutes": 2**40}, "cooldown_minutes"),
]


@pytest.mark.parametrize(("overrides", "field"), BAD_RULES)
def test_alert_rules_refuse_bad_values_on_create_and_update(api_client, overrides, field):
    created = post_json(api_client, "/api/alerts/rules/", {**RULE, **overrides})
    assert created.status_code == 400, created.content
    assert named_fields(created) == {field}
    assert AlertRule.objects.count() == 0

    rule = make_rule(name="Kept")
    url = f"/api/alerts/rules/{rule.pk}/"
    for method, body in (("patch", overrides), ("put", {**RULE, **overrides})):
        response = post_json(api_client, url, body, method=method)
        assert response.status_code == 400, (method, response.content)
        assert named_fields(response) == {field}
    rule.refresh_from_db()
    assert (rule.name, rule.threshold) == ("Kept", 5)


def test_admin_refuses_a_rule_name_with_a_line_break(admin_client):
    data = {
        "name": "Cost\nper day",
        "metric_type": "cost",
        "threshold": "1",
        "time_window_minutes": "60",
        "cooldown_minutes": "60",
        "is_active": "on",
    }
    response = admin_client.post("/admin/llm/alertrule/add/", data)
    assert response.status_code == 200  # the form again, with the error
    assert "Must be one line" in response.content.decode()
    assert AlertRule.objects.count() == 0


def test_a_rule_named_with_a_line_break_before_names_were_checked_still_sends_email(settings):
    settings.ALERT_EMAIL_RECIPIENTS = ["ops@example.com"]
    # Written past the validators, as rows stored before this check exist.
    rule = make_rule(name="Cost\nBcc: victim@example.com\r\n", metric_type="cost", threshold=1)
    alert = make_alert(rule, message=f"{rule.name}: over 1")

    assert alerts.deliver_pending([rule], timezone.now()) == [alert]

    alert.refresh_from_db()
    assert alert.notifications["email"]["status"] == "sent", alert.notifications
    (message,) = mail.outbox
    assert message.subject == "[FIRING] Cost Bcc: victim@example.com : Cost Bcc: victim@example.com : over 1"
    assert message.to == ["ops@example.com"] and "\n" not in message.subject


# 3. Deeply nested JSON: 400 on every JSON endpoint.

DEEP = "[" * 3_000 + "]" * 3_000
JUST_TOO_DEEP = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)


@pytest.mark.parametrize("body", [DEEP, JUST_TOO_DEEP, '{"a": ' * 3_000 + "1" + "}" * 3_000])
@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("post", "/api/events/"),
        ("post", "/api/llm/prompt/"),
        ("post", "/api/feedback/"),
        ("post", "/api/alerts/rules/"),
        ("put", "/api/alerts/rules/{rule}/"),
        ("patch", "/api/alerts/rules/{rule}/"),
        ("post", "/api/alerts/rules/{rule}/test/"),
        ("post", "/api/alerts/rules/{rule}/check/"),
        ("post", "/api/alerts/logs/{alert}/acknowledge/"),
    ],
)
def test_deeply_nested_json_is_a_400_on_every_json_endpoint(api_client, method, url, body):
    rule = make_rule()
    alert = make_alert(rule)
    response = post_json(api_client, url.format(rule=rule.pk, alert=alert.pk), body, method=method)
    # Endpoints that read no body answer as if it were empty; none answers 500.
    assert response.status_code in (200, 400), response.content
    if url in ("/api/events/", "/api/llm/prompt/", "/api/feedback/", "/api/alerts/rules/") or method != "post":
        assert response.status_code == 400
        assert "deep" in response.json()["error"]


@pytest.mark.parametrize("body", [DEEP, JUST_TOO_DEEP])
def test_deeply_nested_otlp_json_is_a_400(client, api_key, body):
    response = client.post("/v1/traces", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api_key}")
    assert response.status_code == 400
    assert "deep" in response.json()["message"]


def test_json_at_the_depth_limit_is_read(api_client):
    """MAX_JSON_DEPTH levels are read (then refused: no list of events); one more is too deep."""

    def nested(levels: int) -> str:  # an object holding lists: `levels` deep in all
        return '{"events": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}"

    read = post_json(api_client, "/api/events/", nested(MAX_JSON_DEPTH))
    assert read.status_code == 400 and "events" in read.json()["fields"]
    too_deep = post_json(api_client, "/api/events/", nested(MAX_JSON_DEPTH + 1))
    assert too_deep.status_code == 400 and "deep" in too_deep.json()["error"]


# 2. Filters: every value answers 200 or 400 naming the parameter, on the API and on every page.

HOSTILE_FILTERS = [
    {"start_date": "0001-01-02"},
    {"end_date": "9999-12-31"},
    {"start_date": "1899-12-31T23:00:00-01:00"},
    {"start_date": "2026-01-01T00:00:00+15:00"},
    {"end_date": "not a date"},
    {"start_date": "2025-06-02", "end_date": "2025-06-01"},
    {"start_date": "2999-12-31"},
    {"hours": BEYOND_64_BITS},
    {"hours": "-1"},
    {"hours": "1", "start_date": "2025-06-01"},
    {"model": "\x00"},
    {"model": "m" * 5_000},
    {"user_id": "u\x00"},
    {"status": "bogus"},
    {"search": "s\x00"},
    {"search": "s" * 201},
    {"page": BEYOND_64_BITS},
    {"page_size": BEYOND_64_BITS},
]
FILTERED_ENDPOINTS = [
    "/api/metrics/overview/",
    "/api/metrics/token-usage/",
    "/api/metrics/latency/",
    "/api/metrics/errors/",
    "/api/metrics/model-usage/",
    "/api/metrics/daily-stats/",
    "/api/metrics/timeseries/",
    "/api/logs/",
    "/api/logs/errors/",
    "/api/feedback/",
    "/api/feedback/analytics/",
    "/api/export/csv/",
    "/api/export/json/",
]


def assert_200_or_400_naming(response, params: dict) -> None:
    if "page" in params and response.status_code == 404:
        return  # DRF's answer for a page past the last one
    assert response.status_code in (200, 400), (params, response.status_code)
    if response.status_code == 400:
        assert named_fields(response) & set(params), (params, response.json())


@pytest.mark.parametrize("url", FILTERED_ENDPOINTS)
def test_every_filter_value_is_200_or_400_naming_it_on_the_api(api_client, url):
    make_log(tags={"k": "v"})
    for params in HOSTILE_FILTERS:
        response = api_client.get(url, params)
        assert_200_or_400_naming(response, params)
        if response.status_code == 200 and url.startswith("/api/export/"):
            b"".join(response.streaming_content)  # the whole body, not cut by an error mid-stream
    # The values that are wrong are always refused.
    for params in ({"start_date": "0001-01-02"}, {"end_date": "9999-12-31"}, {"model": "\x00"}, {"user_id": "\x00"}):
        assert named_fields(api_client.get(url, params)) == set(params)


@pytest.mark.parametrize(
    "params",
    [
        {"rule": BEYOND_64_BITS},
        {"rule": "-1"},
        {"rule": "1.5"},
        {"since": "0001-01-01T00:00:00"},
        {"until": "9999-12-31T23:59:59"},
        {"since": "bogus"},
        {"kind": "\x00"},
        {"acknowledged": "maybe"},
    ],
)
@pytest.mark.parametrize("time_zone", ["UTC", "America/New_York", "Pacific/Kiritimati"])
def test_alert_log_filters_are_200_or_400_naming_them(api_client, settings, params, time_zone):
    settings.TIME_ZONE = time_zone
    make_alert(make_rule())
    assert_200_or_400_naming(api_client.get("/api/alerts/logs/", params), params)


def test_ids_beyond_64_bits_are_404(api_client, logged_in_client, admin_client):
    for method, url in [
        ("post", f"/api/alerts/logs/{BEYOND_64_BITS}/acknowledge/"),
        ("get", f"/api/alerts/rules/{BEYOND_64_BITS}/"),
        ("post", f"/api/alerts/rules/{BEYOND_64_BITS}/test/"),
        ("post", f"/api/alerts/rules/{BEYOND_64_BITS}/check/"),
    ]:
        assert getattr(api_client, method)(url).status_code == 404, url
    for url in (
        f"/alerts/{BEYOND_64_BITS}/acknowledge/",
        f"/alerts/rules/{BEYOND_64_BITS}/test/",
        f"/alerts/rules/{BEYOND_64_BITS}/check/",
    ):
        assert logged_in_client.post(url).status_code == 404, url
    for model in ("alertrule", "alertlog", "llmrequestlog", "userfeedback", "modelprice", "apikey"):
        # Admin sends a missing object back to the list, with a message.
        change = admin_client.get(f"/admin/llm/{model}/{BEYOND_64_BITS}/change/")
        assert change.status_code == 302, model
        listing = admin_client.get(f"/admin/llm/{model}/", {"id__exact": BEYOND_64_BITS})
        assert listing.status_code in (200, 302), model


ADMIN_LISTS = ["llmrequestlog", "userfeedback", "alertrule", "alertlog", "modelprice", "apikey"]
ADMIN_LOOKUPS = [
    {"q": "\x00"},
    {"model_name": "\x00"},
    {"name": "a\x00"},
    {"created_at__year": "0"},
    {"created_at__year": "99999"},
    {"timestamp__year": "0"},
    {"triggered_at__gte": "0001-01-01"},
    {"id__exact": BEYOND_64_BITS},
    {"p": BEYOND_64_BITS},
]


@pytest.mark.parametrize("model", ADMIN_LISTS)
def test_admin_lists_send_a_lookup_the_database_cannot_run_back_to_the_list(admin_client, model):
    make_feedback(make_log(model_name="m"))
    make_alert(make_rule())
    for params in ADMIN_LOOKUPS:
        response = admin_client.get(f"/admin/llm/{model}/", params)
        assert response.status_code in (200, 302), (model, params)
        if response.status_code == 302:
            assert response["Location"].endswith("?e=1"), (model, params)
    assert admin_client.get(f"/admin/llm/{model}/", {"e": "1"}).status_code == 200


@pytest.mark.parametrize("time_zone", ["America/New_York", "Pacific/Kiritimati"])
@pytest.mark.parametrize("day", ["0001-01-01", "1969-12-31", "3000-01-01", "9999-12-31"])
def test_admin_refuses_a_feedback_time_pages_could_not_show(admin_client, settings, time_zone, day):
    settings.TIME_ZONE = time_zone
    log = make_log()
    feedback = make_feedback(log, rater="x")
    before = feedback.created_at
    data = {"request": log.pk, "rating": "thumbs_up", "rater": "x", "created_at_0": day, "created_at_1": "23:59:59"}
    response = admin_client.post(f"/admin/llm/userfeedback/{feedback.pk}/change/", data)
    assert response.status_code == 200  # the form again, with the error
    assert "Enter a time between the years 1970 and 2999" in response.content.decode()
    feedback.refresh_from_db()
    assert feedback.created_at == before


def test_the_feedback_form_on_a_call_refuses_a_nul(logged_in_client):
    log = make_log()
    response = logged_in_client.post(f"/logs/{log.request_id}/", {"rating": "thumbs_up", "comment": "c\x00"})
    assert response.status_code == 200  # the form again, with the error
    assert "Null characters are not allowed" in response.content.decode()
    assert UserFeedback.objects.count() == 0


PAGES = ["/", "/analytics/", "/logs/", "/feedback/"]
BAD_PAGE_VALUES = [
    ({"range": "custom", "start_date": "0001-01-02"}, "start_date"),
    ({"range": "custom", "end_date": "9999-12-31"}, "end_date"),
    ({"range": "custom", "start_date": "2025-06-02", "end_date": "2025-06-01"}, "end_date"),
    ({"range": "custom", "start_date": "2999-12-31"}, "start_date"),
    ({"range": "custom", "end_date": "garbage"}, "end_date"),
    ({"range": "forever"}, "range"),
    ({"model": "\x00"}, "model"),
    ({"model": "m\x00", "range": "custom", "start_date": "0001-01-02"}, "model"),
]
LOG_PAGE_VALUES = [
    ({"user_id": "u\x00"}, "user_id"),
    ({"status": "bogus"}, "status"),
    ({"search": "s\x00"}, "search"),
    ({"search": "s" * 201}, "search"),
    ({"sort": "\x00"}, "sort"),
]
# Values a page takes: shown without an error.
GOOD_PAGE_VALUES = [
    {"range": "custom", "start_date": "1900-01-01", "end_date": "1900-01-02"},
    {"range": "custom", "start_date": "1900-01-01", "end_date": "2999-12-31"},
    {"range": "custom", "end_date": "2000-01-01"},
    {"range": "custom", "start_date": "2999-12-30", "end_date": "2999-12-31"},
    {"range": "custom"},
    {"page": BEYOND_64_BITS, "refresh": "\x00"},
]


def error_box(response) -> str:
    content = response.content.decode()
    start = content.find('class="error-box"')
    return "" if start < 0 else content[start : content.find("</div>", start)]


@pytest.mark.parametrize("time_zone", ["UTC", "America/New_York", "Pacific/Kiritimati"])
@pytest.mark.parametrize("url", PAGES)
def test_every_filter_value_is_shown_on_every_page_never_a_500(logged_in_client, settings, url, time_zone):
    settings.TIME_ZONE = time_zone
    make_log(tags={"k": "v"})
    bad = BAD_PAGE_VALUES + (LOG_PAGE_VALUES if url == "/logs/" else [])
    for params, field in bad:
        response = logged_in_client.get(url, params)
        assert response.status_code == 200, (url, params)
        assert f"<strong>{field}</strong>" in error_box(response), (url, params)
    for params in GOOD_PAGE_VALUES:
        response = logged_in_client.get(url, params)
        assert response.status_code == 200, (url, params)
        assert error_box(response) == "", (url, params)


@pytest.mark.parametrize("url", ["/alerts/", "/playground/", "/logs/{request_id}/", "/traces/{trace_id}/"])
def test_pages_without_filters_ignore_hostile_parameters(logged_in_client, url):
    log = make_log(trace_id="5b8efff798038103d269b633813fc60c", span_id="aaaaaaaaaaaaaaa1")
    path = url.format(request_id=log.request_id, trace_id=log.trace_id)
    response = logged_in_client.get(path, {"range": "custom", "start_date": "0001-01-01", "model": "\x00"})
    assert response.status_code == 200


def test_a_trace_id_with_a_nul_is_refused(api_client, logged_in_client):
    assert api_client.get("/api/traces/%00/").status_code in (400, 404)
    assert logged_in_client.get("/traces/%00/").status_code == 404


# 5. What the doors accept is read back, shown and exported.


def store_hostile_but_accepted_values(api_client, client, api_key, fake_groq) -> None:
    half = MAX_COUNT // 2
    events = [
        event(
            prompt_tokens=half,
            completion_tokens=MAX_COUNT - half,
            cost_usd=str(MAX_COST_USD),
            latency_ms=MAX_LATENCY_MS,
            ttft_ms=MAX_LATENCY_MS,
            timestamp="1970-01-01T00:00:00Z",
            temperature=2,
            max_tokens=MAX_COUNT,
        ),
        event(
            prompt="\x01\x1b[31m\ufeff\u202eright-to-left\u2028line \U0001f389",
            response='=HYPERLINK("http://evil")',
            user_id="<script>alert(1)</script>",
            session_id="\u0301\u200b",
            tags={"<b>k</b>": "\"quoted\" & 'single'", "emoji \U0001f389": "\u202e", "=cmd": "+1"},
            model="m/with spaces & <tags>",
            error_message="line one\nline two\r\n\tand a tab",
            status="error",
            error_type="other",
        ),
        event(timestamp=(timezone.now() - timedelta(minutes=1)).isoformat(), cost_usd="0.0000000001"),
    ]
    assert post_json(api_client, "/api/events/", {"events": events}).status_code == 201
    span = otlp_span(
        BAD_SPAN,
        {
            "gen_ai.request.temperature": {"doubleValue": 1e308},
            "gen_ai.input.messages": {"stringValue": "[" * 5_000 + "]" * 5_000},
            "gen_ai.output.messages": {"stringValue": '[{"content": NaN}]'},
        },
        startTimeUnixNano="1",
        endTimeUnixNano=str(1 + int(MAX_LATENCY_MS) * MS),
    )
    assert export(client, api_key, otlp_document(span), "protobuf") == (0, "")
    fake_groq.will(Behaviour(text="nul\x00in the answer"))
    assert post_json(api_client, "/api/llm/prompt/", {"prompt": "hi"}).status_code == 200


@pytest.mark.parametrize("time_zone", ["UTC", "America/New_York", "Pacific/Kiritimati"])
def test_everything_the_doors_accept_reads_back_shows_and_exports(
    api_client, client, api_key, fake_groq, logged_in_client, admin_client, settings, time_zone
):
    settings.TIME_ZONE = time_zone
    store_hostile_but_accepted_values(api_client, client, api_key, fake_groq)
    rows = list(LLMRequestLog.objects.order_by("timestamp", "id"))
    assert len(rows) == 6
    for index, row in enumerate(rows):
        make_alert(make_rule(name=f"{index}: {row.model_name}"), message=row.prompt_text[:50])
    everything = {"start_date": "1969-12-31", "end_date": (timezone.now() + timedelta(days=1)).date().isoformat()}

    # The API: the figures are those of the raw rows.
    overview = api_client.get("/api/metrics/overview/", everything)
    assert overview.status_code == 200
    figures = strict_json(overview.content)
    assert figures["total_requests"] == len(rows)
    assert figures["total_tokens"] == sum(row.total_tokens for row in rows)
    assert figures["total_cost"] == pytest.approx(float(sum(row.cost_estimate for row in rows)))
    for url in FILTERED_ENDPOINTS:
        response = api_client.get(url, everything)
        assert response.status_code == 200, url
        if url.endswith("/json/"):
            exported = strict_json(b"".join(response.streaming_content))
            assert [item["request_id"] for item in exported] == [str(row.request_id) for row in rows]
            assert [item["total_tokens"] for item in exported] == [row.total_tokens for row in rows]
            assert [item["tags"] for item in exported] == [row.tags for row in rows]
        elif url.endswith("/csv/"):
            lines = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode("utf-8"))))
            assert [line[0] for line in lines[1:]] == [str(row.request_id) for row in rows]
        else:
            strict_json(response.content)
    listed = strict_json(api_client.get("/api/logs/", {**everything, "page_size": 50}).content)
    assert {item["request_id"] for item in listed["results"]} == {str(row.request_id) for row in rows}
    for row in rows:
        assert api_client.get(f"/api/logs/{row.request_id}/").status_code == 200
    assert api_client.get("/api/alerts/logs/").status_code == 200

    # The pages and admin.
    for url in PAGES:
        for params in ({}, {"range": "custom", **everything}):
            response = logged_in_client.get(url, params)
            assert response.status_code == 200, (url, params)
            assert error_box(response) == ""
    assert "&lt;script&gt;" in logged_in_client.get("/logs/", {"range": "custom", **everything}).content.decode()
    for row in rows:
        assert logged_in_client.get(f"/logs/{row.request_id}/").status_code == 200
        assert admin_client.get(f"/admin/llm/llmrequestlog/{row.pk}/change/").status_code == 200
    assert logged_in_client.get("/alerts/").status_code == 200
    for model in ("llmrequestlog", "alertrule", "alertlog"):
        assert admin_client.get(f"/admin/llm/{model}/").status_code == 200
