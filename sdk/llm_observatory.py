"""Report LLM calls to LLM Observatory (POST /api/events/) from any Python application.

Standard library only: copy this file into a project, or `pip install ./sdk`.

    from llm_observatory import Client

    observatory = Client("https://observatory.example.com", api_key="llmo_...")

    @observatory.track(user_id="u-42", tags={"feature": "summary"})
    def summarise(text):
        return groq.chat.completions.create(model="llama-3.1-8b-instant", messages=[...])

    with observatory.track(model="llama-3.1-8b-instant") as call:
        response = groq.chat.completions.create(...)
        call.record(response)

    observatory.log_event(model="llama-3.1-8b-instant", prompt_tokens=12, completion_tokens=30, latency_ms=420)

Events go into a bounded in-memory queue and are sent in batches by a background daemon thread,
so tracking never blocks or raises into the code it measures. A batch that fails to send (server
down, 5xx, 429, timeout) is retried with exponential backoff and the same request ids; the server
stores a request id once, so a retry never stores a call twice. When the queue is full the oldest
event is dropped and counted (`client.stats["dropped"]`). Pending events are flushed at exit, for
at most `exit_timeout` seconds.
"""

from __future__ import annotations

import atexit
import collections
import functools
import gzip
import http.client
import inspect
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

__version__ = "1.1.0"
__all__ = ["Client", "DeliveryError", "TrackedCall", "classify_error", "error_message"]

logger = logging.getLogger("llm_observatory")

# The server's limits (POST /api/events/); longer text is cut here so the event is not refused.
MAX_TEXT_CHARS = 100_000
MAX_ERROR_MESSAGE_CHARS = 10_000
MAX_NAME_CHARS = 200
MAX_EVENTS_PER_BATCH = 1_000
TRUNCATION_MARKER = "…[truncated]"
# Bodies above this are gzipped; the server accepts gzip.
GZIP_ABOVE_BYTES = 1_024

ERROR_TYPES = ("timeout", "rate_limit", "authentication", "bad_request", "server_error", "connection_error", "other")


@dataclass
class DeliveryError:
    """What went wrong sending a batch; given to `on_error`."""

    reason: str
    events: int
    status: int | None  # HTTP status, None when the server could not be reached
    will_retry: bool


class Client:
    """Sends events to one LLM Observatory server. Thread-safe; make one per process and reuse it.

    base_url, api_key: default from LLM_OBSERVATORY_URL and LLM_OBSERVATORY_API_KEY.
    batch_size: events per request (at most 1,000); a batch leaves when full or `flush_interval`
        seconds after its first event.
    max_queue_size: events held in memory; when full the oldest is dropped (and counted), so a
        long outage costs bounded memory and keeps the most recent calls.
    max_retries, backoff_base, backoff_max: a failed batch is retried up to `max_retries` times,
        waiting backoff_base × 2^n seconds (at most backoff_max, with jitter) in between; with the
        defaults a batch survives an outage of about two and a half minutes.
    timeout: seconds per HTTP request. exit_timeout: seconds to flush at interpreter exit.
    capture_text: send prompt and response text (the server may still drop it: STORE_PROMPTS).
    default_tags: merged into every event's tags.
    on_error: called with a DeliveryError from the sending thread (exceptions in it are ignored).
    enabled: False makes every method a no-op (for tests and local development).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_queue_size: int = 10_000,
        max_retries: int = 10,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        timeout: float = 10.0,
        exit_timeout: float = 5.0,
        capture_text: bool = True,
        default_tags: Mapping[str, str] | None = None,
        on_error: Callable[[DeliveryError], None] | None = None,
        enabled: bool = True,
    ) -> None:
        base_url = base_url if base_url is not None else os.environ.get("LLM_OBSERVATORY_URL", "")
        self.api_key = api_key if api_key is not None else os.environ.get("LLM_OBSERVATORY_API_KEY", "")
        self.events_url = base_url.rstrip("/") + "/api/events/"
        self.enabled = enabled and bool(base_url)
        if enabled and not base_url:
            logger.warning("llm_observatory: no base_url (or LLM_OBSERVATORY_URL); events are not sent.")
        self.batch_size = max(1, min(batch_size, MAX_EVENTS_PER_BATCH))
        self.flush_interval = flush_interval
        self.max_queue_size = max(1, max_queue_size)
        self.max_retries = max(0, max_retries)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.exit_timeout = exit_timeout
        self.capture_text = capture_text
        self.default_tags = {str(key): str(value) for key, value in (default_tags or {}).items()}
        self.on_error = on_error
        self._reset_state()
        if self.enabled:
            atexit.register(self._at_exit)

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        self._condition = threading.Condition()
        self._queue: collections.deque[dict] = collections.deque()
        self._in_flight = 0
        self._flush_waiters = 0
        self._closed = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats = {"queued": 0, "sent": 0, "duplicates": 0, "dropped": 0, "rejected": 0, "failed": 0, "retries": 0}

    @property
    def stats(self) -> dict[str, int]:
        """Counts since start: queued; sent (acknowledged by the server), of which duplicates
        (already stored: a retry whose first answer was lost); dropped (queue full, or client
        closed); rejected (refused by the server: invalid event or bad key); failed (given up
        after max_retries); retries; and pending (not sent yet)."""
        with self._condition:
            return {**self._stats, "pending": len(self._queue) + self._in_flight}

    # -- recording ------------------------------------------------------------------------------

    def log_event(
        self,
        model: str,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        total_tokens: int | None = None,
        latency_ms: float | None = None,
        ttft_ms: float | None = None,
        status: str | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        cost_usd: float | str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        prompt: str | None = None,
        response: str | None = None,
        tags: Mapping[str, Any] | None = None,
        finish_reason: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        provider: str | None = None,
        trace_id: str | None = None,
        span_id: str | None = None,
        parent_span_id: str | None = None,
        timestamp: datetime | float | None = None,
        request_id: str | uuid.UUID | None = None,
    ) -> str:
        """Queue one call; answers its request_id at once (keep it to attach feedback later).

        timestamp: when the call started, a datetime (naive means local time) or a Unix time;
        default now. Never raises; a problem is logged and the event skipped.
        """
        request_id = str(request_id or uuid.uuid4())
        if not self.enabled:
            return request_id
        try:
            event = {
                "request_id": request_id,
                "timestamp": _iso_timestamp(timestamp),
                "model": _cut(str(model), MAX_NAME_CHARS),
                "provider": provider and _cut(str(provider), 64),
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": total_tokens,
                "latency_ms": None if latency_ms is None else round(float(latency_ms), 3),
                "ttft_ms": None if ttft_ms is None else round(float(ttft_ms), 3),
                "status": status,
                "error_type": error_type,
                "error_message": error_message and _cut(str(error_message), MAX_ERROR_MESSAGE_CHARS),
                "cost_usd": None if cost_usd is None else str(cost_usd),
                "user_id": user_id and _cut(str(user_id), MAX_NAME_CHARS),
                "session_id": session_id and _cut(str(session_id), MAX_NAME_CHARS),
                "prompt": _cut(str(prompt), MAX_TEXT_CHARS) if prompt and self.capture_text else None,
                "response": _cut(str(response), MAX_TEXT_CHARS) if response and self.capture_text else None,
                "finish_reason": finish_reason and _cut(str(finish_reason), 32),
                "temperature": temperature,
                "max_tokens": max_tokens,
                "trace_id": trace_id,
                "span_id": span_id,
                "parent_span_id": parent_span_id,
            }
            merged_tags = {**self.default_tags, **{str(key): str(value) for key, value in (tags or {}).items()}}
            if merged_tags:
                event["tags"] = merged_tags
            self._enqueue({key: value for key, value in event.items() if value is not None and value != ""})
        except Exception:  # noqa: BLE001 - never break the caller's code
            logger.exception("llm_observatory: could not record an event")
        return request_id

    def track(
        self,
        model: str | None = None,
        *,
        provider: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        prompt: str | None = None,
        tags: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Tracker:
        """Measure an LLM call: a decorator or a context manager.

        As a decorator, the function's return value is read as a Groq/OpenAI chat completion
        (object or dict: `usage.prompt_tokens`, `usage.completion_tokens`, `model`,
        `choices[0].finish_reason`, `choices[0].message.content`), and a `messages` or `prompt`
        keyword argument is taken as the prompt. As a context manager, hand the response to
        `call.record(response)`, or set figures with `call.set(...)`. Latency is measured either
        way; an exception is recorded as an error (with its type) and raised on unchanged.
        Other keyword arguments are event fields (see `log_event`).
        """
        defaults = {
            "model": model,
            "provider": provider,
            "user_id": user_id,
            "session_id": session_id,
            "prompt": prompt,
            "tags": tags,
            **fields,
        }
        return Tracker(self, {key: value for key, value in defaults.items() if value is not None})

    # -- queue and delivery ---------------------------------------------------------------------

    def _enqueue(self, event: dict) -> None:
        with self._condition:
            if os.getpid() != self._pid:
                # Forked (a pre-forking server): the parent's thread and queue do not exist here.
                self._reset_state()
            if self._closed:
                self._stats["dropped"] += 1
                return
            if len(self._queue) >= self.max_queue_size:
                self._queue.popleft()
                self._stats["dropped"] += 1
            self._queue.append(event)
            self._stats["queued"] += 1
            self._ensure_thread()
            if len(self._queue) >= self.batch_size:
                self._condition.notify_all()

    def _ensure_thread(self) -> None:
        # Called with the condition held.
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="llm-observatory-sender", daemon=True)
            self._thread.start()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Send everything queued now; answers True when all of it was handled within `timeout`."""
        if not self.enabled:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            self._flush_waiters += 1
            self._condition.notify_all()
            try:
                while self._queue or self._in_flight:
                    self._ensure_thread()
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._condition.wait(remaining)
                return True
            finally:
                self._flush_waiters -= 1

    def close(self, timeout: float | None = None) -> bool:
        """Flush (for at most `timeout`, default exit_timeout) and stop; later events are dropped."""
        if not self.enabled:
            return True
        flushed = self.flush(self.exit_timeout if timeout is None else timeout)
        with self._condition:
            self._closed = True
            self._stopping.set()
            self._condition.notify_all()
        atexit.unregister(self._at_exit)
        return flushed

    def _at_exit(self) -> None:
        try:
            if not self.close() and self.stats["pending"]:
                logger.warning("llm_observatory: %d event(s) not sent at exit", self.stats["pending"])
        except Exception:  # noqa: BLE001, S110 - the interpreter is exiting; nothing else to do
            pass

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._deliver(batch)
            except Exception:  # noqa: BLE001 - the sender thread must survive anything
                logger.exception("llm_observatory: unexpected error sending %d event(s)", len(batch))
                self._count("failed", len(batch))
            finally:
                with self._condition:
                    self._in_flight = 0
                    self._condition.notify_all()

    def _next_batch(self) -> list[dict] | None:
        with self._condition:
            while not self._queue:
                if self._stopping.is_set():
                    return None
                self._condition.wait()
            # Wait for a full batch, a flush, or the interval since the first event, whichever first.
            deadline = time.monotonic() + self.flush_interval
            while len(self._queue) < self.batch_size and not self._flush_waiters and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self._in_flight = len(batch)
            return batch

    def _count(self, name: str, amount: int = 1) -> None:
        with self._condition:
            self._stats[name] += amount

    def _deliver(self, batch: list[dict]) -> None:
        pending = [batch]
        while pending:
            self._send_with_retries(pending.pop(), pending)

    def _send_with_retries(self, events: list[dict], pending: list[list[dict]]) -> None:
        attempt = 0
        while events:
            status, body, retry_after, reason = self._post(events)
            if status is not None and 200 <= status < 300:
                duplicates = _json_object(body).get("duplicates", 0)
                self._count("sent", len(events))
                self._count("duplicates", duplicates if isinstance(duplicates, int) else 0)
                return
            if status == 413 and len(events) > 1:
                middle = len(events) // 2
                pending.extend([events[middle:], events[:middle]])
                return
            if status == 400:
                # All or nothing on the server: drop the events it names and send the rest again.
                bad = _bad_indices(body, len(events))
                if bad and len(bad) < len(events):
                    self._reject([events[index] for index in sorted(bad)], f"invalid: {_short(body)}", status)
                    events = [event for index, event in enumerate(events) if index not in bad]
                    continue
            retryable = status is None or status in (408, 429) or status >= 500
            if not retryable:
                self._reject(events, f"HTTP {status}: {_short(body)}", status)
                return
            attempt += 1
            if attempt > self.max_retries:
                self._count("failed", len(events))
                self._report(DeliveryError(reason, len(events), status, will_retry=False))
                logger.warning(
                    "llm_observatory: gave up on %d event(s) after %d tries: %s", len(events), attempt, reason
                )
                return
            self._count("retries")
            self._report(DeliveryError(reason, len(events), status, will_retry=True))
            delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311
            if retry_after is not None:
                delay = min(self.backoff_max, max(delay, retry_after))
            if self._stopping.is_set():
                delay = min(delay, 0.25)  # exiting: keep trying briefly rather than waiting out the backoff
            time.sleep(delay)

    def _reject(self, events: list[dict], reason: str, status: int | None) -> None:
        self._count("rejected", len(events))
        self._report(DeliveryError(reason, len(events), status, will_retry=False))
        logger.warning("llm_observatory: server refused %d event(s): %s", len(events), reason)

    def _report(self, error: DeliveryError) -> None:
        if self.on_error is not None:
            try:
                self.on_error(error)
            except Exception:  # noqa: BLE001, S110 - a broken callback must not stop delivery
                pass

    def _post(self, events: list[dict]) -> tuple[int | None, bytes, float | None, str]:
        """One POST; answers (status or None when unreachable, body, Retry-After seconds, reason)."""
        data = json.dumps({"events": events}, separators=(",", ":"), ensure_ascii=False, default=str).encode()
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.api_key}",
            "User-Agent": f"llm-observatory-python/{__version__}",
        }
        if len(data) > GZIP_ABOVE_BYTES:
            data = gzip.compress(data)
            headers["Content-Encoding"] = "gzip"
        request = urllib.request.Request(self.events_url, data=data, headers=headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return response.status, response.read(), None, f"HTTP {response.status}"
        except urllib.error.HTTPError as error:
            body = error.read()
            return error.code, body, _retry_after(error.headers.get("Retry-After")), f"HTTP {error.code}"
        except (OSError, http.client.HTTPException) as error:
            return None, b"", None, f"{error.__class__.__name__}: {error}"


class Tracker:
    """What `Client.track` answers: use it as a decorator or as a context manager."""

    def __init__(self, client: Client, defaults: dict[str, Any]) -> None:
        self._client = client
        self._defaults = defaults
        self._local = threading.local()

    def __enter__(self) -> TrackedCall:
        call = TrackedCall(self._client, self._defaults)
        self._local.__dict__.setdefault("calls", []).append(call)
        return call

    def __exit__(self, exc_type, exc, traceback) -> bool:
        calls = self._local.__dict__.get("calls")
        if calls:
            calls.pop().finish(exc if isinstance(exc, Exception) else None)
        return False  # never swallow the caller's exception

    def __call__(self, function: Callable) -> Callable:
        arguments = _argument_reader(function)
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args, **kwargs):
                call = TrackedCall(self._client, self._defaults, arguments(args, kwargs))
                try:
                    result = await function(*args, **kwargs)
                except Exception as error:
                    call.finish(error)
                    raise
                call.record(result)
                call.finish(None)
                return result

            return async_wrapper

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            call = TrackedCall(self._client, self._defaults, arguments(args, kwargs))
            try:
                result = function(*args, **kwargs)
            except Exception as error:
                call.finish(error)
                raise
            call.record(result)
            call.finish(None)
            return result

        return wrapper


class TrackedCall:
    """One measured call. `request_id` is known from the start."""

    def __init__(self, client: Client, defaults: dict[str, Any], call_kwargs: Mapping[str, Any] | None = None) -> None:
        self._client = client
        self.fields: dict[str, Any] = dict(defaults)
        self.request_id = str(uuid.uuid4())
        self._started_at = datetime.now(timezone.utc)  # noqa: UP017 - runs on Python 3.8+
        self._started = time.perf_counter()
        self._finished = False
        if call_kwargs and "prompt" not in self.fields:
            try:
                if prompt := _prompt_from_arguments(call_kwargs):
                    self.fields["prompt"] = prompt
            except Exception:  # noqa: BLE001
                logger.debug("llm_observatory: could not read the prompt", exc_info=True)
        # The model the call asks for (over the decorator's default: it is what was sent) is what
        # a failed call is recorded under; a response, when there is one, names the model that
        # answered and takes over.
        model = call_kwargs.get("model") if call_kwargs else None
        if isinstance(model, str) and model:
            self.fields["model"] = model

    def set(self, **fields: Any) -> None:
        """Set event fields by hand (see `Client.log_event`)."""
        self.fields.update(fields)

    def first_token(self) -> None:
        """Call when the first streamed token arrives: records ttft_ms (once)."""
        self.fields.setdefault("ttft_ms", (time.perf_counter() - self._started) * 1000)

    def record(self, response: Any) -> Any:
        """Read model, usage, finish reason and text from a Groq/OpenAI-style response (object or
        dict, or a stream's last chunk carrying usage); answers the response unchanged."""
        try:
            self.fields.update(_read_response(response))
        except Exception:  # noqa: BLE001 - an unexpected response shape must not break the caller
            logger.debug("llm_observatory: could not read the response", exc_info=True)
        return response

    def finish(self, error: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            fields = dict(self.fields)
            fields.setdefault("latency_ms", (time.perf_counter() - self._started) * 1000)
            if error is not None:
                fields["status"] = "error"
                fields.setdefault("error_type", classify_error(error))
                fields.setdefault("error_message", error_message(error))
            self._client.log_event(
                fields.pop("model", None) or "unknown",
                timestamp=self._started_at,
                request_id=self.request_id,
                **fields,
            )
        except Exception:  # noqa: BLE001
            logger.exception("llm_observatory: could not record a call")


def error_message(error: BaseException) -> str:
    """The vendor's own words for an SDK exception (Groq and OpenAI put `{"error": {"message":
    ...}}` in `body`; their str() is a Python repr of it), with the HTTP status; else str()."""
    body = getattr(error, "body", None)
    message = body
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, Mapping) else inner
    if isinstance(message, str) and message.strip():
        status = getattr(error, "status_code", None)
        return f"HTTP {status}: {message.strip()}" if isinstance(status, int) else message.strip()
    return str(error) or error.__class__.__name__


def classify_error(error: BaseException) -> str:
    """The server's error_type for an exception from an LLM SDK (Groq, OpenAI, httpx, …)."""
    names = " ".join(cls.__name__.lower() for cls in type(error).__mro__)
    status = getattr(error, "status_code", None)
    if not isinstance(status, int):
        status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, TimeoutError) or "timeout" in names:
        return "timeout"
    if status == 429 or "ratelimit" in names:
        return "rate_limit"
    if status in (401, 403) or "authentication" in names or "permissiondenied" in names:
        return "authentication"
    if isinstance(error, ConnectionError) or "connection" in names:
        return "connection_error"
    if isinstance(status, int) and 500 <= status < 600:
        return "server_error"
    if isinstance(status, int) and 400 <= status < 500:
        return "bad_request"
    if "internalserver" in names:
        return "server_error"
    if "badrequest" in names or "notfound" in names or "unprocessable" in names:
        return "bad_request"
    return "other"


# -- helpers ------------------------------------------------------------------------------------


def _get(container: Any, name: str) -> Any:
    if container is None:
        return None
    if isinstance(container, Mapping):
        return container.get(name)
    return getattr(container, name, None)


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _read_response(response: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if response is None:
        return fields
    model = _get(response, "model")
    if isinstance(model, str) and model:
        fields["model"] = model
    # Groq puts a stream's usage in the last chunk's x_groq.usage.
    usage = _get(response, "usage") or _get(_get(response, "x_groq"), "usage")
    for name, keys in (
        ("prompt_tokens", ("prompt_tokens", "input_tokens")),
        ("completion_tokens", ("completion_tokens", "output_tokens")),
        ("total_tokens", ("total_tokens",)),
    ):
        for key in keys:
            value = _whole(_get(usage, key))
            if value is not None:
                fields[name] = value
                break
    if "total_tokens" in fields and fields["total_tokens"] != fields.get("prompt_tokens", 0) + fields.get(
        "completion_tokens", 0
    ):
        # Some providers count more in the total (cached or reasoning tokens) than the parts the
        # server checks it against; the parts are what cost is computed from.
        del fields["total_tokens"]
    choices = _get(response, "choices")
    if isinstance(choices, (list, tuple)) and choices:
        first = choices[0]
        finish_reason = _get(first, "finish_reason")
        if isinstance(finish_reason, str) and finish_reason:
            fields["finish_reason"] = finish_reason
        content = _get(_get(first, "message"), "content")
        if content is None:
            content = _get(first, "text")  # the older completions API
        if isinstance(content, str) and content:
            fields["response"] = content
    return fields


def _argument_reader(function: Callable) -> Callable[[tuple, dict], dict[str, Any]]:
    """(args, kwargs) -> the call's arguments by parameter name, so that `model` and `messages`
    are found whether they were passed by keyword or by position."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        signature = None

    def read(args: tuple, kwargs: dict) -> dict[str, Any]:
        if signature is None:
            return dict(kwargs)
        try:
            arguments = dict(signature.bind_partial(*args, **kwargs).arguments)
        except TypeError:  # the call does not fit the signature: it is about to raise anyway
            return dict(kwargs)
        for name, parameter in signature.parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD and isinstance(arguments.get(name), dict):
                arguments.update(arguments.pop(name))
        return arguments

    return read


def _prompt_from_arguments(arguments: Mapping[str, Any]) -> str:
    prompt = arguments.get("prompt")
    if isinstance(prompt, str):
        return prompt
    messages = arguments.get("messages")
    if not isinstance(messages, (list, tuple)):
        return ""
    parts = []
    for message in messages:
        role, content = _get(message, "role"), _get(message, "content")
        if not isinstance(content, str):
            content = json.dumps(content, default=str) if content is not None else ""
        if content:
            parts.append((role if isinstance(role, str) else "", content))
    if len(parts) == 1:
        return parts[0][1]
    return "\n\n".join(f"{role}: {content}" if role else content for role, content in parts)


def _iso_timestamp(timestamp: datetime | float | None) -> str:
    if timestamp is None:
        moment = datetime.now(timezone.utc)  # noqa: UP017
    elif isinstance(timestamp, datetime):
        moment = timestamp.astimezone(timezone.utc)  # noqa: UP017 - a naive datetime is local time
    else:
        moment = datetime.fromtimestamp(float(timestamp), timezone.utc)  # noqa: UP017
    return moment.isoformat().replace("+00:00", "Z")


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def _json_object(body: bytes) -> dict:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _bad_indices(body: bytes, count: int) -> set[int]:
    events = _json_object(body).get("fields", {})
    events = events.get("events") if isinstance(events, dict) else None
    if not isinstance(events, dict):
        return set()
    return {int(key) for key in events if str(key).isdigit() and int(key) < count}


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _short(body: bytes, limit: int = 300) -> str:
    return body[:limit].decode("utf-8", "replace")
