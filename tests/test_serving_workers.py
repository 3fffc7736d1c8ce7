"""The worker's HTTP protocol (core/workers.py): an answer of known length leaves in one write, head
and body together; a streamed answer's head leaves at once, before its first part. Driven through
uvicorn's own protocol, its parser and request/response cycle, with a transport that records what
would reach the socket."""

from __future__ import annotations

import asyncio

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from core.workers import OneWriteCycle, OneWriteProtocol, Worker

REQUEST = b"GET /answer HTTP/1.1\r\nHost: example.com\r\n\r\n"


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data) -> None:
        if self.closed:  # as uvloop's transport (the workers' loop) answers a write after close
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def serve_once(app, request: bytes = REQUEST, gone_before_body: bool = False) -> tuple[list[bytes], type]:
    """The writes one request's answer makes, and the class of its cycle; `gone_before_body`: the
    client leaves once the head is sent (the app's send of the body waits for that)."""

    async def scenario():
        config = Config(app=app, http=OneWriteProtocol, lifespan="off", log_config=None)
        config.load()
        protocol = OneWriteProtocol(config=config, server_state=ServerState(), app_state={})
        transport = RecordingTransport()
        protocol.connection_made(transport)
        protocol.data_received(request)
        cycle = protocol.cycle
        if gone_before_body:
            while not cycle.response_started:
                await asyncio.sleep(0)
            transport.close()
            protocol.connection_lost(None)
            await asyncio.sleep(0.1)  # the app sends its body to the gone client, and ends
        for _ in range(100):
            if cycle.response_complete or cycle.disconnected:
                break
            await asyncio.sleep(0.01)
        protocol.connection_lost(None)
        return transport.writes, type(cycle)

    return asyncio.run(scenario())


def test_the_worker_serves_with_the_one_write_protocol():
    assert Worker.CONFIG_KWARGS["http"] is OneWriteProtocol


def test_an_answer_of_known_length_is_one_write():
    body = b'{"answer": "Paris."}'

    async def app(scope, receive, send):
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    writes, cycle_class = serve_once(app)
    assert cycle_class is OneWriteCycle
    [write] = writes
    head, _, sent_body = write.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 20" in head
    assert sent_body == body


def test_a_long_answer_sent_in_parts_has_its_head_with_the_first_part():
    parts = [b"a" * 10, b"b" * 10, b"c" * 5]

    async def app(scope, receive, send):
        headers = [(b"content-length", b"25")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < len(parts) - 1})

    writes, _ = serve_once(app)
    assert len(writes) == 3
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n" + parts[0])
    assert writes[1:] == parts[1:]


def test_a_streamed_answer_has_its_head_written_before_its_first_part():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"event: start\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    writes, _ = serve_once(app)
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in writes[0]
    assert writes[1] == b"e\r\nevent: start\n\n\r\n"
    assert writes[2] == b"0\r\n\r\n"


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_an_empty_body_still_sends_the_head(method):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    writes, _ = serve_once(app, f"{method} / HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
    [write] = writes
    assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b"content-length: 0\r\n\r\n")


@pytest.mark.parametrize(
    "request_line",
    [b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"HEAD / HTTP/1.0\r\n\r\n"],
)
def test_an_answer_to_head_on_a_closing_connection_is_sent_before_it_closes(request_line):
    """HTTP/1.0 health checks (HAProxy's httpchk) and Connection: close: uvicorn closes right after
    the head, with no body to wait for."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"42")]})
        await send({"type": "http.response.body", "body": b""})

    writes, _ = serve_once(app, request_line)
    [write] = writes
    assert write.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 42" in write


def test_an_app_failing_after_the_head_still_sends_the_head_then_closes():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        raise RuntimeError("failed before its body")

    writes, _ = serve_once(app)
    [write] = writes  # as stock uvicorn: the head, then the connection closed (no body)
    assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b"\r\n\r\n")


def test_a_client_gone_before_the_body_gets_nothing_and_the_app_no_error():
    finished = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await asyncio.sleep(0.05)  # the client leaves meanwhile
        await send({"type": "http.response.body", "body": b"ok"})
        finished.append(True)

    writes, _ = serve_once(app, gone_before_body=True)
    assert writes == [] and finished == [True]
