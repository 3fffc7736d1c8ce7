"""The ASGI application `make run` serves (gunicorn with uvicorn workers, core/gunicorn.conf.py).

Django's own ASGI handler runs each middleware of a sync stack in a thread hop of its own and
gives every request a new thread (and so, on PostgreSQL, a new connection). This handler instead
runs the whole sync stack, middleware and view, in one hop to a fixed pool of THREADS threads
per worker, as gunicorn's gthread workers did: pages, the API and ingest keep their persistent
connections and cost what they cost under WSGI. What the event loop adds is for views that wait
on the network: a view may answer a `core.deferred.DeferredResponse`, whose slow part (the proxy's
call to the LLM vendor) is awaited on the loop, so that a call in flight holds no thread.

A prompt that this process can admit from memory alone (llm.api.prompt.fast_prompt: cached key,
rate limit and budgets) skips the thread hop and the sync stack altogether: it is served on the
loop behind only the outer middleware that touch no database (the request log line and its
X-Request-ID, the security headers; FAST_MIDDLEWARE), so its answer carries the same headers and
the same log line as the ordinary path's. Any other prompt takes the ordinary path.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import io
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import aclosing
from operator import attrgetter

import django
from django.conf import settings
from django.core import signals
from django.core.exceptions import DisallowedHost, RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.core.handlers.exception import convert_exception_to_response
from django.db import DEFAULT_DB_ALIAS, DatabaseError, close_old_connections, connection, connections
from django.http import FileResponse
from django.urls import get_resolver, set_script_prefix
from django.utils.module_loading import import_string

from core.deferred import REQUEST_FLAG, DeferredResponse, RelayResponse

logger = logging.getLogger(__name__)
# Threads per worker process for Django's sync code (pages, the API, ingest, the proxy's checks and
# writes): what gthread's --threads 8 was. A prompt waiting on its vendor holds none.
THREADS = 8
# Bytes gathered from a sync streaming response (CSV export) before one send.
SYNC_STREAM_BATCH_BYTES = 64 * 1024
# The middleware a fast-path prompt passes through: those above the first one that may touch the
# database (settings.MIDDLEWARE's order), run on the loop around the deferred answer.
FAST_MIDDLEWARE_END = "llm.middleware.FriendlyErrorsMiddleware"
# The collector's thresholds in a worker (settle_garbage_collector): Python's (700, 10, 10) but for
# the last, the middle-generation collections between two full ones.
GC_THRESHOLDS = (700, 10, 100)


class ObservatoryASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self.executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="django")
        # The rows of deferred calls are written by one thread of their own: they neither wait
        # behind pages in the pool nor contend with each other for the database (on SQLite, 16
        # writers backing off from each other's locks wrote 40 rows a second).
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="django-writer")
        self.rollups = RollUpThread() if connections[DEFAULT_DB_ALIAS].vendor == "postgresql" else None
        self.loop_writer = None
        self.fast_chain = fast_middleware_chain()
        # Imported here: the view module needs django.setup(), which runs below.
        from llm.api.prompt import FAST_PATHS, fast_prompt, stale_fast_caches

        self.fast_paths = FAST_PATHS
        self.fast_prompt = fast_prompt
        self.stale_fast_caches = stale_fast_caches
        # The refills of the fast path's caches under way, by name (one at a time each).
        self.refills: dict[str, asyncio.Future] = {}

    async def run_sync(self, function, *args):
        """`function(*args)` in one of the pool's threads (where the ORM may be used)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(function, *args))

    async def run_write(self, function, *args):
        """`function(*args)` in the writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self.writer, functools.partial(function, *args))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self.lifespan(receive, send)
        if scope["type"] != "http":
            raise ValueError(f"Only HTTP is served, not {scope['type']}.")
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return None
        placeholder = final = None
        try:
            response = await self.respond_fast_or_refill(scope, body_file) if scope["path"] in self.fast_paths else None
            if response is None:
                response = await self.run_sync(self.respond, scope, body_file)
            if isinstance(response, DeferredResponse):
                placeholder = response
                response = final = await placeholder.resolve(self.run_write)
            if isinstance(response, RelayResponse):
                await self.send_relay(response, send, receive, placeholder)
            elif response.streaming:
                await self.send_sync_stream(response, send)
            else:
                await self.send_response(response, send)
        finally:
            body_file.close()
            if placeholder is not None:
                # Its request line, now that the answer is sent: no caller waits for the line to be
                # written (None: resolve raised, and the server answers 500).
                placeholder.finished(final)
        if placeholder is not None:
            # Made on the loop, it holds nothing of a pool thread's (no cursor, no file): closed here,
            # without a third hop per prompt. The pool thread that ran its sync half checks its
            # connection at its next request_started, as Django does at both ends of a request.
            response.close()
        else:
            # request_finished: closes the thread's connection if it is too old or broken, as under
            # WSGI; a sync stream's closers (a cursor's) belong to a pool thread too.
            await self.run_sync(response.close)
        return None

    def respond(self, scope, body_file):
        """The sync half, in a pool thread: request_started, middleware and view."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            return error_response
        setattr(request, REQUEST_FLAG, True)
        response = self.get_response(request)
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        return response

    async def respond_fast_or_refill(self, scope, body_file):
        """respond_fast(); when it misses for a cache gone stale (a key's, the budgets', the prices'),
        those are filled again in a pool thread, once for all the prompts waiting on them, and the
        prompt tries the fast path again."""
        response = self.respond_fast(scope, body_file)
        if response is not None:
            return response
        authorization = next((value for name, value in scope["headers"] if name.lower() == b"authorization"), b"")
        stale = self.stale_fast_caches(authorization.decode("latin-1"))
        if not stale:
            return None
        for name, refill in stale.items():
            future = self.refills.get(name)
            if future is None:
                future = self.refills[name] = asyncio.ensure_future(self.run_sync(refill))
                future.add_done_callback(functools.partial(self.refilled, name))
            try:
                await asyncio.shield(future)
            except Exception:  # noqa: BLE001 - the ordinary path meets the same error and answers it
                return None
        return self.respond_fast(scope, body_file)

    def refilled(self, name: str, future: asyncio.Future) -> None:
        self.refills.pop(name, None)
        if not future.cancelled():
            future.exception()  # retrieved: a failed refill is the ordinary path's to answer

    def respond_fast(self, scope, body_file):
        """A prompt's answer made on the loop (a DeferredResponse through the middleware above
        FAST_MIDDLEWARE_END), or None for the ordinary path, which then reads the body afresh."""
        size = body_file.seek(0, io.SEEK_END)
        body_file.seek(0)
        if settings.DATA_UPLOAD_MAX_MEMORY_SIZE is not None and size > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            return None  # the ordinary path refuses it
        # A copy: a request closes the stream it has read, and body_file may yet serve the other path.
        request, _ = self.create_request(scope, io.BytesIO(body_file.read()))
        body_file.seek(0)
        # SecurityMiddleware would redirect a plain-HTTP request instead, and CommonMiddleware
        # refuses a Host not in ALLOWED_HOSTS: the ordinary path does both.
        eligible = (
            request is not None and allowed_host(request) and (request.is_secure() or not settings.SECURE_SSL_REDIRECT)
        )
        deferred = self.fast_prompt(request) if eligible else None
        if deferred is None:
            return None
        request.fast_response = deferred
        logger.debug("%s %s served on the event loop", request.method, request.path)
        return self.fast_chain(request)

    async def warm_up(self) -> None:
        """What the first requests of a new worker would otherwise pay together, before the worker
        takes any: importing every view (the URLconf), opening each pool thread's database
        connection, and the vendors' SDKs and clients (the first prompts of a cold worker imported
        the SDK's modules, ~0.6 s). A worker cold-started under a thousand prompts kept them all
        waiting ~3 s."""
        await self.run_sync(lambda: get_resolver().url_patterns)
        open_vendor_clients()
        await asyncio.gather(
            *(self.run_sync(open_connection, barrier) for barrier in [threading.Barrier(THREADS)] * THREADS)
        )

    async def start_loop_writer(self) -> None:
        """The proxy's rows from now on written on this loop (llm/loop_writer.py, PostgreSQL), over
        a connection opened now; a database that is down is the first rows' problem."""
        from llm.loop_writer import LoopRowWriter
        from llm.proxy import write_rows_on_loop_with

        self.loop_writer = LoopRowWriter()
        try:
            await self.loop_writer.connect()
        except Exception:  # noqa: BLE001 - connected again by the first rows
            logger.warning("The event loop's row writer could not connect at start-up", exc_info=True)
        write_rows_on_loop_with(self.loop_writer)

    async def stop_loop_writer(self) -> None:
        from llm.proxy import write_rows_on_loop_with

        writer, self.loop_writer = self.loop_writer, None
        if writer is not None:
            write_rows_on_loop_with(None)
            await writer.close()

    async def send_relay(self, response: RelayResponse, send, receive, placeholder: DeferredResponse | None) -> None:
        """Relay an async stream; when the client leaves, close the source at once so that it
        finishes its own way (the proxy reads the rest of the answer and logs the call). The
        request line of a stream is written once its headers are sent."""
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers(response)})
        if placeholder is not None:
            placeholder.finished(response)
        gone = asyncio.Event()
        watcher = asyncio.create_task(wait_for_disconnect(receive, gone))
        try:
            async with aclosing(response.source) as source:
                async for part in source:
                    if gone.is_set():
                        break
                    await send({"type": "http.response.body", "body": response.make_bytes(part), "more_body": True})
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()

    async def send_sync_stream(self, response, send) -> None:
        """A sync iterator (CSV export, static files) stays in one thread: a database cursor it
        holds belongs to that thread's connection."""
        loop = asyncio.get_running_loop()
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers(response)})

        def pump() -> None:
            batch: list[bytes] = []
            size = 0
            for part in response:
                batch.append(part)
                size += len(part)
                if size >= SYNC_STREAM_BATCH_BYTES:
                    body = b"".join(batch)
                    asyncio.run_coroutine_threadsafe(send_part(send, body), loop).result()
                    batch, size = [], 0
            if batch:
                asyncio.run_coroutine_threadsafe(send_part(send, b"".join(batch)), loop).result()

        await self.run_sync(pump)
        await send({"type": "http.response.body", "body": b""})

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.warm_up()
                if self.rollups is not None:
                    self.rollups.start()
                    # After the roll-up thread: rows committed on the loop hand their roll-up to it.
                    await self.start_loop_writer()
                settle_garbage_collector()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # What this worker admitted against the rate limits and has not yet added to the
                # shared rows (llm/throttles.py): uvicorn ends a worker by re-raising SIGTERM, past atexit.
                await self.run_sync(flush_rate_limits)
                await close_vendor_clients()
                await self.stop_loop_writer()
                self.executor.shutdown(wait=False)
                self.writer.shutdown(wait=True)
                if self.rollups is not None:
                    self.rollups.shutdown()  # after the writer, whose last rows may ask for one
                await send({"type": "lifespan.shutdown.complete"})
                return


class RollUpThread:
    """The roll-ups after writes (llm.rollups.after_write) of this worker, in a thread of their own,
    so that no row writer, and no call waiting for its row, waits for one. One at a time, and at
    most one more queued: a roll-up asked for while one waits to start is dropped, as the waiting
    one will add those rows too (everything above the watermark when it starts).

    PostgreSQL only: SQLite has one writer at a time, and a roll-up holds its lock (up to 0.5 s),
    so the row writer would only wait on the database instead, polling for the lock."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="django-rollups")
        self.lock = threading.Lock()
        self.queued: Future | None = None

    def start(self) -> None:
        """From now on this process's roll-ups after writes run here (a worker's lifespan startup:
        a handler made without serving, as tests make one, changes nothing)."""
        # Imported here: the models it imports need django.setup(), which runs below.
        from llm.rollups import run_after_writes_with

        run_after_writes_with(self.submit)

    def submit(self, roll_up: Callable[[], None]) -> None:
        with self.lock:
            if self.queued is not None and not (self.queued.running() or self.queued.done()):
                return
            try:
                self.queued = self.executor.submit(run_in_own_thread, roll_up)
            except RuntimeError:
                pass  # shutting down: the next roll-up (check_alerts, another worker's) adds these rows

    def shutdown(self) -> None:
        """Roll-ups after writes back in the writing thread; waits for the one running or queued."""
        from llm.rollups import run_after_writes_with

        run_after_writes_with(None)
        self.executor.shutdown(wait=True)


def run_in_own_thread(function: Callable[[], None]) -> None:
    """`function()` with a connection checked as a request's is at its start and end (Django's
    request signals do that in the pool's threads): one gone bad, or too old, is closed."""
    close_old_connections()
    try:
        function()
    finally:
        close_old_connections()


def fast_middleware_chain():
    """settings.MIDDLEWARE down to FAST_MIDDLEWARE_END, around a handler answering the request's
    `fast_response`."""
    names = settings.MIDDLEWARE[: settings.MIDDLEWARE.index(FAST_MIDDLEWARE_END)]
    # Each layer turns an exception into Django's error answer, as load_middleware does, so that
    # the outer ones (the request-log line, X-Request-ID) still see a response.
    handler = convert_exception_to_response(attrgetter("fast_response"))
    for name in reversed(names):
        handler = convert_exception_to_response(import_string(name)(handler))
    return handler


def allowed_host(request) -> bool:
    try:
        request.get_host()
    except DisallowedHost:
        return False
    return True


def settle_garbage_collector() -> None:
    """At the end of a worker's start-up: what it made to start (modules, classes, the URLconf, the
    SDKs' clients, ~140,000 objects) is left out of the collector's work from now on (gc.freeze),
    and a full collection waits for GC_THRESHOLDS' 100 middle-generation collections. A burst of a
    thousand calls keeps their objects alive for the seconds the vendor takes, long enough to reach
    the oldest generation, and each full collection then walked the whole heap again: 145-360 ms of
    a worker's CPU per 1,000-prompt burst, the event loop stalled meanwhile (probe of 6 bursts, 2
    workers: GC CPU 0.51 s per plain burst, 0.67 s per streamed one; frozen 0.20 / 0.34; with
    GC_THRESHOLDS too 0.11 / 0.15). Objects made from now on are collected as before."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def flush_rate_limits() -> None:
    from llm import throttles

    throttles.flush_at_exit()


def open_vendor_clients() -> None:
    # Imported here: the models it imports need django.setup(), which runs below.
    from llm.providers.chat_completions import open_async_clients

    try:
        open_async_clients()
    except Exception:  # noqa: BLE001 - a client that cannot be made now is the first prompt's error to report
        logger.warning("The vendors' clients could not be made at start-up", exc_info=True)


async def close_vendor_clients() -> None:
    # Imported here: the models it imports need django.setup(), which runs below.
    from llm.providers.chat_completions import close_async_clients

    await close_async_clients()


def open_connection(barrier: threading.Barrier) -> None:
    """Open this pool thread's connection (the barrier holds each thread until all have one task,
    so that every thread gets one); a database that is down is the first request's problem."""
    try:
        barrier.wait(timeout=5)
    except threading.BrokenBarrierError:
        pass
    try:
        connection.ensure_connection()
    except DatabaseError:
        pass


async def send_part(send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def wait_for_disconnect(receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


def headers(response) -> list[tuple[bytes, bytes]]:
    """The response's headers and cookies as ASGI wants them (as Django's send_response does)."""
    pairs = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]
    pairs += [(b"Set-Cookie", cookie.output(header="").encode("ascii").strip()) for cookie in response.cookies.values()]
    return pairs


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
django.setup(set_prefix=False)
application = ObservatoryASGIHandler()
