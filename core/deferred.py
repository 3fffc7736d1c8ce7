"""Answers that finish on the ASGI worker's event loop (core/asgi.py).

A sync view runs in one of the worker's threads with the whole middleware chain, as under WSGI. A
view whose slow part is waiting on the network (the proxy's call to the LLM vendor) answers a
`DeferredResponse` instead of waiting in that thread: the handler then awaits `resolve()` on the
loop, where a thousand waiting calls cost memory, not threads, and sends the final response with
the headers and cookies the middleware set on the deferred one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils.cache import patch_vary_headers

logger = logging.getLogger(__name__)
# Runs a sync function (one that may use the ORM) in one of the worker's threads.
RunSync = Callable[..., Awaitable[Any]]
# Set by the ASGI handler on each request it serves: a view may then answer a DeferredResponse.
REQUEST_FLAG = "completes_deferred"
# Headers that belong to the final body, not to the deferred placeholder.
BODY_HEADERS = {"content-type", "content-length"}


def can_defer(request: HttpRequest) -> bool:
    return getattr(request, REQUEST_FLAG, False)


class DeferredResponse(HttpResponse):
    """A placeholder the middleware sees; `complete(run_sync)` answers the real response."""

    def __init__(
        self, complete: Callable[[RunSync], Awaitable[HttpResponseBase]], request: HttpRequest | None = None
    ) -> None:
        super().__init__(content_type="application/json")
        self._complete = complete
        self._request = request
        # Called with the final response by `finished()` (None: resolve raised, a 500): what the
        # middleware sees is this placeholder, whose 200 says nothing of the call's outcome
        # (llm.logging.RequestLogMiddleware writes its request line here).
        self.on_resolved: list[Callable[[HttpResponseBase | None], None]] = []

    async def resolve(self, run_sync: RunSync) -> HttpResponseBase:
        """The final response; the handler calls `finished()` once it is sent."""
        return await self._resolve(run_sync)

    def finished(self, final: HttpResponseBase | None) -> None:
        """The answer `final` is sent (a stream's headers are), or None: resolve() raised. Runs the
        on_resolved callbacks, once."""
        callbacks, self.on_resolved = self.on_resolved, []
        for callback in callbacks:
            try:
                callback(final)
            except Exception:  # the answer is sent: a failing line must not close the connection
                logger.exception("A callback of a deferred answer failed")

    async def _resolve(self, run_sync: RunSync) -> HttpResponseBase:
        try:
            final = await self._complete(run_sync)
        except Exception as exc:
            final = self._unavailable(exc)
            if final is None:
                raise
        # Header by header as the middleware set them on the placeholder, already checked and encoded
        # there: copied as they are stored ({lower-cased name: (name, value)}, Django's ResponseHeaders)
        # rather than set again one by one (~3 us each, ten a prompt).
        final_headers = final.headers._store
        for name, pair in self.headers._store.items():
            if name in BODY_HEADERS:
                continue
            if name not in final_headers:
                final_headers[name] = pair
            elif name == "vary":
                patch_vary_headers(final, [part.strip() for part in pair[1].split(",")])
        for key, morsel in self.cookies.items():
            final.cookies.setdefault(key, morsel)
        if not final.streaming and not final.has_header("Content-Length"):
            # As CommonMiddleware gives any other answer (it saw only this placeholder): the client
            # knows where the answer ends, and the server sends it in one write (core/workers.py).
            final["Content-Length"] = str(len(final.content))
        final._resource_closers.extend(self._resource_closers)
        self._resource_closers = []
        return final

    def _unavailable(self, exc: Exception) -> HttpResponseBase | None:
        """The database lost while the call finished (its row could not be written): the 503 with
        Retry-After, and the one outage line, that the middleware gives any request then (the
        middleware saw only this placeholder); None for any other error (a 500)."""
        # Imported here: this module is imported before django.setup() (core/asgi.py).
        from llm.middleware import note_outage, unavailable_response
        from llm.outage import is_database_unavailable

        if self._request is None or not is_database_unavailable(exc):
            return None
        note_outage(self._request, exc)
        return unavailable_response(self._request)


class RelayResponse(StreamingHttpResponse):
    """A streamed answer from an async generator that the handler closes itself when the client
    leaves (`aclose()` runs the generator's cleanup at once, not when it is garbage collected)."""

    def __init__(self, source: AsyncIterator[str], **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self.source = source
