"""The app's own log: one line per request (RequestLogMiddleware) and the JSON formatter that
LOG_FORMAT=json selects, one JSON object per line for Loki or any log shipper.

Every request gets an id: a sane incoming `X-Request-ID` (from a proxy or a load balancer) or a new
one. It is returned as `X-Request-ID` and added to every JSON line logged while the request runs, so
an error's traceback and its request line share it. Imports nothing of the apps: LOGGING loads this
module before they are ready.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import re
import sys
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from django.utils.functional import empty

from llm import request_ids

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
logger = logging.getLogger("llm.requests")

# What a proxy's or a tracer's id looks like (UUIDs, hex, base64-ish); anything else is replaced.
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,127}")
# A record's own attributes; any other attribute came through `extra=` and becomes a JSON field.
RECORD_ATTRIBUTES = {*vars(logging.makeLogRecord({})), "message", "asctime", "request"}


class JSONFormatter(logging.Formatter):
    """time, level, logger, message, request_id, the record's extra fields, and exception (the
    traceback) when there is one. ASCII-only JSON: a lone surrogate or a newline in a path cannot
    break the line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if request_id := request_id_var.get():
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception_type"] = record.exc_info[0].__name__ if record.exc_info[0] else ""
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class QueuedStreamHandler(logging.handlers.QueueHandler):
    """The console handler (standard error by default) whose write happens on a thread of its own.

    On the ASGI worker's event loop (core/asgi.py) a write to stderr per request let go of the GIL
    and stalled the loop while the row writer's thread held it. Here the caller only formats the
    record (in its own context: the JSON line's request_id is a context variable) and queues the
    line; a QueueListener thread writes it. The queue is drained at exit (logging.shutdown closes
    every handler) and made anew in a forked child (gunicorn's workers), where the parent's
    listener thread does not run."""

    def __init__(self, stream=None) -> None:
        super().__init__(queue.SimpleQueue())
        self.target = LineWriter(stream if stream is not None else sys.stderr)
        self.listener: logging.handlers.QueueListener | None = None
        self.start()
        _queued_handlers.add(self)

    def start(self) -> None:
        self.listener = logging.handlers.QueueListener(self.queue, self.target)
        self.listener.start()

    def prepare(self, record: logging.LogRecord) -> str:  # type: ignore[override]
        # The formatted line is all the listener needs: no copy of the record (as the base class
        # makes) on the caller's thread.
        return self.format(record)

    def emit(self, record: logging.LogRecord) -> None:
        if self.listener is None:  # closed (a reconfiguration, the interpreter's exit): write here
            self.target.handle(self.prepare(record))
        else:
            super().emit(record)

    def flush(self) -> None:
        # Waits until the listener wrote every line queued so far: stop() writes up to its sentinel;
        # a line queued meanwhile stays in the queue for the next listener.
        if self.listener is not None:
            self.listener.stop()
            self.start()
        self.target.flush()

    def close(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.stop()
        self.target.flush()
        super().close()


class LineWriter(logging.StreamHandler):
    """Writes QueuedStreamHandler's lines, formatted already, to the stream."""

    def emit(self, record) -> None:  # a str, from QueuedStreamHandler.prepare
        try:
            self.stream.write(record + self.terminator)
            self.flush()
        except (OSError, ValueError):  # a closed or broken stream: logging's own report, as StreamHandler
            self.handleError(logging.makeLogRecord({"msg": record}))


_queued_handlers: weakref.WeakSet[QueuedStreamHandler] = weakref.WeakSet()


def _restart_after_fork() -> None:
    # The child has the parent's queue (with any line not yet written) but not its thread.
    for handler in list(_queued_handlers):
        if handler.listener is not None:
            handler.queue = queue.SimpleQueue()
            handler.start()


os.register_at_fork(after_in_child=_restart_after_fork)


class RequestLogMiddleware:
    """Outermost middleware: gives the request its id, and logs one line when the answer is ready
    (for a streamed answer, when its headers are: `duration_ms` is the time to the first byte)."""

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if REQUEST_ID.fullmatch(incoming) else request_ids.uuid4().hex
        request.request_id = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            response["X-Request-ID"] = request_id
            duration_ms = round((time.perf_counter() - started) * 1000, 1)
            caller = who(request)
            fields = {
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": duration_ms,
                **caller,
            }
            logger.info(
                "%s %s %s %.1f ms%s",
                request.method,
                request.path,
                response.status_code,
                duration_ms,
                "".join(f" {key}={value}" for key, value in caller.items()),
                extra=fields,
            )
            return response
        finally:
            request_id_var.reset(token)


def who(request) -> dict[str, str]:
    """The API key's name or the user's name, when the request already knows it: never a query of
    its own (a session the view did not read stays unread)."""
    key = getattr(request, "auth", None)  # DRF puts the authenticated API key here
    if key is not None and getattr(key, "name", None):
        return {"api_key": key.name}
    user = request.__dict__.get("user")
    if user is None:
        return {}
    wrapped = getattr(user, "_wrapped", user)  # the lazy user of AuthenticationMiddleware
    if wrapped is empty or not getattr(wrapped, "is_authenticated", False):
        return {}
    return {"user": wrapped.get_username()}
