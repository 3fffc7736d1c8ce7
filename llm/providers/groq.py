"""Groq through its official SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import lru_cache

import aiohttp
import groq
import httpx

# Imported with this module (the URLconf, at a worker's start), not by the first answer parsed.
from groq._compat import model_copy
from groq._models import FinalRequestOptions
from groq.types.chat import ChatCompletion, ChatCompletionChunk
from httpx_aiohttp.transport import AiohttpTransport

from llm import request_ids
from llm.providers import ChatRequest
from llm.providers.chat_completions import SDK, ChatCompletionsProvider, options

GROQ_SDK = SDK(
    module=groq,
    base_error=groq.GroqError,
    transport_errors=(httpx.HTTPError,),
    timeout_errors=(httpx.TimeoutException,),
)

# The SDK's aiohttp transport (groq[aiohttp]): httpx's own async pool slows down with the square of
# the calls in flight (500 at once took 17 s instead of 2). Its default of 100 connections would
# queue the rest: calls in flight are bounded by the server instead.
ASYNC_LIMITS = httpx.Limits(max_connections=100_000, max_keepalive_connections=1_000)

# What `client.chat.completions.create` posts, without its per-call pass over the parameters'
# type hints (`async_maybe_transform`, ~5 % of a proxied prompt's CPU): it changes nothing in the
# plain strings and numbers of `options` (no aliased or formatted field among them). Retries,
# timeouts, errors and the parsing of the answer are the SDK's, as with `create`.
CHAT_COMPLETIONS_PATH = "/openai/v1/chat/completions"


class NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: a vendor's API is called with its key, never a cookie, and
    storing each answer's Set-Cookie (httpx parses every response for it) cost ~41 µs a call."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class CookielessTransport(AiohttpTransport):
    """The SDK's aiohttp transport, its session without a cookie jar either (aiohttp's own reads
    every answer's headers and filters its cookies for every request)."""

    def get_client(self) -> aiohttp.ClientSession:
        limit = {"limit": self.limits.max_connections} if self.limits.max_connections is not None else {}
        connector = aiohttp.TCPConnector(
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
            local_addr=(self.local_address, 0) if self.local_address else None,
            **limit,
        )
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


# Merged header sets a client keeps (build_request): one per retry count for the SDK's own calls.
MERGED_HEADERS_KEPT = 32


class VendorHttpClient(groq.DefaultAioHttpClient):
    """groq.DefaultAioHttpClient (its defaults: timeout, limits, redirects) without cookies."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._cookies = NoCookies()
        self._merged_headers: dict[tuple, httpx.Headers] = {}

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: httpx.types.CookieTypes) -> None:
        pass  # nothing to keep

    def build_request(self, method, url, *, headers=None, timeout=httpx.USE_CLIENT_DEFAULT, **rest) -> httpx.Request:
        """httpx's build_request, for what the SDK asks of every call (an absolute URL, its own
        Headers, a body, nothing else) without merging the client's headers into the call's anew:
        that merge is made once per distinct set of call headers (the SDK's differ by retry count
        only) and the Request copies it. ~35 µs of a call's ~75 µs of building (in process)."""
        content = rest.pop("content", None)
        plain = isinstance(url, httpx.URL) and url.is_absolute_url and isinstance(headers, httpx.Headers)
        if not plain or self.params or any(value is not None for value in rest.values()):
            return super().build_request(method, url, content=content, headers=headers, timeout=timeout, **rest)
        merged = self._merged_headers.get(key := tuple(headers.raw))
        if merged is None:
            if len(self._merged_headers) >= MERGED_HEADERS_KEPT:
                self._merged_headers.clear()
            merged = self._merged_headers[key] = self._merge_headers(headers)
        timeout = self.timeout if timeout is httpx.USE_CLIENT_DEFAULT else httpx.Timeout(timeout)
        return httpx.Request(method, url, content=content, headers=merged, extensions={"timeout": timeout.as_dict()})

    def _init_transport(self, **kwargs) -> httpx.AsyncBaseTransport:
        transport = kwargs.get("transport")
        if transport is not None:
            return transport
        return CookielessTransport(
            verify=kwargs.get("verify", True),
            cert=kwargs.get("cert"),
            trust_env=kwargs.get("trust_env", True),
            http1=kwargs.get("http1", True),
            http2=kwargs.get("http2", False),
            limits=kwargs["limits"],
        )


class VendorAsyncGroq(groq.AsyncGroq):
    """groq.AsyncGroq, sending the same requests for less CPU on the event loop: its per-call
    idempotency key (made for every POST, though Groq's client sends no idempotency header) comes
    from request_ids, with no getrandom() per prompt; the headers of a call that sets none of its
    own are built once per retry count and copied (~20 µs a call: the default headers, the
    platform's, the key's, merged and validated again each time)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._headers_by_retry: dict[int, httpx.Headers] = {}

    @property
    def user_agent(self) -> str:
        return f"AsyncGroq/Python {self._version}"  # the SDK names its class here, not a subclass

    def _idempotency_key(self) -> str:
        return f"stainless-python-retry-{request_ids.uuid4()}"

    def _build_headers(self, options: FinalRequestOptions, *, retries_taken: int = 0) -> httpx.Headers:
        # Whatever else they depend on (key, user agent, platform, the client's timeout) is fixed
        # for the client's life; the idempotency key would not be, but Groq's client sends none.
        if options.headers or not isinstance(options.timeout, groq.NotGiven) or self._idempotency_header:
            return super()._build_headers(options, retries_taken=retries_taken)
        built = self._headers_by_retry.get(retries_taken)
        if built is None:
            built = self._headers_by_retry[retries_taken] = super()._build_headers(options, retries_taken=retries_taken)
        return built.copy()


# What `client.post` makes for each call (FinalRequestOptions.construct, its defaults deep-copied:
# ~39 µs), made once: a call copies it (~3 µs) and sets its URL and body, then goes through the
# SDK's `request` as `post` would (retries, timeouts, errors unchanged).
POST_OPTIONS = FinalRequestOptions.construct(method="post", url="", json_data=None, content=None, files=None)


def post_options(url: httpx.URL | str, body: dict) -> FinalRequestOptions:
    options = model_copy(POST_OPTIONS)
    options.url = url
    options.json_data = body
    return options


@lru_cache(maxsize=16)
def chat_completions_url(base_url: str) -> httpx.URL:
    """The endpoint's absolute URL under a client's base URL, parsed once. Given a relative path,
    the SDK joins and parses it again for every call (httpx's URL parsing: a third of building a
    request); given an httpx.URL that is absolute already, it uses it as it is."""
    return httpx.URL(base_url).join(CHAT_COMPLETIONS_PATH.lstrip("/"))


class GroqProvider(ChatCompletionsProvider):
    name = "groq"
    vendor = "Groq"
    settings_prefix = "GROQ"
    sdk = GROQ_SDK

    @classmethod
    def make_client(cls, api_key: str, base_url: str, timeout: float, max_retries: int) -> groq.Groq:
        return groq.Groq(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)

    @classmethod
    def make_async_client(cls, api_key: str, base_url: str, timeout: float, max_retries: int) -> groq.AsyncGroq:
        return VendorAsyncGroq(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            http_client=VendorHttpClient(limits=ASYNC_LIMITS, timeout=timeout),
        )

    async def acreate(self, client: groq.AsyncGroq, request: ChatRequest, *, stream: bool):
        url = chat_completions_url(str(client.base_url))
        if stream:
            return await client.request(
                ChatCompletion,
                post_options(url, {**options(request), "stream": True}),
                stream=True,
                stream_cls=RawChunkStream,
            )
        # The SDK sends, retries and raises for an error status as always; the answer comes back as
        # the raw response, read below: building the SDK's pydantic ChatCompletion from it cost
        # ~210 µs a prompt, plain JSON ~25 µs (event-loop CPU, bench/hotpath_bench.py).
        response = await client.request(httpx.Response, post_options(url, options(request)))
        return read_completion(response)


class Fields(dict):
    """A JSON object read with attribute access, None for a missing key: what completion_result
    reads of a ChatCompletion (whose missing optional fields are None too). No field it reads is
    named like a dict method."""

    __slots__ = ()

    def __getattr__(self, name: str):
        return self.get(name)


def read_completion(response: httpx.Response) -> Fields:
    """A chat completion's answer as Fields; an answer that is no JSON object is the vendor's
    fault, classified as any SDK error is (llm/providers/errors.py)."""
    return _json_object(response.content, response, "The answer is not a JSON object.")


def read_chunk(data: str, response: httpx.Response) -> Fields:
    """One streamed chunk (an SSE event's data) as Fields; no JSON object is the vendor's fault."""
    return _json_object(data, response, "A streamed chunk is not a JSON object.")


def _json_object(text: str | bytes, response: httpx.Response, complaint: str) -> Fields:
    try:
        found = json.loads(text, object_hook=Fields)
    except ValueError:
        found = None
    if not isinstance(found, Fields):
        body = text if isinstance(text, str) else response.text
        raise groq.APIResponseValidationError(response=response, body=body[:1000], message=complaint)
    return found


class RawChunkStream(groq.AsyncStream[ChatCompletionChunk]):
    """The SDK's stream of an answer (its SSE decoder, its error events, its response to close),
    with each chunk read as plain JSON (Fields) instead of a pydantic ChatCompletionChunk built
    through the SDK's type-driven construction: take_chunk reads both alike."""

    async def __stream__(self) -> AsyncIterator[Fields]:
        response = self.response
        events = self._iter_events()
        async for sse in events:
            if sse.data.startswith("[DONE]"):
                break
            chunk = read_chunk(sse.data, response)
            error = chunk.get("error")
            if error and (sse.event is None or sse.event == "error"):
                # What the SDK raises for an error event, with its message and body.
                message = error.get("message") if isinstance(error, dict) else None
                raise groq.APIError(
                    message=message if message and isinstance(message, str) else "An error occurred during streaming",
                    request=response.request,
                    body=error,
                )
            if sse.event is None:
                yield chunk
        # As the SDK does: read the rest, so that the connection is released.
        async for _sse in events:
            pass
