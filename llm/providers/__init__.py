"""The interface between the proxy and an LLM vendor.

A provider turns a `ChatRequest` into a `ChatResult` (or a stream of text ending in one), and
turns every failure into a `ProviderError` with one of SPEC's error types. It neither measures
nor logs: `llm.proxy` does both, the same way for every provider.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from llm.models import PRICE_WILDCARD, ModelPrice, cached_price_table
from llm.providers import errors


@dataclass(frozen=True)
class ChatRequest:
    prompt: str
    model: str
    system_prompt: str = ""
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass
class ChatResult:
    text: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    # Prompt tokens served from the provider's cache (part of prompt_tokens).
    cached_tokens: int = 0
    # False when the provider sent no usage at all: the proxy then estimates the counts.
    usage_reported: bool = False
    # The provider's own timings, where it reports them (Groq, Cerebras).
    queue_time_ms: float | None = None
    prompt_time_ms: float | None = None
    completion_time_ms: float | None = None


@dataclass
class ProviderError(Exception):
    error_type: str
    # Ours, for people: what happened and what to do (llm.providers.errors.explain).
    message: str
    status_code: int | None = None
    # The vendor's own words, from its error body; None when it said nothing (timeout, no key).
    upstream_message: str | None = None
    # How long the vendor asked us to wait (Retry-After), when it said so.
    retry_after_seconds: float | None = None
    vendor: str = ""
    # Whatever of the answer arrived before the failure (streaming).
    partial: ChatResult = field(default_factory=ChatResult)

    def __str__(self) -> str:
        return f"{self.error_type}: {self.stored_message}"

    @property
    def stored_message(self) -> str:
        """What the row's error_message keeps: our message, then the vendor's."""
        return errors.stored_message(self.message, self.vendor or "The provider", self.upstream_message)


class ChatStream(Protocol):
    """Iterating yields text chunks; `result` is complete once iteration has ended."""

    result: ChatResult

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...


class AsyncChatStream(Protocol):
    """ChatStream for the event loop: `async for` yields text chunks."""

    result: ChatResult

    def __aiter__(self) -> AsyncIterator[str]: ...

    async def close(self) -> None: ...


class Provider(Protocol):
    """Each call twice: blocking a thread (WSGI), or awaited on the ASGI worker's event loop."""

    name: str

    def complete(self, request: ChatRequest) -> ChatResult: ...

    def stream(self, request: ChatRequest) -> ChatStream:
        """Opens the stream; raises ProviderError when the vendor refuses it outright."""
        ...

    async def acomplete(self, request: ChatRequest) -> ChatResult: ...

    async def astream(self, request: ChatRequest) -> AsyncChatStream: ...


# Each provider's module and class, imported when first asked for.
PROVIDER_CLASSES = {
    "groq": ("llm.providers.groq", "GroqProvider"),
    "cerebras": ("llm.providers.cerebras", "CerebrasProvider"),
    "openai": ("llm.providers.openai_compatible", "OpenAICompatibleProvider"),
}


# The providers made so far, by name: one holds nothing but its settings, and making one for every
# prompt (its module looked up, four settings read, its error texts' names joined) was ~3 % of a
# proxied prompt's checks. Forgotten when a setting changes (tests), as each is made from them.
_providers: dict[str, Provider] = {}


def get_provider(name: str = "groq") -> Provider:
    """The provider of that name (ModelPrice.Provider), configured from the settings."""
    provider = _providers.get(name)
    if provider is not None:
        return provider
    if name not in PROVIDER_CLASSES:
        raise ValueError(f"Unknown provider {name!r}")
    module_name, class_name = PROVIDER_CLASSES[name]
    provider = _providers[name] = getattr(importlib.import_module(module_name), class_name).from_settings()
    return provider


@receiver(setting_changed)
def forget_providers(**kwargs) -> None:
    _providers.clear()


class UnknownModel(Exception):
    """No provider is known to serve the model (or several are): the caller must say which."""


def route(model: str, provider: str | None = None) -> str:
    """The provider a prompt for `model` goes to: the one named, else the one the price table
    gives the model (exact name, else the longest pattern), else Groq for GROQ_DEFAULT_MODEL."""
    if provider:
        return provider
    serving = cached_price_table().providers(model)
    if len(serving) == 1:
        return serving[0]
    if serving:
        raise UnknownModel(f"Several providers serve {model!r} ({', '.join(serving)}): name one in `provider`.")
    if model == settings.GROQ_DEFAULT_MODEL:
        return ModelPrice.Provider.GROQ
    offered = "; ".join(f"{name}: {', '.join(models)}" for name, models in callable_models().items())
    raise UnknownModel(
        f"No provider is known to serve {model!r}. Models that can be called: {offered}. "
        "To call another model, name its `provider` (or add its price in admin)."
    )


def callable_models() -> dict[str, list[str]]:
    """The models the playground offers, per provider (Groq first, GROQ_DEFAULT_MODEL first
    among Groq's): the price table's exact names (a pattern names no model one can call)."""
    default = settings.GROQ_DEFAULT_MODEL
    grouped: dict[str, list[str]] = {name: [] for name in PROVIDER_CLASSES}
    grouped["groq"].append(default)
    names = (
        ModelPrice.objects.exclude(model_name__contains=PRICE_WILDCARD)
        .order_by("provider", "model_name")
        .values_list("provider", "model_name")
        .distinct()
    )
    for provider, model_name in names:
        if model_name not in grouped.setdefault(provider, []):
            grouped[provider].append(model_name)
    return {provider: models for provider, models in grouped.items() if models}


@dataclass(frozen=True)
class OfferedProvider:
    name: str
    vendor: str
    key_setting: str
    has_key: bool
    models: list[str]


def playground_providers() -> list[OfferedProvider]:
    """The playground's model picker, one group per provider with models (Groq always: its
    default model), each saying whether its key is configured."""
    offered = []
    for name, models in callable_models().items():
        if name not in PROVIDER_CLASSES:
            continue
        upstream = get_provider(name).upstream
        has_key = bool(getattr(settings, upstream.key_setting))
        offered.append(OfferedProvider(name, upstream.vendor, upstream.key_setting, has_key, models))
    return offered
