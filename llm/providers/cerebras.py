"""Cerebras through its official SDK (`cerebras-cloud-sdk`), which posts to
{CEREBRAS_BASE_URL}/v1/chat/completions and reports timings in `time_info`."""

from __future__ import annotations

import httpx
from cerebras.cloud import sdk as cerebras_sdk

from llm.providers.chat_completions import SDK, ChatCompletionsProvider
from llm.providers.groq import ASYNC_LIMITS

CEREBRAS_SDK = SDK(
    module=cerebras_sdk,
    base_error=cerebras_sdk.CerebrasError,
    transport_errors=(httpx.HTTPError,),
    timeout_errors=(httpx.TimeoutException,),
)


class CerebrasProvider(ChatCompletionsProvider):
    name = "cerebras"
    vendor = "Cerebras"
    settings_prefix = "CEREBRAS"
    sdk = CEREBRAS_SDK

    @classmethod
    def make_client(cls, api_key: str, base_url: str, timeout: float, max_retries: int) -> cerebras_sdk.Cerebras:
        # No warm-up request: the SDK would otherwise GET /v1/tcp_warming when the client is built.
        return cerebras_sdk.Cerebras(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries, warm_tcp_connection=False
        )

    @classmethod
    def make_async_client(
        cls, api_key: str, base_url: str, timeout: float, max_retries: int
    ) -> cerebras_sdk.AsyncCerebras:
        return cerebras_sdk.AsyncCerebras(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            warm_tcp_connection=False,
            http_client=cerebras_sdk.DefaultAioHttpClient(limits=ASYNC_LIMITS, timeout=timeout),
        )
