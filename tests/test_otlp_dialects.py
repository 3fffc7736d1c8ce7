"""POST /v1/traces in every dialect: the real OpenTelemetry SDK exports spans named the way
OpenInference, OpenLLMetry (old and current), the Vercel AI SDK and hand-written
instrumentations name them, to the live test server; non-LLM spans are kept as trace context."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from llm import otlp_dialects
from llm.models import LLMRequestLog, TraceSpan
from tests.test_otlp import MS, T0, by_name, exporter_for, otlp_json, otlp_json_span, post_json

START = datetime.fromtimestamp(T0 / 1e9, tz=UTC)
# Seeded prices (llm/migrations/0002_seed_model_prices.py), USD per million tokens, typed here
# again so that the costs below are computed independently of the app.
PRICES = {
    "llama-3.3-70b-versatile": (Decimal("0.59"), Decimal("0.79")),
    "llama-3.1-8b-instant": (Decimal("0.05"), Decimal("0.08")),
    "qwen/qwen3-32b": (Decimal("0.29"), Decimal("0.59")),
    "openai/gpt-oss-20b": (Decimal("0.075"), Decimal("0.30")),
}


def expected_cost(model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    input_price, output_price = PRICES[model]
    return (prompt_tokens * input_price + completion_tokens * output_price) / 1_000_000


class Recorder:
    """A tracer whose finished spans stay in memory until exported to the test server."""

    def __init__(self, service: str) -> None:
        self.memory = InMemorySpanExporter()
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = provider.get_tracer("tests")

    def span(self, name: str, start_ms: float, parent=None, kind=SpanKind.INTERNAL, **attributes):
        """A span started at T0 + start_ms (`ended` ends it); `attributes` keys use __ for dots."""
        return self.tracer.start_span(
            name,
            context=set_span_in_context(parent) if parent is not None else None,
            kind=kind,
            start_time=T0 + int(start_ms * MS),
            attributes={key.replace("__", "."): value for key, value in attributes.items()},
        )

    def export(self, live_server, api_key: str) -> list:
        spans = list(self.memory.get_finished_spans())
        assert exporter_for(live_server, api_key).export(spans) == SpanExportResult.SUCCESS
        return spans


def hex_id(span) -> str:
    return f"{span.context.span_id:016x}"


def ended(span, end_ms: float):
    span.end(end_time=T0 + int(end_ms * MS))
    return span


def rows_by_span() -> dict[str, LLMRequestLog]:
    return {row.span_id: row for row in LLMRequestLog.objects.all()}


def assert_call(row: LLMRequestLog, model: str, prompt_tokens: int, completion_tokens: int, latency_ms: float):
    assert (row.source, row.model_name) == ("otlp", model)
    assert (row.prompt_tokens, row.completion_tokens) == (prompt_tokens, completion_tokens)
    assert row.total_tokens == prompt_tokens + completion_tokens
    assert row.latency_ms == pytest.approx(latency_ms)
    assert row.cost_estimate == expected_cost(model, prompt_tokens, completion_tokens)


@pytest.mark.django_db(transaction=True)
def test_openinference_llm_spans_are_calls_and_chains_are_context(live_server, api_key, model_prices):
    """As openinference-instrumentation-openai names them: a CHAIN around a ChatCompletion LLM span."""
    recorder = Recorder("phoenix-app")
    chain = recorder.span(
        "RunnableSequence", 0,
        openinference__span__kind="CHAIN", input__value="Capital of France?", output__value="Paris.",
        session__id="conv-9",
    )  # fmt: skip
    llm = recorder.span(
        "ChatCompletion", 10, parent=chain,
        openinference__span__kind="LLM",
        llm__provider="groq", llm__system="openai", llm__model_name="llama-3.3-70b-versatile",
        input__value=json.dumps({"model": "llama-3.3-70b-versatile", "messages": []}),
        input__mime_type="application/json",
        **{
            "llm.input_messages.0.message.role": "system", "llm.input_messages.0.message.content": "Be brief.",
            "llm.input_messages.1.message.role": "user", "llm.input_messages.1.message.content": "Capital of France?",
            "llm.output_messages.0.message.role": "assistant", "llm.output_messages.0.message.content": "Paris.",
        },
        llm__token_count__prompt=1_200, llm__token_count__completion=300, llm__token_count__total=1_500,
        llm__invocation_parameters=json.dumps({"temperature": 0.1}),
        user__id="u-9", session__id="conv-9",
    )  # fmt: skip
    llm.add_event("First Token Stream Event", timestamp=T0 + 130 * MS)
    ended(llm, 760)
    ended(chain, 800)
    spans = by_name(recorder.export(live_server, api_key))

    row = LLMRequestLog.objects.get()
    assert_call(row, "llama-3.3-70b-versatile", 1_200, 300, 750)
    assert row.span_id == hex_id(spans["ChatCompletion"]) and row.parent_span_id == hex_id(spans["RunnableSequence"])
    assert (row.provider, row.user_id, row.session_id) == ("groq", "u-9", "conv-9")
    assert row.prompt_text == "system: Be brief.\n\nuser: Capital of France?"
    assert row.response_text == "Paris."
    assert row.ttft_ms == pytest.approx(120)  # the first-token event, 120 ms after the span's start
    assert row.tags == {"service.name": "phoenix-app"}

    chain_row = TraceSpan.objects.get()
    assert (chain_row.name, chain_row.service, chain_row.span_id) == (
        "RunnableSequence",
        "phoenix-app",
        hex_id(spans["RunnableSequence"]),
    )
    assert chain_row.duration_ms == pytest.approx(800)
    # The chain's input and output are prompt and response text: not kept on a context span.
    assert chain_row.attributes == {"openinference.span.kind": "CHAIN", "session.id": "conv-9"}
    assert chain_row.dropped_attributes == 2


@pytest.mark.django_db(transaction=True)
def test_openllmetry_old_and_current_attribute_names(live_server, api_key, model_prices):
    """Traceloop's SDK: a workflow span around LLM spans, first with the `llm.*` names it used
    until April 2024, then with today's `gen_ai.*` plus `llm.usage.total_tokens` and `traceloop.*`."""
    recorder = Recorder("support-bot")
    workflow = recorder.span(
        "support.workflow", 0,
        traceloop__span__kind="workflow", traceloop__workflow__name="support", traceloop__entity__name="support",
        traceloop__entity__input=json.dumps({"ticket": "My card was charged twice"}),
    )  # fmt: skip
    old = recorder.span(
        "openai.chat", 5, parent=workflow, kind=SpanKind.CLIENT,
        llm__vendor="groq", llm__request__type="chat",
        llm__request__model="llama-3.1-8b-instant", llm__response__model="llama-3.1-8b-instant",
        llm__usage__prompt_tokens=4_000, llm__usage__completion_tokens=1_000, llm__usage__total_tokens=5_000,
        llm__temperature=0.3, llm__request__max_tokens=256,
        traceloop__workflow__name="support", traceloop__entity__name="summarise",
        **{
            "llm.prompts.0.role": "system", "llm.prompts.0.content": "Summarise the ticket.",
            "llm.prompts.1.role": "user", "llm.prompts.1.content": "My card was charged twice",
            "llm.completions.0.role": "assistant", "llm.completions.0.content": "Double charge.",
            "llm.completions.0.finish_reason": "stop",
            "traceloop.association.properties.user_id": "u-7",
            "traceloop.association.properties.session_id": "s-7",
        },
    )  # fmt: skip
    ended(old, 405)
    current = recorder.span(
        "groq.chat", 410, parent=workflow, kind=SpanKind.CLIENT,
        gen_ai__system="groq", llm__request__type="chat",
        gen_ai__request__model="qwen/qwen3-32b", gen_ai__response__model="qwen/qwen3-32b",
        gen_ai__usage__prompt_tokens=700, gen_ai__usage__completion_tokens=70, llm__usage__total_tokens=770,
        traceloop__workflow__name="support",
        **{"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "Reply politely",
           "gen_ai.completion.0.content": "Sorry about that!", "gen_ai.completion.0.finish_reason": "length"},
    )  # fmt: skip
    ended(current, 1_010)
    ended(workflow, 1_100)
    spans = by_name(recorder.export(live_server, api_key))

    rows = rows_by_span()
    assert len(rows) == 2
    first = rows[hex_id(spans["openai.chat"])]
    assert_call(first, "llama-3.1-8b-instant", 4_000, 1_000, 400)
    assert (first.provider, first.user_id, first.session_id) == ("groq", "u-7", "s-7")
    assert first.prompt_text == "system: Summarise the ticket.\n\nuser: My card was charged twice"
    assert (first.response_text, first.finish_reason) == ("Double charge.", "stop")
    assert (first.temperature, first.max_tokens) == (0.3, 256)
    assert first.tags == {
        "service.name": "support-bot",
        "operation": "chat",
        "workflow": "support",
        "entity": "summarise",
    }

    second = rows[hex_id(spans["groq.chat"])]
    assert_call(second, "qwen/qwen3-32b", 700, 70, 600)
    assert (second.prompt_text, second.response_text, second.finish_reason) == (
        "Reply politely",
        "Sorry about that!",
        "length",
    )
    assert second.tags == {"service.name": "support-bot", "operation": "chat", "workflow": "support"}

    context = TraceSpan.objects.get()
    assert (context.name, context.span_id) == ("support.workflow", hex_id(spans["support.workflow"]))
    assert "traceloop.entity.input" not in context.attributes
    assert context.attributes["traceloop.span.kind"] == "workflow"


@pytest.mark.django_db(transaction=True)
def test_vercel_ai_sdk_counts_each_call_once(live_server, api_key, model_prices):
    """The AI SDK's telemetry: ai.generateText (v4 names) and ai.streamText (v5 names), each with
    its doGenerate/doStream child and a tool call; only the children are calls."""
    recorder = Recorder("next-app")
    common = {"ai.model.provider": "groq.chat", "ai.telemetry.metadata.userId": "u-v"}
    generate = recorder.span(
        "ai.generateText", 0, **common,
        operation__name="ai.generateText", ai__operationId="ai.generateText", ai__model__id="qwen/qwen3-32b",
        ai__prompt=json.dumps({"prompt": "Why is the sky blue?"}), ai__response__text="Rayleigh scattering.",
        ai__usage__promptTokens=2_000, ai__usage__completionTokens=500, ai__settings__maxRetries=2,
    )  # fmt: skip
    do_generate = recorder.span(
        "ai.generateText.doGenerate", 5, parent=generate, **common,
        operation__name="ai.generateText.doGenerate", ai__operationId="ai.generateText.doGenerate",
        ai__model__id="qwen/qwen3-32b",
        ai__prompt__messages=json.dumps([{"role": "user", "content": [{"type": "text", "text": "Why?"}]}]),
        gen_ai__system="groq.chat", gen_ai__request__model="qwen/qwen3-32b", gen_ai__response__model="qwen/qwen3-32b",
        gen_ai__usage__prompt_tokens=2_000, gen_ai__usage__completion_tokens=500,
        ai__usage__promptTokens=2_000, ai__usage__completionTokens=500,
        ai__response__text="Rayleigh scattering.", ai__response__finishReason="stop",
        gen_ai__response__finish_reasons=("stop",), gen_ai__request__temperature=0.7,
    )  # fmt: skip
    ended(do_generate, 905)
    ended(generate, 910)

    stream = recorder.span(
        "ai.streamText", 1_000, **common,
        ai__operationId="ai.streamText", ai__model__id="llama-3.1-8b-instant",
        ai__usage__inputTokens=10_000, ai__usage__outputTokens=2_000,
    )  # fmt: skip
    do_stream = recorder.span(
        "ai.streamText.doStream", 1_010, parent=stream, **common,
        ai__operationId="ai.streamText.doStream", ai__model__id="llama-3.1-8b-instant",
        ai__response__model="llama-3.1-8b-instant",
        ai__prompt__messages=json.dumps([{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": [{"type": "text", "text": "Weather?"}]}]),
        ai__usage__inputTokens=10_000, ai__usage__outputTokens=2_000, ai__usage__totalTokens=12_000,
        gen_ai__usage__input_tokens=10_000, gen_ai__usage__output_tokens=2_000,
        ai__stream__msToFirstChunk=85.5, ai__response__text="Sunny.", ai__response__finishReason="tool-calls",
    )  # fmt: skip
    ended(do_stream, 1_510)
    tool = recorder.span(
        "ai.toolCall", 1_520, parent=stream,
        ai__operationId="ai.toolCall", ai__toolCall__name="weather", ai__toolCall__args='{"city": "Paris"}',
    )  # fmt: skip
    ended(tool, 1_600)
    ended(stream, 1_650)
    spans = by_name(recorder.export(live_server, api_key))

    rows = rows_by_span()
    assert set(rows) == {hex_id(spans["ai.generateText.doGenerate"]), hex_id(spans["ai.streamText.doStream"])}
    generated = rows[hex_id(spans["ai.generateText.doGenerate"])]
    assert_call(generated, "qwen/qwen3-32b", 2_000, 500, 900)
    assert (generated.provider, generated.user_id, generated.temperature) == ("groq", "u-v", 0.7)
    assert (generated.prompt_text, generated.response_text) == ("Why?", "Rayleigh scattering.")
    assert generated.finish_reason == "stop"
    assert generated.tags["operation"] == "ai.generateText.doGenerate"

    streamed = rows[hex_id(spans["ai.streamText.doStream"])]
    assert_call(streamed, "llama-3.1-8b-instant", 10_000, 2_000, 500)
    assert (streamed.ttft_ms, streamed.finish_reason) == (85.5, "tool-calls")
    assert streamed.prompt_text == "system: Be brief.\n\nuser: Weather?"
    # Counted once: the tokens of the outer spans are not added again.
    assert sum(row.total_tokens for row in rows.values()) == 2_500 + 12_000

    context = {span.name: span for span in TraceSpan.objects.all()}
    assert set(context) == {"ai.generateText", "ai.streamText", "ai.toolCall"}
    assert "ai.prompt" not in context["ai.generateText"].attributes
    assert "ai.response.text" not in context["ai.generateText"].attributes
    assert "ai.toolCall.args" not in context["ai.toolCall"].attributes
    assert context["ai.toolCall"].attributes["ai.toolCall.name"] == "weather"
    assert context["ai.toolCall"].parent_span_id == hex_id(spans["ai.streamText"])


@pytest.mark.django_db(transaction=True)
def test_plain_llm_attributes_and_a_mixed_trace(live_server, api_key, model_prices, api_client):
    """A hand-written instrumentation (`llm.model`, `llm.tokens.*`) inside a request that also has
    an HTTP handler and database queries: the whole trace comes back from /api/traces/<id>/."""
    recorder = Recorder("shop")
    handler = recorder.span(
        "POST /chat", 0, kind=SpanKind.SERVER,
        http__request__method="POST", http__route="/chat", http__response__status_code=200, url__path="/chat",
    )  # fmt: skip
    query = recorder.span(
        "SELECT users", 2, parent=handler, kind=SpanKind.CLIENT,
        db__system="postgresql", db__query__text="SELECT id FROM users WHERE id = $1",
    )  # fmt: skip
    ended(query, 12)
    failed_query = recorder.span("INSERT audit", 13, parent=handler, kind=SpanKind.CLIENT, db__system="postgresql")
    failed_query.set_status(Status(StatusCode.ERROR, "duplicate key value"))
    ended(failed_query, 15)
    call = recorder.span(
        "llm call", 20, parent=handler, kind=SpanKind.CLIENT,
        llm__model="openai/gpt-oss-20b", llm__provider="groq", llm__tokens__input=800, llm__tokens__output=200,
        llm__prompt="Hi", llm__response="Hello!", user__id="u-1",
    )  # fmt: skip
    ended(call, 620)
    ended(handler, 650)
    spans = by_name(recorder.export(live_server, api_key))
    trace_id = f"{spans['POST /chat'].context.trace_id:032x}"

    row = LLMRequestLog.objects.get()
    assert_call(row, "openai/gpt-oss-20b", 800, 200, 600)
    assert (row.provider, row.prompt_text, row.response_text, row.user_id) == ("groq", "Hi", "Hello!", "u-1")
    assert row.parent_span_id == hex_id(spans["POST /chat"])

    context = {span.name: span for span in TraceSpan.objects.all()}
    assert set(context) == {"POST /chat", "SELECT users", "INSERT audit"}
    handler_row = context["POST /chat"]
    assert (handler_row.kind, handler_row.status, handler_row.parent_span_id) == ("server", "unset", "")
    assert handler_row.start == START and handler_row.end == START + timedelta(milliseconds=650)
    assert handler_row.attributes == {
        "http.request.method": "POST",
        "http.response.status_code": 200,
        "http.route": "/chat",
        "url.path": "/chat",
    }
    assert (context["SELECT users"].kind, context["SELECT users"].parent_span_id) == (
        "client",
        hex_id(spans["POST /chat"]),
    )
    assert (context["INSERT audit"].status, context["INSERT audit"].status_message) == ("error", "duplicate key value")

    body = api_client.get(f"/api/traces/{trace_id}/").json()
    assert [call["model_name"] for call in body["calls"]] == ["openai/gpt-oss-20b"]
    assert [span["name"] for span in body["spans"]] == ["POST /chat", "SELECT users", "INSERT audit"]
    first = body["spans"][0]
    assert (first["duration_ms"], first["kind"], first["service"]) == (650.0, "server", "shop")
    assert first["start"] == START.isoformat()


# Hand-built OTLP/JSON through Django's test client: partial_success and the context span limits.


@pytest.fixture
def bearer(api_key) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {api_key}"}


def http_span(span_id: str, **overrides) -> dict:
    return otlp_json_span(
        **{"spanId": span_id, "name": "GET /health", "kind": 2, "attributes": [], "events": []} | overrides
    )


@pytest.mark.django_db
def test_partial_success_counts_each_rejected_span_with_its_reason(client, bearer):
    good_call = otlp_json_span()
    good_context = http_span("0000000000000001")
    backwards = http_span("0000000000000002", endTimeUnixNano=str(T0 - 1))
    bad_trace = http_span("0000000000000003", traceId="00" * 16)
    nul_name = http_span("0000000000000004", name="GET /\u0000")
    no_start = http_span("0000000000000005", startTimeUnixNano="0")
    unparsable = http_span("0000000000000006", startTimeUnixNano="soon")
    document = otlp_json(good_call, good_context, backwards, bad_trace, nul_name, no_start, unparsable)
    response = post_json(client, document, **bearer)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 5
    message = partial["errorMessage"]
    assert message.startswith("5 span(s) rejected: span 0000000000000006: ")
    for reason in (
        "ends before it starts",
        "trace_id must be 16 bytes",
        "name: Null characters",
        "start_time_unix_nano",
    ):
        assert reason in message
    # Stored: the call and the one good context span; nothing else, and nothing silently.
    assert LLMRequestLog.objects.count() == 1
    assert list(TraceSpan.objects.values_list("span_id", flat=True)) == ["0000000000000001"]
    # Sent again, nothing is stored twice.
    assert post_json(client, otlp_json(good_call, good_context), **bearer).json() == {}
    assert (LLMRequestLog.objects.count(), TraceSpan.objects.count()) == (1, 1)


@pytest.mark.django_db
def test_context_span_attributes_are_bounded(client, bearer):
    attributes = [{"key": f"app.attribute.{index:02d}", "value": {"intValue": str(index)}} for index in range(40)]
    attributes += [
        {"key": "a.long.value", "value": {"stringValue": "x" * 1_000}},
        {"key": "a.list", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "2"}]}}},
        {"key": "a.nan", "value": {"doubleValue": "NaN"}},
        {"key": "a.nul", "value": {"stringValue": "bad\u0000value"}},
        {"key": "k" * 200, "value": {"stringValue": "long key"}},
        {"key": "input.value", "value": {"stringValue": "a prompt"}},
    ]
    span = http_span("0000000000000009", attributes=attributes, droppedAttributesCount=3)
    assert post_json(client, otlp_json(span), **bearer).json() == {}
    stored = TraceSpan.objects.get()
    kept = stored.attributes
    assert len(kept) == 32
    # In key order: the "a." keys first, less the ones that cannot be kept.
    assert kept["a.long.value"] == "x" * 256
    assert kept["a.list"] == '["a", 2]'
    assert kept["a.nan"] == "nan"
    assert "a.nul" not in kept and "input.value" not in kept and "k" * 200 not in kept
    assert list(kept)[3:] == [f"app.attribute.{index:02d}" for index in range(29)]
    # 46 sent, 32 kept, and the 3 the sender had dropped already.
    assert stored.dropped_attributes == 46 - 32 + 3


def test_every_dialect_is_reachable_and_gen_ai_is_the_fallback():
    assert otlp_dialects.dialect_of({}) is otlp_dialects.GEN_AI
    assert otlp_dialects.dialect_of({"ai.model.id": "m", "gen_ai.request.model": "m"}) is otlp_dialects.VERCEL_AI
    assert otlp_dialects.dialect_of({"openinference.span.kind": "LLM"}) is otlp_dialects.OPENINFERENCE
    assert otlp_dialects.dialect_of({"llm.usage.total_tokens": 1}) is otlp_dialects.OPENLLMETRY
    assert otlp_dialects.dialect_of({"llm.model": "m"}) is otlp_dialects.PLAIN_LLM
    assert otlp_dialects.dialect_of({"gen_ai.request.model": "m"}) is otlp_dialects.GEN_AI
    assert {dialect.name for dialect in otlp_dialects.DIALECTS} == {
        "vercel_ai",
        "openinference",
        "openllmetry",
        "plain_llm",
        "gen_ai",
    }
