"""The interface between the proxy and an LLM vendor.

A provider turns a `ChatRequest` into a `ChatResult` (or a stream of text ending in one), and
turns every failure into a `ProviderError` with one of SPEC's error types. It neither measures
nor logs: `llm.proxy` does both, the same way for every provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from django.conf import settings

from llm.models import ModelPrice
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


def get_provider(name: str = "groq") -> Provider:
    """The configured provider (Groq, the only one so far)."""
    if name == "groq":
        from llm.providers.groq import GroqProvider

        return GroqProvider.from_settings()
    raise ValueError(f"Unknown provider {name!r}")


def callable_models() -> list[str]:
    """The models the playground offers: those the configured provider prices (every price is
    Groq's until ModelPrice has a provider column), GROQ_DEFAULT_MODEL first."""
    default = settings.GROQ_DEFAULT_MODEL
    priced = ModelPrice.objects.exclude(model_name=default).order_by("model_name")
    return [default, *priced.values_list("model_name", flat=True)]
