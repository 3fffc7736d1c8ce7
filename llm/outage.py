"""What a lost database looks like, for llm/middleware.py (503 instead of 500), llm/health.py and
the logging configuration (one line per request instead of a traceback). Only Django's database
errors and psycopg's are imported here: LOGGING loads this module before the apps are ready."""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError

try:  # Django wraps the driver's errors, but not on every path (closing a broken cursor).
    from psycopg import InterfaceError as PsycopgInterfaceError
    from psycopg import OperationalError as PsycopgOperationalError
except ImportError:  # pragma: no cover - psycopg is in requirements.txt
    PsycopgInterfaceError = PsycopgOperationalError = OperationalError

# "The database cannot answer now" (down, restarting, refusing connections, locked), not "this
# request is wrong": the client should try again later.
UNAVAILABLE_ERRORS = (OperationalError, InterfaceError, PsycopgOperationalError, PsycopgInterfaceError)
RETRY_AFTER_SECONDS = 5


def is_database_unavailable(exception: BaseException | None) -> bool:
    """The exception, or one it was raised from (Django wraps the driver's), is a lost database."""
    for _ in range(5):
        if exception is None:
            return False
        if isinstance(exception, UNAVAILABLE_ERRORS):
            return True
        exception = exception.__cause__ or exception.__context__
    return False


def describe(exception: BaseException) -> str:
    """The error on one short line (psycopg's messages span several)."""
    return f"{type(exception).__name__}: {' '.join(str(exception).split())[:200]}"


class SkipOutageTraceback(logging.Filter):
    """What Django's `django.request` logger says of a request the database failed (a 500 with its
    traceback, or "Service Unavailable") is dropped: llm/middleware.py or llm/health.py has logged
    its one line and marked the request (`database_unavailable`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(getattr(record, "request", None), "database_unavailable", None) is not None:
            return False
        return not (record.exc_info and is_database_unavailable(record.exc_info[1]))
