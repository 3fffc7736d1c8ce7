"""What validating at the door costs: the strict, depth-limited JSON reader against plain
json.loads on a full events batch, the events serializer on that batch, and OTLP/JSON decoded span
by span (a bad span rejected alone) against one ParseDict of the whole export.

No database rows are needed: `.venv/bin/python bench/validation_bench.py`.
"""

from __future__ import annotations

import base64
import copy
import json
import statistics
import time

import common  # noqa: F401  (Django set up)
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from llm import otlp
from llm.events import MAX_EVENTS_PER_BATCH
from llm.ingest_limits import parse_json
from llm.serializers import EventSerializer

RUNS = 7


def median_ms(function) -> float:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def events_body() -> bytes:
    event = {
        "model": "llama-3.1-8b-instant",
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "latency_ms": 812.5,
        "user_id": "user-42",
        "session_id": "session-7",
        "prompt": "Summarise the following text. " * 20,
        "response": "A short summary. " * 20,
        "tags": {"team": "search", "feature": "summaries", "env": "prod"},
        "temperature": 0.7,
    }
    return json.dumps({"events": [event] * MAX_EVENTS_PER_BATCH}).encode()


def otlp_body(spans: int = 1_000) -> bytes:
    def span(index: int) -> dict:
        return {
            "traceId": f"{index:032x}",
            "spanId": f"{index + 1:016x}",
            "name": "chat",
            "startTimeUnixNano": "1748779200000000000",
            "endTimeUnixNano": "1748779200420000000",
            "attributes": [
                {"key": "gen_ai.request.model", "value": {"stringValue": "llama-3.1-8b-instant"}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1200"}},
                {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "300"}},
                {"key": "gen_ai.request.temperature", "value": {"doubleValue": 0.7}},
                {"key": "gen_ai.prompt", "value": {"stringValue": "Summarise the following text. " * 20}},
            ],
        }

    document = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "bench"}}]},
                "scopeSpans": [{"scope": {"name": "bench"}, "spans": [span(i) for i in range(spans)]}],
            }
        ]
    }
    return json.dumps(document).encode()


def whole_document_parse(body: bytes) -> ExportTraceServiceRequest:
    """The receiver before: one ParseDict of the whole export (any bad span refused them all)."""
    document = json.loads(body)
    for span in document["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId"):
            span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return json_format.ParseDict(document, ExportTraceServiceRequest(), ignore_unknown_fields=True)


def main() -> None:
    body = events_body()
    payload = json.loads(body)
    print(f"events batch: {MAX_EVENTS_PER_BATCH} events, {len(body) / 1e6:.2f} MB")
    print(f"  json.loads                     {median_ms(lambda: json.loads(body)):8.1f} ms")
    print(f"  parse_json (strict, depth)     {median_ms(lambda: parse_json(body)):8.1f} ms")
    validate = lambda: EventSerializer(data=copy.deepcopy(payload["events"]), many=True).is_valid(  # noqa: E731
        raise_exception=True
    )
    print(f"  EventSerializer, whole batch   {median_ms(validate):8.1f} ms")

    spans = otlp_body()
    print(f"OTLP/JSON export: 1,000 spans, {len(spans) / 1e6:.2f} MB")
    print(f"  one ParseDict (before)         {median_ms(lambda: whole_document_parse(spans)):8.1f} ms")
    per_span = median_ms(lambda: otlp.decode_trace_request(spans, json_encoded=True))
    print(f"  span by span (now)             {per_span:8.1f} ms")
    decoded = otlp.decode_trace_request(spans, json_encoded=True)
    print(f"  rows from spans (with checks)  {median_ms(lambda: otlp.logs_from_trace_request(decoded)):8.1f} ms")


if __name__ == "__main__":
    main()
