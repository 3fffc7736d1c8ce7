"""The gunicorn worker `make run` serves with (core/gunicorn.conf.py): uvicorn's, except that an
answer whose length is known leaves in one write, head and body together.

Uvicorn writes the status line and headers as soon as the app sends `http.response.start`, and the
body with the next message: two send() calls, and two wake-ups of the client, for every answer.
On the loopback of this 2-core machine each one costs tens of microseconds (the kernel delivers the
segment inside the sender's call), ~7 % of a worker's CPU per proxied prompt. An answer with a
Content-Length has its body sent right after (Django sends both in one go), so its head is held
until then; a streamed answer (Server-Sent Events, CSV export) has its head written at once, as
before, so that a client sees the headers without waiting for the first part.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn_worker import UvicornWorker


class HeadHeldTransport:
    """The connection's transport, but for what is written while `holding`: kept, and written in
    front of the next write."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.holding = False
        self.held = b""

    def write(self, data: bytes) -> None:
        if self.holding:
            self.held += data
            return
        if self.held:
            data, self.held = self.held + data, b""
        self.transport.write(data)

    def flush(self) -> None:
        if not self.held:
            return
        if self.transport.is_closing():
            self.held = b""  # the client has gone: nothing to send it to
            return
        self.write(b"")

    def close(self) -> None:
        self.flush()  # uvicorn closes a connection that ends (an error after the head, Connection: close)
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, holding the head of an answer of known length until its
    first body message."""

    async def send(self, message: Any) -> None:
        # An answer to HEAD has no body to wait for.
        if message["type"] != "http.response.start" or not has_length(message) or self.scope["method"] == "HEAD":
            await super().send(message)
            if isinstance(self.transport, HeadHeldTransport):
                self.transport.flush()  # a body uvicorn did not write (the client gone): nothing held stays
            return
        if not isinstance(self.transport, HeadHeldTransport):
            self.transport = HeadHeldTransport(self.transport)
        self.transport.holding = True
        try:
            await super().send(message)
        finally:
            self.transport.holding = False


def has_length(message: Any) -> bool:
    return any(name.lower() == b"content-length" for name, _ in message.get("headers", ()))


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, its cycles OneWriteCycles."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn makes each cycle itself (on_headers_complete): it becomes the subclass before
        # its task starts, the only change being send().
        cycle.__class__ = OneWriteCycle
        super()._start_asgi_task(cycle, app)


class Worker(UvicornWorker):
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "http": OneWriteProtocol}
