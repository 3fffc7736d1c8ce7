"""The app's own log: one line per request (RequestLogMiddleware) and the JSON formatter that
LOG_FORMAT=json selects, one JSON object per line for Loki or any log shipper.

Every request gets an id: a sane incoming `X-Request-ID` (from a proxy or a load balancer) or a new
one. It is returned as `X-Request-ID` and added to every JSON line logged while the request runs, so
an error's traceback and its request line share it. Imports nothing of the apps: LOGGING loads this
module before they are ready.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
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


class RequestLogMiddleware:
    """Outermost middleware: gives the request its id, and logs one line when the answer is ready
    (for a streamed answer, when its headers are: `duration_ms` is the time to the first byte; for
    a deferred one, once its final answer is sent, so that its status is the call's outcome and no
    caller waits for the line: core/asgi.py)."""

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
            later = getattr(response, "on_resolved", None)
            if later is not None:
                # A deferred answer (core/deferred.py, the proxy on the event loop): the line is
                # written when the final answer is known, with its status, not the placeholder's 200.
                later.append(functools.partial(self.log_resolved, request, request_id, started))
            else:
                self.log(request, response.status_code, started)
            return response
        finally:
            request_id_var.reset(token)

    def log_resolved(self, request, request_id: str, started: float, final) -> None:
        token = request_id_var.set(request_id)
        try:
            # No final answer: the deferred call raised, and the server answers 500.
            self.log(request, final.status_code if final is not None else 500, started)
        finally:
            request_id_var.reset(token)

    @staticmethod
    def log(request, status: int, started: float) -> None:
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        caller = who(request)
        fields = {
            "method": request.method,
            "path": request.path,
            "status": status,
            "duration_ms": duration_ms,
            **caller,
        }
        logger.info(
            "%s %s %s %.1f ms%s",
            request.method,
            request.path,
            status,
            duration_ms,
            "".join(f" {key}={value}" for key, value in caller.items()),
            extra=fields,
        )


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
