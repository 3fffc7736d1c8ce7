"""Groq through its official SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import lru_cache

import aiohttp
import groq
import httpx
from django.conf import settings

# Imported with this module (the URLconf, at a worker's start), not by the first answer parsed.
from groq.types.chat import ChatCompletion, ChatCompletionChunk

from llm.models import LLMRequestLog
from llm.providers import ChatRequest, ChatResult, ProviderError, errors
from llm.providers.errors import Upstream

ErrorType = LLMRequestLog.ErrorType


@lru_cache(maxsize=4)
def _client(api_key: str, base_url: str, timeout: float, max_retries: int) -> groq.Groq:
    # One client per configuration keeps its connection pool across requests.
    return groq.Groq(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)


# Async clients, one per event loop and configuration (an httpx connection belongs to the loop
# that opened it). The ASGI worker has one loop for its life, so its client keeps its pool.
_async_clients: dict[tuple, tuple[asyncio.AbstractEventLoop, groq.AsyncGroq]] = {}
# The SDK's aiohttp transport (groq[aiohttp]): httpx's own async pool slows down with the square of
# the calls in flight (500 at once took 17 s instead of 2). Its default of 100 connections would
# queue the rest: calls in flight are bounded by the server instead.
ASYNC_LIMITS = httpx.Limits(max_connections=100_000, max_keepalive_connections=1_000)


def _async_client(api_key: str, base_url: str, timeout: float, max_retries: int) -> groq.AsyncGroq:
    loop = asyncio.get_running_loop()
    key = (id(loop), api_key, base_url, timeout, max_retries)
    cached = _async_clients.get(key)
    if cached is not None and cached[0] is loop:
        return cached[1]
    for stale in [key for key, (other, _) in _async_clients.items() if other.is_closed()]:
        del _async_clients[stale]
    client = groq.AsyncGroq(
        api_key=api_key,
        base_url=base_url,
        timeout=timeout,
        max_retries=max_retries,
        http_client=groq.DefaultAioHttpClient(limits=ASYNC_LIMITS, timeout=timeout),
    )
    _async_clients[key] = (loop, client)
    return client


def _aiohttp_cause(exc: BaseException) -> BaseException | None:
    """The aiohttp error under an SDK error (the transport maps some to httpx errors loosely)."""
    while exc is not None and not isinstance(exc, aiohttp.ClientError | TimeoutError):
        exc = exc.__cause__
    return exc


def classify(exc: Exception, upstream: Upstream, *, during_stream: bool = False) -> ProviderError:
    """Map an SDK exception onto SPEC's error types, with our message and the vendor's words."""
    status_code = getattr(exc, "status_code", None)
    cause = _aiohttp_cause(exc)
    if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(cause, aiohttp.ServerTimeoutError):
        # httpx-aiohttp reports a dropped connection as ConnectTimeout: it is a connection error.
        error_type = ErrorType.CONNECTION_ERROR
    elif isinstance(exc, groq.APITimeoutError | httpx.TimeoutException):
        error_type = ErrorType.TIMEOUT
    elif isinstance(exc, groq.APIConnectionError | httpx.TransportError):
        # The SDK does not wrap transport errors raised while a stream is being read.
        error_type = ErrorType.CONNECTION_ERROR
    elif isinstance(exc, groq.RateLimitError):
        error_type = ErrorType.RATE_LIMIT
    elif isinstance(exc, groq.AuthenticationError | groq.PermissionDeniedError):
        error_type = ErrorType.AUTHENTICATION
    elif isinstance(exc, groq.BadRequestError | groq.NotFoundError | groq.UnprocessableEntityError):
        error_type = ErrorType.BAD_REQUEST
    elif isinstance(exc, groq.APIStatusError):
        error_type = ErrorType.SERVER_ERROR if exc.status_code >= 500 else ErrorType.OTHER
    elif isinstance(exc, groq.APIError):
        # An error event inside a stream: a plain APIError with no status code.
        error_type = ErrorType.SERVER_ERROR
    else:
        error_type = ErrorType.OTHER
    response = getattr(exc, "response", None)
    wait = errors.retry_after(response.headers) if isinstance(response, httpx.Response) else None
    message = errors.explain(
        error_type,
        upstream,
        status_code=status_code,
        retry_after_seconds=wait,
        during_stream=during_stream,
        detail=_detail(exc, error_type),
    )
    return ProviderError(
        error_type=error_type,
        message=message,
        status_code=status_code,
        upstream_message=errors.vendor_message(getattr(exc, "body", None)),
        retry_after_seconds=wait,
        vendor=upstream.vendor,
    )


def _detail(exc: Exception, error_type: str) -> str:
    """What the transport said (connection refused, server disconnected) or, for a failure we do
    not expect, the exception's class: the SDK's own text for these is only "Connection error."."""
    if error_type == ErrorType.CONNECTION_ERROR:
        cause = _aiohttp_cause(exc) or (exc if isinstance(exc, httpx.TransportError) else exc.__cause__)
        return str(cause or "").strip()
    if error_type == ErrorType.OTHER and not isinstance(exc, groq.APIStatusError):
        return exc.__class__.__name__
    return ""


def _messages(request: ChatRequest) -> list[dict[str, str]]:
    messages = []
    if request.system_prompt:
        messages.append({"role": "system", "content": request.system_prompt})
    messages.append({"role": "user", "content": request.prompt})
    return messages


def _options(request: ChatRequest) -> dict:
    options: dict = {"model": request.model, "messages": _messages(request)}
    if request.max_tokens is not None:
        options["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        options["temperature"] = request.temperature
    return options


@contextmanager
def _relaying(result: ChatResult, upstream: Upstream, parts: list[str]) -> Iterator[None]:
    """Around a stream's loop (sync or async): an SDK or transport error becomes a ProviderError
    carrying what arrived so far, and `result.text` is what was relayed, however the loop ends."""
    try:
        yield
    except (groq.GroqError, httpx.HTTPError) as exc:
        error = classify(exc, upstream, during_stream=True)
        error.partial = result
        raise error from exc
    finally:
        result.text = "".join(parts)


class GroqStream:
    def __init__(self, sdk_stream: groq.Stream, model: str, upstream: Upstream) -> None:
        self._sdk_stream = sdk_stream
        self._upstream = upstream
        self.result = ChatResult(model=model)

    def __iter__(self) -> Iterator[str]:
        parts: list[str] = []
        with _relaying(self.result, self._upstream, parts):
            for chunk in self._sdk_stream:
                for text in _take_chunk(self.result, chunk):
                    parts.append(text)
                    yield text

    def close(self) -> None:
        self._sdk_stream.close()


class AsyncGroqStream:
    """GroqStream for the async client: `async for` yields text; `result` is complete after."""

    def __init__(self, sdk_stream: groq.AsyncStream, model: str, upstream: Upstream) -> None:
        self._sdk_stream = sdk_stream
        self._upstream = upstream
        self.result = ChatResult(model=model)

    async def __aiter__(self) -> AsyncIterator[str]:
        parts: list[str] = []
        with _relaying(self.result, self._upstream, parts):
            async for chunk in self._sdk_stream:
                for text in _take_chunk(self.result, chunk):
                    parts.append(text)
                    yield text

    async def close(self) -> None:
        await self._sdk_stream.close()


def _take_chunk(result: ChatResult, chunk) -> list[str]:
    """Fold one stream chunk into `result` (model, usage, finish reason); answers its texts."""
    if chunk.model:
        result.model = chunk.model
    usage = chunk.usage or (chunk.x_groq.usage if chunk.x_groq else None)
    if usage is not None:
        result.prompt_tokens = usage.prompt_tokens or 0
        result.completion_tokens = usage.completion_tokens or 0
    texts = []
    for choice in chunk.choices:
        if choice.finish_reason:
            result.finish_reason = choice.finish_reason
        if choice.delta and choice.delta.content:
            texts.append(choice.delta.content)
    return texts


class GroqProvider:
    name = "groq"

    def __init__(self, api_key: str, base_url: str, timeout: float, max_retries: int) -> None:
        self.api_key = api_key
        self.base_url = base_url
        self.timeout = timeout
        self.max_retries = max_retries
        self.upstream = Upstream(
            vendor="Groq",
            key_setting="GROQ_API_KEY",
            base_url_setting="GROQ_BASE_URL",
            base_url=base_url,
            timeout_setting="GROQ_TIMEOUT_SECONDS",
            timeout_seconds=timeout,
        )

    @classmethod
    def from_settings(cls) -> GroqProvider:
        return cls(
            api_key=settings.GROQ_API_KEY,
            base_url=settings.GROQ_BASE_URL,
            timeout=settings.GROQ_TIMEOUT_SECONDS,
            max_retries=settings.GROQ_MAX_RETRIES,
        )

    def _check_key(self) -> None:
        if not self.api_key:
            raise ProviderError(
                error_type=ErrorType.CONFIGURATION,
                message=errors.explain(ErrorType.CONFIGURATION, self.upstream),
                vendor=self.upstream.vendor,
            )

    def _sdk(self) -> groq.Groq:
        self._check_key()
        return _client(self.api_key, self.base_url, self.timeout, self.max_retries)

    def _async_sdk(self) -> groq.AsyncGroq:
        self._check_key()
        return _async_client(self.api_key, self.base_url, self.timeout, self.max_retries)

    def complete(self, request: ChatRequest) -> ChatResult:
        client = self._sdk()
        try:
            completion = client.chat.completions.create(**_options(request))
        except groq.GroqError as exc:
            raise classify(exc, self.upstream) from exc
        return _completion_result(completion, request)

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        client = self._async_sdk()
        try:
            completion = await _acreate(client, request, stream=False)
        except groq.GroqError as exc:
            raise classify(exc, self.upstream) from exc
        return _completion_result(completion, request)

    def stream(self, request: ChatRequest) -> GroqStream:
        client = self._sdk()
        try:
            sdk_stream = client.chat.completions.create(**_options(request), stream=True)
        except groq.GroqError as exc:
            raise classify(exc, self.upstream) from exc
        return GroqStream(sdk_stream, request.model, self.upstream)

    async def astream(self, request: ChatRequest) -> AsyncGroqStream:
        client = self._async_sdk()
        try:
            sdk_stream = await _acreate(client, request, stream=True)
        except groq.GroqError as exc:
            raise classify(exc, self.upstream) from exc
        return AsyncGroqStream(sdk_stream, request.model, self.upstream)


# What `client.chat.completions.create` posts, without its per-call pass over the parameters'
# type hints (`async_maybe_transform`, ~5 % of a proxied prompt's CPU): it changes nothing in the
# plain strings and numbers of `_options` (no aliased or formatted field among them). Retries,
# timeouts, errors and the parsing of the answer are the SDK's, as with `create`.
CHAT_COMPLETIONS_PATH = "/openai/v1/chat/completions"


async def _acreate(client: groq.AsyncGroq, request: ChatRequest, *, stream: bool):
    return await client.post(
        CHAT_COMPLETIONS_PATH,
        body={**_options(request), "stream": stream} if stream else _options(request),
        cast_to=ChatCompletion,
        stream=stream,
        stream_cls=groq.AsyncStream[ChatCompletionChunk],
    )


def _completion_result(completion, request: ChatRequest) -> ChatResult:
    choice = completion.choices[0] if completion.choices else None
    usage = completion.usage
    return ChatResult(
        text=(choice.message.content or "") if choice else "",
        model=completion.model or request.model,
        prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
        completion_tokens=(usage.completion_tokens or 0) if usage else 0,
        finish_reason=(choice.finish_reason or "") if choice else "",
    )
