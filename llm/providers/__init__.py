"""The interface between the proxy and an LLM vendor.

A provider turns a `ChatRequest` into a `ChatResult` (or a stream of text ending in one), and
turns every failure into a `ProviderError` with one of SPEC's error types. It neither measures
nor logs: `llm.proxy` does both, the same way for every provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol


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
    message: str
    status_code: int | None = None
    # Whatever of the answer arrived before the failure (streaming).
    partial: ChatResult = field(default_factory=ChatResult)

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


class ChatStream(Protocol):
    """Iterating yields text chunks; `result` is complete once iteration has ended."""

    result: ChatResult

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...


class Provider(Protocol):
    name: str

    def complete(self, request: ChatRequest) -> ChatResult: ...

    def stream(self, request: ChatRequest) -> ChatStream:
        """Opens the stream; raises ProviderError when the vendor refuses it outright."""
        ...


def get_provider(name: str = "groq") -> Provider:
    if name == "groq":
        from llm.providers.groq import GroqProvider

        return GroqProvider.from_settings()
    raise ValueError(f"Unknown provider {name!r}")
