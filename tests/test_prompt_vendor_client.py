"""The async vendor client (llm/providers/groq.py VendorHttpClient) keeps no cookies: a vendor's
Set-Cookie is not stored (parsing it cost every call) nor sent back. The SDK's default client,
against the same fake server, does send it back: the control that the cookie was offered."""

from __future__ import annotations

import asyncio

import groq

from llm.providers import ChatRequest
from llm.providers.chat_completions import close_async_clients
from llm.providers.groq import GroqProvider, VendorHttpClient
from tests.fake_groq import Behaviour

SET_COOKIE = {"Set-Cookie": "vendor_session=abc123; Path=/"}
REQUEST = ChatRequest(prompt="hi", model="llama-3.1-8b-instant")


def test_the_vendor_client_neither_keeps_nor_sends_cookies(fake_groq, settings):
    fake_groq.will(
        Behaviour(headers=SET_COOKIE), Behaviour(), Behaviour(chunks=["a", "b"]), Behaviour(headers=SET_COOKIE)
    )

    async def calls() -> tuple[list[str], str]:
        try:
            provider = GroqProvider.from_settings()
            first = await provider.acomplete(REQUEST)
            second = await provider.acomplete(REQUEST)
            stream = await provider.astream(REQUEST)
            texts = [text async for text in stream]
            assert (first.text, second.text) == (Behaviour().text, Behaviour().text)
            # The control: the SDK's default client, same server, same answer.
            async with groq.AsyncGroq(
                api_key="k", base_url=settings.GROQ_BASE_URL, max_retries=0, http_client=groq.DefaultAioHttpClient()
            ) as sdk_client:
                for _ in range(2):
                    await sdk_client.chat.completions.create(
                        model=REQUEST.model, messages=[{"role": "user", "content": "x"}]
                    )
            return texts, stream.result.text
        finally:
            await close_async_clients()

    texts, streamed = asyncio.run(calls())
    assert texts == ["a", "b"] and streamed == "ab"
    sent = [request["_cookie"] for request in fake_groq.requests]
    # Ours: no cookie on any call after the Set-Cookie; the SDK's default client sends its own.
    assert sent[:3] == [None, None, None]
    assert sent[3:] == [None, "vendor_session=abc123"]


def test_the_vendor_client_is_the_sdks_aiohttp_client():
    client = VendorHttpClient(timeout=3.0)
    assert isinstance(client, groq.DefaultAioHttpClient) and client.follow_redirects
    client.cookies = {"a": "b"}
    assert len(client.cookies) == 0
