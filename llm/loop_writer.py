"""The proxy's rows written on the ASGI worker's event loop, on PostgreSQL.

A proxied call answers only once its row is stored ("logs the call, answers"). Through the ORM that
write is a hop to the writer thread and back, Django's cursor wrappers, and psycopg quoting every
value into the statement's text (client-side binding): ~13 % of a worker's CPU per prompt, py-spy,
16 clients. Here the same INSERT … ON CONFLICT DO NOTHING RETURNING (llm.row_insert.ainsert_new)
goes over one psycopg AsyncConnection per worker, in autocommit, awaited on the loop, with the
values bound by the server.

Whatever this path cannot do takes the ORM path, unchanged, for the rows concerned: a price
table gone stale (reading it is a query), a request_id stored already (the ORM path answers the
stored row), any database error (the ORM path raises what the rest of the app answers, a 503 with
Retry-After while the database is down, and writes the row once it is back). After an error the
connection is dropped and this path rests for RETRY_SECONDS, then connects afresh.

SQLite keeps the ORM path: one writer at a time, whose turn the writer thread already queues for.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from django.core.exceptions import SynchronousOnlyOperation
from django.db import DEFAULT_DB_ALIAS, connections

from llm.models import LLMRequestLog, cached_price_table, calls_recorded
from llm.row_insert import RowShape, ainsert_new, as_uuid

logger = logging.getLogger(__name__)

# After a database error, the rows go through the ORM path for this long before a new connection is tried.
RETRY_SECONDS = 1.0
# Seconds to wait for a connection; the ORM path waits for its own after that.
CONNECT_TIMEOUT_SECONDS = 5
# The INSERT of a batch size written this many times is prepared on the server (psycopg's default;
# Django turns preparing off for its own connections, for poolers in transaction mode, which the
# ingest's staging table does not support either: docs/deployment.md). The server then skips
# parsing and planning it: 0.24 ms off a proxied prompt's overhead p50 (interleaved A/B).
PREPARE_THRESHOLD = 5
# What Django's connection parameters hold for its own cursors and adapters, not for psycopg.connect
# here: the rows' values are bound by the server with psycopg's own adapters.
DJANGO_ONLY_PARAMETERS = ("cursor_factory", "context")
# The rows made from their fields by position, without Model.__init__'s per-field loop and signals
# (~2 % of a worker's CPU with one client, py-spy): the same unsaved LLMRequestLog.
ROW_SHAPE = RowShape(LLMRequestLog)


class LoopRowWriter:
    """One worker's connection for the proxy's rows; used by one event loop, one batch at a time
    (llm.proxy.RowBatcher drains one batch after another)."""

    def __init__(self, alias: str = DEFAULT_DB_ALIAS) -> None:
        # A connection object of Django's that is never opened: the SQL dialect, the values'
        # preparation and the connection parameters. Made here, not per task on the loop.
        self.database = connections.create_connection(alias)
        self.connection: psycopg.AsyncConnection | None = None
        self.resting_until = 0.0

    async def connect(self) -> psycopg.AsyncConnection:
        if self.connection is None or self.connection.closed:
            parameters = self.database.get_connection_params()
            for name in DJANGO_ONLY_PARAMETERS:
                parameters.pop(name, None)
            parameters.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
            if "prepare_threshold" not in self.database.settings_dict["OPTIONS"]:
                parameters["prepare_threshold"] = PREPARE_THRESHOLD  # unless the settings say otherwise
            self.connection = await psycopg.AsyncConnection.connect(**parameters, autocommit=True)
        return self.connection

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            await connection.close()

    async def store(self, rows: list[dict[str, Any]]) -> list[LLMRequestLog | None] | None:
        """Store the calls' rows (LLMRequestLog fields, as `LLMRequestLog.objects.record` takes):
        per row its stored log, or None where the ORM path must store it (its request_id stored
        already); None for the whole batch when this path cannot write it now."""
        if time.monotonic() < self.resting_until:
            return None
        try:
            prices = cached_price_table()
        except SynchronousOnlyOperation:
            return None  # gone stale: the ORM path reads it again, in its thread
        logs = [ROW_SHAPE.row(fields) for fields in rows]
        for log in logs:
            log.prepare_for_storage(prices)
            log.request_id = as_uuid(log.request_id)
        if len({log.request_id for log in logs}) < len(logs):
            return None  # the same call twice: the ORM path's record_many counts it
        try:
            created = await ainsert_new(LLMRequestLog, logs, self.database, await self.connect())
        except Exception:  # noqa: BLE001 - any failure: the ORM path writes these rows or raises its own error
            logger.warning("The event loop's row writer failed; the ORM path writes the rows", exc_info=True)
            self.resting_until = time.monotonic() + RETRY_SECONDS
            await self._drop()
            return None
        if created:
            announce(created)
        return [log if log.pk is not None else None for log in logs]

    async def _drop(self) -> None:
        try:
            await self.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close too; it is dropped anyway
            self.connection = None


def announce(created: int) -> None:
    """calls_recorded for rows committed on the loop (autocommit: committed as the INSERT answers).
    Its receiver (the roll-up after a write) hands its work to the worker's roll-up thread; a
    receiver's failure is logged, as the ORM path's on_commit(robust=True) does."""
    for receiver, outcome in calls_recorded.send_robust(sender=LLMRequestLog, created=created):
        if isinstance(outcome, Exception):
            logger.error("calls_recorded receiver %r failed", receiver, exc_info=outcome)
