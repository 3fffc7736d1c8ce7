"""Sending a prompt through a provider: measure it, and log it whatever happens.

Every call, success or failure, streamed or not, writes exactly one `LLMRequestLog` row.

Two ways to wait for the vendor, one row each: `send_prompt`/`PromptStream` block a thread (WSGI,
the test client); `asend_prompt`/`AsyncPromptStream` wait on the ASGI worker's event loop
(core/asgi.py) and hand their row to the loop's RowBatcher, which writes it on the loop itself on
PostgreSQL (llm/loop_writer.py) and otherwise through `run_sync`, one short hop to a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone

from llm import request_ids
from llm.models import LLMRequestLog
from llm.providers import ChatRequest, ChatResult, Provider, ProviderError


@dataclass
class CallContext:
    """Who made the call and how to label it; none of it is sent to the provider."""

    user_id: str = ""
    session_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    # request_ids.uuid4: one getrandom() per 256 ids, not one per call on the event loop.
    request_id: uuid.UUID = field(default_factory=request_ids.uuid4)
    # The name of the API key the call came with: what a Budget of scope `api_key` counts.
    api_key_name: str = ""


@dataclass
class PromptOutcome:
    log: LLMRequestLog
    # What the caller gets back: the provider's text, untouched by redaction or truncation.
    response_text: str = ""
    error: ProviderError | None = None


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _log_fields(
    chat: ChatRequest,
    context: CallContext,
    provider: Provider,
    started_at: datetime,
    latency_ms: float,
    result: ChatResult,
    error: ProviderError | None = None,
    ttft_ms: float | None = None,
    extra_tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The row of one call, as LLMRequestLog fields (cost: None, computed from ModelPrice)."""
    prompt_tokens, completion_tokens = result.prompt_tokens, result.completion_tokens
    estimated = not result.usage_reported and bool(result.text)
    if estimated:
        prompt_tokens = estimate_tokens(chat.system_prompt) + estimate_tokens(chat.prompt)
        completion_tokens = estimate_tokens(result.text)
    return {
        "request_id": context.request_id,
        "timestamp": started_at,
        "source": LLMRequestLog.Source.PROXY,
        "provider": provider.name,
        "model_name": result.model or chat.model,
        "user_id": context.user_id,
        "session_id": context.session_id,
        "prompt_text": chat.prompt,
        "response_text": result.text,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cached_tokens": result.cached_tokens,
        "tokens_estimated": estimated,
        "queue_time_ms": result.queue_time_ms,
        "prompt_time_ms": result.prompt_time_ms,
        "completion_time_ms": result.completion_time_ms,
        "latency_ms": latency_ms,
        "ttft_ms": ttft_ms,
        "status": LLMRequestLog.Status.ERROR if error else LLMRequestLog.Status.SUCCESS,
        "error_type": error.error_type if error else "",
        "error_message": error.stored_message if error else "",
        "finish_reason": result.finish_reason,
        "temperature": chat.temperature,
        "max_tokens": chat.max_tokens,
        "tags": {**context.tags, **(extra_tags or {})},
        "api_key_name": context.api_key_name,
        "cost_estimate": None,
    }


# When a provider reports no usage (some OpenAI-compatible servers, a stream cut short), the
# counts are estimated from the text: one token per 4 characters, rounded up, OpenAI's rule of
# thumb for English. The row says so (tokens_estimated), and its cost is estimated with it.
ESTIMATE_CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """ceil(characters / 4): the documented estimate for a text whose tokens nobody counted."""
    return math.ceil(len(text) / ESTIMATE_CHARS_PER_TOKEN)


def _record(*args: Any, **kwargs: Any) -> LLMRequestLog:
    log, _ = LLMRequestLog.objects.record(**_log_fields(*args, **kwargs))
    return log


def send_prompt(chat: ChatRequest, context: CallContext, provider: Provider) -> PromptOutcome:
    started_at = timezone.now()
    started = time.perf_counter()
    try:
        result = provider.complete(chat)
    except ProviderError as error:
        log = _record(chat, context, provider, started_at, _elapsed_ms(started), error.partial, error)
        return PromptOutcome(log=log, error=error)
    log = _record(chat, context, provider, started_at, _elapsed_ms(started), result)
    return PromptOutcome(log=log, response_text=result.text)


def record_refusal(chat: ChatRequest, context: CallContext, provider: Provider, error: ProviderError) -> PromptOutcome:
    """A call refused before reaching the provider (a spent budget, llm/budgets.py): still one
    row, with no tokens, so at zero cost."""
    log = _record(chat, context, provider, timezone.now(), 0.0, ChatResult(), error)
    return PromptOutcome(log=log, error=error)


def relay_failure(exc: Exception) -> ProviderError:
    """A failure of ours while relaying a stream (not the vendor's): still a row, and a message."""
    detail = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
    return ProviderError(
        error_type=LLMRequestLog.ErrorType.OTHER,
        message=f"The answer could not be relayed ({detail}).",
    )


def stream_failure(exc: Exception) -> ProviderError:
    """What broke a relayed stream: the vendor's error as classified, or a failure of ours."""
    return exc if isinstance(exc, ProviderError) else relay_failure(exc)


def server_sent_event(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class PromptStream:
    """A streamed call. `open()` reaches the provider; iterating `events()` relays the answer
    as Server-Sent Events and writes the row when the stream ends, fails, or the client leaves.
    """

    def __init__(self, chat: ChatRequest, context: CallContext, provider: Provider) -> None:
        self.chat = chat
        self.context = context
        self.provider = provider
        self.log: LLMRequestLog | None = None

    def open(self) -> PromptOutcome | None:
        """Start the stream; answers the logged failure when the provider refuses outright."""
        self.started_at = timezone.now()
        self.started = time.perf_counter()
        try:
            self.stream = self.provider.stream(self.chat)
        except ProviderError as error:
            latency = _elapsed_ms(self.started)
            log = _record(self.chat, self.context, self.provider, self.started_at, latency, error.partial, error)
            return PromptOutcome(log=log, error=error)
        return None

    def events(self, answer: Callable[[PromptOutcome], dict]) -> Iterator[str]:
        """`answer(outcome)` builds the final event's payload, the same as a non-streamed answer."""
        ttft_ms = None
        error: ProviderError | None = None
        client_left = True
        chunks = iter(self.stream)
        try:
            try:
                # Sent first so that the caller knows the request_id even if the stream breaks;
                # inside the try, so that a client gone already still gets its row.
                yield server_sent_event("start", {"request_id": str(self.context.request_id), "model": self.chat.model})
                for text in chunks:
                    if ttft_ms is None:
                        ttft_ms = _elapsed_ms(self.started)
                    yield server_sent_event("chunk", {"text": text})
                client_left = False
            except Exception as exc:  # noqa: BLE001 - the vendor's failure or ours: the row is written anyway
                error = stream_failure(exc)
                client_left = False
        finally:
            extra_tags = {}
            if client_left:
                # The client went away (GeneratorExit): read the rest of the answer so the row
                # has the full text and the usage, which only arrives in the last chunk.
                extra_tags["client_disconnected"] = "true"
                try:
                    for _ in chunks:
                        if ttft_ms is None:
                            ttft_ms = _elapsed_ms(self.started)
                except Exception as exc:  # noqa: BLE001
                    error = stream_failure(exc)
            result = self.stream.result
            self.log = _record(
                self.chat,
                self.context,
                self.provider,
                self.started_at,
                _elapsed_ms(self.started),
                result,
                error,
                ttft_ms=ttft_ms,
                extra_tags=extra_tags,
            )
        outcome = PromptOutcome(log=self.log, response_text=result.text, error=error)
        yield server_sent_event("error" if error else "done", answer(outcome))


# Run a sync function in a thread that may use the ORM (core.deferred.RunSync).
RunSync = Callable[..., Awaitable]

logger = logging.getLogger(__name__)
# Rows written in one INSERT at most, when many calls end at once.
MAX_BATCH_ROWS = 500


class RowBatcher:
    """The rows of the calls that end on one event loop, written together.

    A call's row is queued and the call waits for it. While one batch is being written (on the
    loop, or in the writer thread, `run_sync`), the rows of calls ending meanwhile gather and go in the next one:
    alone, a call waits for its own INSERT; a thousand calls ending together cost a few INSERTs,
    not a thousand transactions. A row is written even if the call waiting for it is cancelled,
    and a batch the database refuses is written again row by row, so one bad row costs no other.
    """

    def __init__(self, run_sync: RunSync) -> None:
        self.run_sync = run_sync
        self.pending: list[tuple[dict[str, Any], asyncio.Future]] = []
        self.task: asyncio.Task | None = None

    async def write(self, fields: dict[str, Any]) -> LLMRequestLog:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((fields, future))
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.drain())
        # Not shielded (a shield costs the waiting call one more turn of the loop): a call cancelled
        # meanwhile cancels its future only; its row stays in the batch, and drain() skips a done future.
        return await future

    async def drain(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:MAX_BATCH_ROWS], self.pending[MAX_BATCH_ROWS:]
            try:
                outcomes = await self.store([fields for fields, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - every waiting call hears of it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def store(self, rows: list[dict[str, Any]]) -> list[LLMRequestLog | Exception]:
        """Each row's stored log (or the exception its call raises): on the loop when the worker has
        a LoopRowWriter, else, and for the rows it leaves, in the writer thread (store_rows)."""
        stored = await _loop_writer.store(rows) if _loop_writer is not None else None
        if stored is None:
            return await self.run_sync(store_rows, rows)
        left = [index for index, log in enumerate(stored) if log is None]
        if left:
            for index, outcome in zip(left, await self.run_sync(store_rows, [rows[i] for i in left]), strict=True):
                stored[index] = outcome
        return stored


# The worker's writer of rows on its event loop (llm/loop_writer.py, PostgreSQL), set by the ASGI
# worker at start-up (core/asgi.py); None: every row goes through `run_sync` (SQLite, tests).
_loop_writer: Any = None


def write_rows_on_loop_with(writer: Any) -> None:
    """From now on the event loop's rows go through `writer` (a LoopRowWriter), or None: the ORM."""
    global _loop_writer
    _loop_writer = writer


def store_rows(rows: list[dict[str, Any]]) -> list[LLMRequestLog | Exception]:
    """Write calls' rows (in the writer thread): one record_many, or row by row (`record`) for
    one row or when the batch fails."""
    if len(rows) > 1:
        logs = [LLMRequestLog(**fields) for fields in rows]
        try:
            LLMRequestLog.objects.record_many(logs)
            return _as_stored(logs, rows)
        except Exception:  # noqa: BLE001 - each row on its own, below
            logger.warning("A batch of %d call rows failed; writing them one by one", len(rows), exc_info=True)
    outcomes: list[LLMRequestLog | Exception] = []
    for fields in rows:
        try:
            outcomes.append(LLMRequestLog.objects.record(**fields)[0])
        except Exception as exc:  # noqa: BLE001 - this call's waiter raises it
            outcomes.append(exc)
    return outcomes


def _as_stored(logs: list[LLMRequestLog], rows: list[dict[str, Any]]) -> list[LLMRequestLog]:
    """Each log as `record` answers it: a log record_many did not insert (its request_id stored
    already, or twice in the batch) is the stored row, not the unsaved object; one query for all."""
    missing = [log.request_id for log in logs if log.pk is None]
    if not missing:
        return logs
    stored = LLMRequestLog.objects.in_bulk(missing, field_name="request_id")
    answers = []
    for log, fields in zip(logs, rows, strict=True):
        if log.pk is None:
            # Not found: stored by another writer and purged since; `record` stores it after all.
            log = stored.get(log.request_id) or LLMRequestLog.objects.record(**fields)[0]
        answers.append(log)
    return answers


_batchers: dict[tuple[int, RunSync], tuple[asyncio.AbstractEventLoop, RowBatcher]] = {}


def _batcher(run_sync: RunSync) -> RowBatcher:
    loop = asyncio.get_running_loop()
    key = (id(loop), run_sync)
    cached = _batchers.get(key)
    if cached is not None and cached[0] is loop:
        return cached[1]
    for stale in [key for key, (other, _) in _batchers.items() if other.is_closed()]:
        del _batchers[stale]
    batcher = RowBatcher(run_sync)
    _batchers[key] = (loop, batcher)
    return batcher


async def _arecord(run_sync: RunSync, *args: Any, **kwargs: Any) -> LLMRequestLog:
    """_record on the event loop: the row goes in the next batch of the writer thread."""
    return await _batcher(run_sync).write(_log_fields(*args, **kwargs))


async def asend_prompt(chat: ChatRequest, context: CallContext, provider: Provider, run_sync: RunSync) -> PromptOutcome:
    """send_prompt on the event loop: the wait holds no thread; the row is one hop."""
    started_at = timezone.now()
    started = time.perf_counter()
    try:
        result = await provider.acomplete(chat)
    except ProviderError as error:
        latency = _elapsed_ms(started)
        log = await _arecord(run_sync, chat, context, provider, started_at, latency, error.partial, error)
        return PromptOutcome(log=log, error=error)
    log = await _arecord(run_sync, chat, context, provider, started_at, _elapsed_ms(started), result)
    return PromptOutcome(log=log, response_text=result.text)


class AsyncPromptStream:
    """PromptStream on the event loop. When the client leaves, the server closes `events()`
    (aclose): the rest of the answer is read and the row written, tagged client_disconnected."""

    def __init__(self, chat: ChatRequest, context: CallContext, provider: Provider, run_sync: RunSync) -> None:
        self.chat = chat
        self.context = context
        self.provider = provider
        self.run_sync = run_sync
        self.log: LLMRequestLog | None = None

    async def open(self) -> PromptOutcome | None:
        self.started_at = timezone.now()
        self.started = time.perf_counter()
        try:
            self.stream = await self.provider.astream(self.chat)
        except ProviderError as error:
            latency = _elapsed_ms(self.started)
            log = await _arecord(
                self.run_sync, self.chat, self.context, self.provider, self.started_at, latency, error.partial, error
            )
            return PromptOutcome(log=log, error=error)
        return None

    async def events(self, answer: Callable[[PromptOutcome], dict]) -> AsyncIterator[str]:
        self.ttft_ms = None
        error: ProviderError | None = None
        client_left = True
        chunks = aiter(self.stream)
        try:
            try:
                yield server_sent_event("start", {"request_id": str(self.context.request_id), "model": self.chat.model})
                async for text in chunks:
                    if self.ttft_ms is None:
                        self.ttft_ms = _elapsed_ms(self.started)
                    yield server_sent_event("chunk", {"text": text})
                client_left = False
            except Exception as exc:  # noqa: BLE001 - the vendor's failure or ours: the row is written anyway
                error = stream_failure(exc)
                client_left = False
        finally:
            extra_tags = {}
            if client_left:
                # aclose() from the server (GeneratorExit): read the rest, as PromptStream does.
                extra_tags["client_disconnected"] = "true"
                error = await self._drain(chunks) or error
            result = self.stream.result
            self.log = await _arecord(
                self.run_sync,
                self.chat,
                self.context,
                self.provider,
                self.started_at,
                _elapsed_ms(self.started),
                result,
                error,
                self.ttft_ms,
                extra_tags,
            )
        outcome = PromptOutcome(log=self.log, response_text=result.text, error=error)
        yield server_sent_event("error" if error else "done", answer(outcome))

    async def _drain(self, chunks: AsyncIterator[str]) -> ProviderError | None:
        try:
            async for _ in chunks:
                if self.ttft_ms is None:
                    self.ttft_ms = _elapsed_ms(self.started)
        except Exception as exc:  # noqa: BLE001
            return stream_failure(exc)
        return None
