"""Any OpenAI-compatible server (OpenAI itself, vLLM, Ollama, Together, …) through the official
`openai` SDK, which posts to {OPENAI_BASE_URL}/chat/completions (the base URL ends in /v1)."""

from __future__ import annotations

import httpx2
import openai

from llm.providers.chat_completions import SDK, ChatCompletionsProvider

OPENAI_SDK = SDK(
    module=openai,
    base_error=openai.OpenAIError,
    # The openai SDK runs on httpx2, not httpx.
    transport_errors=(httpx2.HTTPError,),
    timeout_errors=(httpx2.TimeoutException,),
)
ASYNC_LIMITS = httpx2.Limits(max_connections=100_000, max_keepalive_connections=1_000)


class OpenAICompatibleProvider(ChatCompletionsProvider):
    name = "openai"
    vendor = "OpenAI"
    settings_prefix = "OPENAI"
    sdk = OPENAI_SDK

    @classmethod
    def make_client(cls, api_key: str, base_url: str, timeout: float, max_retries: int) -> openai.OpenAI:
        return openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)

    @classmethod
    def make_async_client(cls, api_key: str, base_url: str, timeout: float, max_retries: int) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            http_client=openai.DefaultAioHttpClient(limits=ASYNC_LIMITS, timeout=timeout),
        )

    def stream_options(self) -> dict:
        # OpenAI reports a stream's usage only when asked; a server that never does gets estimated counts.
        return {"stream_options": {"include_usage": True}}
