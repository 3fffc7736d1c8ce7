"""Where each OpenTelemetry instrumentation puts the figures of an LLM call: one mapping per
dialect (data, not branches), read by `llm/otlp.py`.

A span speaks the first dialect in DIALECTS one of whose `markers` is among its attributes; the
OpenTelemetry GenAI conventions (`gen_ai.*`, both generations) are the fallback. Each figure is
read from the first of its attribute keys that is present. The sources:

- GenAI semantic conventions: https://opentelemetry.io/docs/specs/semconv/gen-ai/
- OpenInference (Arize Phoenix): `openinference.semconv.trace.SpanAttributes`
- OpenLLMetry / Traceloop: `opentelemetry.semconv_ai.SpanAttributes` (before April 2024 it named
  everything `llm.*`; since then it uses `gen_ai.*` plus `llm.usage.total_tokens`, `llm.request.type`
  and `traceloop.*`)
- Vercel AI SDK: `ai.*` (v4 `ai.usage.promptTokens`, v5 `ai.usage.inputTokens`); each call is an
  `ai.generateText` (or `streamText`, ...) span with a `.doGenerate`/`.doStream` child per model
  call: only the child is a call, so a call is counted once
- hand-written instrumentations: `llm.model`, `llm.tokens.input`/`output`
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from llm.ingest_limits import parse_json


def text_value(value: Any) -> str:
    """A scalar attribute as text; "" for a missing, structured or binary value."""
    if value is None or isinstance(value, dict | list | bytes):
        return ""
    return str(value)


def content_text(value: Any) -> str:
    """A message's content as text: a string as it is; a list of parts, the text of its text parts;
    anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(part, dict) for part in value):
        texts = [_part_text(part) for part in value]
        if any(texts):
            return "\n".join(text for text in texts if text)
    return json.dumps(value, ensure_ascii=False, default=str)


def _part_text(part: dict) -> str:
    # GenAI conventions: {"type": "text", "content": ...}; Vercel and OpenAI: {"type": "text", "text": ...}.
    if part.get("type", "text") != "text":
        return ""
    return text_value(part.get("content", part.get("text")))


def join_messages(messages: list[tuple[str, str]]) -> str:
    """One message: its text; several: "role: text" paragraphs (a message without role: its text)."""
    messages = [(role, content) for role, content in messages if content]
    if len(messages) == 1:
        return messages[0][1]
    return "\n\n".join(f"{role}: {content}" if role else content for role, content in messages)


def structured_messages(value: Any) -> str:
    """Text of messages given as JSON (or already decoded): a list of {"role", "parts" or "content"},
    or an object with `system` and `messages` or `prompt` (Vercel's `ai.prompt`)."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = parse_json(value)
        except ValueError:  # not JSON (or too deep, or NaN): the text as it is
            return value
    if isinstance(value, dict) and {"messages", "prompt", "system"} & value.keys():
        value = _prompt_object_messages(value)
    if not isinstance(value, list):
        return content_text(value)
    messages = []
    for message in value:
        if not isinstance(message, dict):
            messages.append(("", content_text(message)))
            continue
        parts = message.get("parts")
        content = content_text(parts if isinstance(parts, list) else message.get("content"))
        messages.append((text_value(message.get("role")), content))
    return join_messages(messages)


def _prompt_object_messages(value: dict) -> list:
    messages = [{"role": "system", "content": value["system"]}] if value.get("system") else []
    if isinstance(value.get("messages"), list):
        messages.extend(value["messages"])
    if value.get("prompt"):
        messages.append({"role": "user", "content": value["prompt"]})
    return messages


@dataclass(frozen=True)
class Plain:
    """Text in one attribute."""

    key: str

    def read(self, attributes: dict[str, Any]) -> str:
        return text_value(attributes.get(self.key))


@dataclass(frozen=True)
class Messages:
    """Messages as one JSON attribute (`gen_ai.input.messages`, `ai.prompt.messages`)."""

    key: str

    def read(self, attributes: dict[str, Any]) -> str:
        return structured_messages(attributes.get(self.key))


@dataclass(frozen=True)
class Indexed:
    """Messages flattened into `PREFIX.N.CONTENT` and `PREFIX.N.ROLE` attributes."""

    prefix: str
    content: str = "content"
    role: str = "role"
    pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.compile(rf"^{re.escape(self.prefix)}\.(\d+)\.{re.escape(self.content)}$")
        object.__setattr__(self, "pattern", pattern)

    def read(self, attributes: dict[str, Any]) -> str:
        messages = []
        for key, value in attributes.items():
            if key.startswith(self.prefix) and (match := self.pattern.match(key)):
                index = int(match[1])
                role = text_value(attributes.get(f"{self.prefix}.{index}.{self.role}"))
                messages.append((index, role, content_text(value)))
        messages.sort()
        return join_messages([(role, content) for _, role, content in messages])


TextSource = Plain | Messages | Indexed
USER_KEYS = ("user.id", "enduser.id")
SESSION_KEYS = ("session.id",)


@dataclass(frozen=True)
class Dialect:
    """Where one instrumentation puts each figure: attribute keys, the first present wins."""

    name: str
    # A span with any of these attributes speaks this dialect (none: the fallback).
    markers: tuple[str, ...]
    model: tuple[str, ...]
    provider: tuple[str, ...] = ()
    prompt_tokens: tuple[str, ...] = ()
    completion_tokens: tuple[str, ...] = ()
    total_tokens: tuple[str, ...] = ()
    prompt: tuple[TextSource, ...] = ()
    response: tuple[TextSource, ...] = ()
    finish_reason: tuple[str, ...] = ()
    user: tuple[str, ...] = USER_KEYS
    session: tuple[str, ...] = SESSION_KEYS
    temperature: tuple[str, ...] = ()
    max_tokens: tuple[str, ...] = ()
    # Time to first token: an attribute in ms, or the time of the first event with one of these names.
    ttft_ms: tuple[str, ...] = ()
    first_token_events: tuple[str, ...] = ()
    # What the span is (the tag `operation`), and which kinds are calls: when `kind` is present, a
    # span is a call if its value is in `call_kinds` (when given) and not in `non_call_kinds`.
    kind: str = ""
    call_kinds: frozenset[str] | None = None
    non_call_kinds: frozenset[str] = frozenset()
    operation: tuple[str, ...] = ()
    # Providers named "openai.chat" (Vercel): keep the part before the first dot.
    provider_before_dot: bool = False
    # Extra tags: (tag name, attribute key).
    tags: tuple[tuple[str, str], ...] = ()

    def is_call(self, attributes: dict[str, Any]) -> bool:
        kind = text_value(attributes.get(self.kind)) if self.kind else ""
        if not kind:
            return True
        return (self.call_kinds is None or kind in self.call_kinds) and kind not in self.non_call_kinds


# These GenAI operations name a model, but they wrap the model calls they make (which have spans
# of their own): storing them would count tokens twice.
GENAI_NON_CALL_OPERATIONS = frozenset({"invoke_agent", "create_agent", "execute_tool", "invoke_workflow"})

GEN_AI = Dialect(
    name="gen_ai",
    markers=(),
    model=("gen_ai.response.model", "gen_ai.request.model"),
    # gen_ai.system is the older name of gen_ai.provider.name.
    provider=("gen_ai.provider.name", "gen_ai.system"),
    prompt_tokens=("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    completion_tokens=("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    total_tokens=("gen_ai.usage.total_tokens", "llm.usage.total_tokens"),
    prompt=(Plain("gen_ai.prompt"), Indexed("gen_ai.prompt"), Messages("gen_ai.input.messages")),
    response=(Plain("gen_ai.completion"), Indexed("gen_ai.completion"), Messages("gen_ai.output.messages")),
    finish_reason=("gen_ai.response.finish_reasons", "gen_ai.completion.0.finish_reason"),
    session=("session.id", "gen_ai.conversation.id"),
    temperature=("gen_ai.request.temperature",),
    max_tokens=("gen_ai.request.max_tokens",),
    kind="gen_ai.operation.name",
    non_call_kinds=GENAI_NON_CALL_OPERATIONS,
    operation=("gen_ai.operation.name",),
)

VERCEL_AI = Dialect(
    name="vercel_ai",
    markers=("ai.operationId", "ai.model.id"),
    model=("ai.response.model", "gen_ai.response.model", "ai.model.id", "gen_ai.request.model"),
    provider=("ai.model.provider", "gen_ai.system"),
    prompt_tokens=(
        "ai.usage.promptTokens",
        "ai.usage.inputTokens",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens",
    ),
    completion_tokens=(
        "ai.usage.completionTokens",
        "ai.usage.outputTokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
    ),
    total_tokens=("ai.usage.totalTokens",),
    prompt=(Messages("ai.prompt.messages"), Messages("ai.prompt")),
    response=(Plain("ai.response.text"), Plain("ai.response.object")),
    finish_reason=("ai.response.finishReason", "gen_ai.response.finish_reasons"),
    user=("ai.telemetry.metadata.userId", *USER_KEYS),
    session=("ai.telemetry.metadata.sessionId", *SESSION_KEYS),
    temperature=("gen_ai.request.temperature", "ai.settings.temperature"),
    max_tokens=("gen_ai.request.max_tokens", "ai.settings.maxOutputTokens", "ai.settings.maxTokens"),
    ttft_ms=("ai.stream.msToFirstChunk",),
    first_token_events=("ai.stream.firstChunk",),
    kind="ai.operationId",
    call_kinds=frozenset(
        {
            "ai.generateText.doGenerate",
            "ai.streamText.doStream",
            "ai.generateObject.doGenerate",
            "ai.streamObject.doStream",
        }
    ),
    operation=("ai.operationId",),
    provider_before_dot=True,
)

OPENINFERENCE = Dialect(
    name="openinference",
    markers=("openinference.span.kind", "llm.model_name"),
    model=("llm.model_name", "llm.response.model_name", "llm.request.model_name"),
    provider=("llm.provider", "llm.system"),
    prompt_tokens=("llm.token_count.prompt",),
    completion_tokens=("llm.token_count.completion",),
    total_tokens=("llm.token_count.total",),
    prompt=(Indexed("llm.input_messages", "message.content", "message.role"), Plain("input.value")),
    response=(Indexed("llm.output_messages", "message.content", "message.role"), Plain("output.value")),
    finish_reason=("llm.finish_reason",),
    first_token_events=("First Token Stream Event",),
    kind="openinference.span.kind",
    call_kinds=frozenset({"LLM"}),
)

OPENLLMETRY = Dialect(
    name="openllmetry",
    markers=(
        "llm.request.model",
        "llm.response.model",
        "llm.usage.prompt_tokens",
        "llm.usage.total_tokens",
        "llm.request.type",
        "traceloop.span.kind",
        "traceloop.workflow.name",
        "traceloop.entity.name",
    ),
    model=("llm.response.model", "llm.request.model", "gen_ai.response.model", "gen_ai.request.model"),
    provider=("llm.vendor", "gen_ai.system", "gen_ai.provider.name"),
    prompt_tokens=("llm.usage.prompt_tokens", "gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens"),
    completion_tokens=("llm.usage.completion_tokens", "gen_ai.usage.completion_tokens", "gen_ai.usage.output_tokens"),
    total_tokens=("llm.usage.total_tokens", "gen_ai.usage.total_tokens"),
    prompt=(Indexed("llm.prompts"), Indexed("gen_ai.prompt"), Messages("gen_ai.input.messages")),
    response=(Indexed("llm.completions"), Indexed("gen_ai.completion"), Messages("gen_ai.output.messages")),
    finish_reason=(
        "llm.completions.0.finish_reason",
        "gen_ai.completion.0.finish_reason",
        "llm.response.finish_reason",
        "gen_ai.response.finish_reasons",
    ),
    user=("traceloop.association.properties.user_id", "llm.user", *USER_KEYS),
    session=("traceloop.association.properties.session_id", *SESSION_KEYS),
    temperature=("llm.temperature", "gen_ai.request.temperature"),
    max_tokens=("llm.request.max_tokens", "gen_ai.request.max_tokens"),
    kind="traceloop.span.kind",
    non_call_kinds=frozenset({"workflow", "task", "agent", "tool"}),
    operation=("llm.request.type", "gen_ai.operation.name"),
    tags=(("workflow", "traceloop.workflow.name"), ("entity", "traceloop.entity.name")),
)

PLAIN_LLM = Dialect(
    name="plain_llm",
    markers=("llm.model", "llm.tokens.input", "llm.tokens.output"),
    model=("llm.model",),
    provider=("llm.provider", "llm.vendor", "llm.system"),
    prompt_tokens=("llm.tokens.input", "llm.tokens.prompt"),
    completion_tokens=("llm.tokens.output", "llm.tokens.completion"),
    total_tokens=("llm.tokens.total",),
    prompt=(Plain("llm.prompt"), Plain("llm.input")),
    response=(Plain("llm.response"), Plain("llm.completion"), Plain("llm.output")),
    finish_reason=("llm.finish_reason",),
    user=(*USER_KEYS, "llm.user"),
    temperature=("llm.temperature",),
    max_tokens=("llm.max_tokens",),
)

# Checked in this order: Vercel's call spans carry gen_ai.* too, and current OpenLLMetry's carry
# gen_ai.* next to its own names; the GenAI conventions are the fallback.
DIALECTS = (VERCEL_AI, OPENINFERENCE, OPENLLMETRY, PLAIN_LLM, GEN_AI)


# Each marker attribute and the position of its dialect in DIALECTS: one set intersection per span
# finds the dialect (most spans carry no marker and are GenAI).
MARKERS = {marker: position for position, dialect in enumerate(DIALECTS) for marker in dialect.markers}


def dialect_of(attributes: dict[str, Any]) -> Dialect:
    found = attributes.keys() & MARKERS.keys()
    if not found:
        return GEN_AI
    return DIALECTS[min(MARKERS[marker] for marker in found)]


def first_present(attributes: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """The value of the first of `keys` present in `attributes`, or None."""
    for key in keys:
        if (value := attributes.get(key)) is not None:
            return value
    return None


def first_text(attributes: dict[str, Any], sources: tuple[TextSource, ...]) -> str:
    for source in sources:
        if text := source.read(attributes):
            return text
    return ""
