"""A Groq-compatible HTTP server on 127.0.0.1 for tests: the real `groq` SDK talks to it.

It serves POST /openai/v1/chat/completions and can be told, one request at a time, to answer
normally, stream, be slow, fail with a status code, fail inside a stream, or drop the connection.

It speaks two more dialects of the same chat-completions format, by path (`DIALECTS`), for the
real `cerebras-cloud-sdk` (base URL `base_url`: it posts to /v1/chat/completions; usage and
`time_info` at the top of the answer and of a stream's last chunk) and the real `openai` SDK (base
URL `openai_base_url`: usage with `prompt_tokens_details.cached_tokens`, and in a stream only when
asked, in a last chunk without choices).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Behaviour:
    mode: str = "ok"  # ok | stream | status | stream_error | drop | drop_stream | bad_chunk
    text: str = "Hello from the fake Groq server."
    prompt_tokens: int = 21
    completion_tokens: int = 7
    status: int = 200
    error_message: str = "Something went wrong"
    delay_seconds: float = 0.0
    chunk_delay_seconds: float = 0.0
    chunks: list[str] | None = None
    finish_reason: str = "stop"
    headers: dict[str, str] = field(default_factory=dict)
    # mode "status" with raw_body: that text as the body (a proxy's plain-text error page), not JSON.
    raw_body: str | None = None
    # False: the answer carries no usage at all (some OpenAI-compatible servers).
    usage: bool = True
    cached_tokens: int = 0
    # The vendor's timings in seconds (queue_time, prompt_time, completion_time): Groq's usage,
    # Cerebras' time_info.
    timings: dict[str, float] | None = None


# Path -> dialect. The openai SDK's base URL is OPENAI_PREFIX + "/v1" (it posts to {base}/chat/completions).
OPENAI_PREFIX = "/compatible"
DIALECTS = {
    "/openai/v1/chat/completions": "groq",
    "/v1/chat/completions": "cerebras",
    OPENAI_PREFIX + "/v1/chat/completions": "openai",
}


def usage_for(behaviour: Behaviour, dialect: str) -> dict | None:
    if not behaviour.usage:
        return None
    usage: dict = {
        "prompt_tokens": behaviour.prompt_tokens,
        "completion_tokens": behaviour.completion_tokens,
        "total_tokens": behaviour.prompt_tokens + behaviour.completion_tokens,
    }
    if behaviour.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": behaviour.cached_tokens}
    if dialect == "groq" and behaviour.timings:
        usage.update(behaviour.timings)
    return usage


def dialect_extras(behaviour: Behaviour, dialect: str) -> dict:
    """What a dialect adds at the top of an answer (and of a stream's last chunk)."""
    if dialect == "cerebras":
        return {"system_fingerprint": "fp_fake", **({"time_info": behaviour.timings} if behaviour.timings else {})}
    return {}


class FakeGroq:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self._queue: deque[Behaviour] = deque()
        self.default = Behaviour()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        # Set when a test ends, so a handler still sleeping stops early.
        self.stopping = threading.Event()

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}{OPENAI_PREFIX}/v1"

    def start(self) -> FakeGroq:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        self.stopping.set()
        with self._lock:
            self.requests.clear()
            self._queue.clear()
            self.default = Behaviour()
        self.stopping = threading.Event()

    def will(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests; after them, `default` applies."""
        with self._lock:
            self._queue.extend(behaviours)

    def _next(self, body: dict) -> Behaviour:
        with self._lock:
            self.requests.append(body)
            return self._queue.popleft() if self._queue else self.default

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                body["_authorization"] = self.headers.get("Authorization")
                body["_cookie"] = self.headers.get("Cookie")
                dialect = DIALECTS.get(self.path)
                if dialect is None:
                    return self._json(404, {"error": {"message": "Unknown path", "type": "not_found"}})
                body["_dialect"] = dialect
                behaviour = fake._next(body)
                stopping = fake.stopping
                if behaviour.delay_seconds:
                    stopping.wait(behaviour.delay_seconds)
                if behaviour.mode == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return None
                if behaviour.mode == "status" and behaviour.raw_body is not None:
                    return self._text(behaviour.status, behaviour.raw_body, behaviour.headers)
                if behaviour.mode == "status":
                    return self._json(
                        behaviour.status,
                        {"error": {"message": behaviour.error_message, "type": "api_error"}},
                        behaviour.headers,
                    )
                if body.get("stream"):
                    return self._stream(body, behaviour, stopping, dialect)
                return self._json(200, self._completion(body, behaviour, dialect), behaviour.headers)

            def _completion(self, body, behaviour, dialect):
                answer = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": behaviour.text},
                            "finish_reason": behaviour.finish_reason,
                            "logprobs": None,
                        }
                    ],
                    "usage": usage_for(behaviour, dialect),
                    **dialect_extras(behaviour, dialect),
                }
                return answer

            def _json(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _text(self, status, text, headers):
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body, behaviour, stopping, dialect):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunks = behaviour.chunks or [word + " " for word in behaviour.text.split(" ")]
                chunks[-1] = chunks[-1].rstrip(" ")

                def send(payload):
                    data = f"data: {payload}\n\n".encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()

                base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": body.get("model")}
                if dialect == "cerebras":
                    base["system_fingerprint"] = "fp_fake"  # on every chunk, as Cerebras sends it
                try:
                    for index, chunk in enumerate(chunks):
                        if behaviour.mode == "drop_stream" and index == len(chunks) // 2:
                            self.close_connection = True
                            self.connection.close()
                            return
                        if behaviour.mode == "stream_error" and index == len(chunks) // 2:
                            error = {"error": {"message": behaviour.error_message, "type": "internal_server_error"}}
                            send(json.dumps(error))
                            break
                        if behaviour.mode == "bad_chunk" and index == len(chunks) // 2:
                            send('{"choices": [{"delta": {"content": "cut')  # no JSON: the vendor's fault
                            break
                        delta = {"content": chunk} if index else {"role": "assistant", "content": chunk}
                        choice = {"index": 0, "delta": delta, "finish_reason": None}
                        send(json.dumps({**base, "choices": [choice], "created": int(time.time())}))
                        if behaviour.chunk_delay_seconds:
                            stopping.wait(behaviour.chunk_delay_seconds)
                    else:
                        usage = usage_for(behaviour, dialect)
                        last = {
                            **base,
                            "created": int(time.time()),
                            "choices": [{"index": 0, "delta": {}, "finish_reason": behaviour.finish_reason}],
                        }
                        if dialect == "groq" and usage:
                            last["x_groq"] = {"id": "req_fake", "usage": usage}
                        if dialect == "cerebras":
                            last.update(dialect_extras(behaviour, dialect), **({"usage": usage} if usage else {}))
                        send(json.dumps(last))
                        asked = (body.get("stream_options") or {}).get("include_usage")
                        if dialect == "openai" and usage and asked:
                            send(json.dumps({**base, "created": int(time.time()), "choices": [], "usage": usage}))
                    send("[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler


class FastFakeGroq(asyncio.Protocol):
    """The same API on asyncio, for the bench: one process holds thousands of slow answers at
    once (the threaded server above spends a thread on each). Every request gets the same
    behaviour: `delay_seconds` before the answer, or, streamed, spread over `chunk_count` chunks.
    Run it with `python -m tests.fake_groq --fast PORT [DELAY_SECONDS]`."""

    delay_seconds = 0.0
    chunk_count = 8
    behaviour = Behaviour()

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].decode("latin-1").lower()
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = json.loads(self.buffer[end + 4 : end + 4 + length] or b"{}")
            self.buffer = self.buffer[end + 4 + length :]
            asyncio.get_running_loop().create_task(self.answer(body))

    async def answer(self, body: dict) -> None:
        behaviour = self.behaviour
        model = body.get("model")
        if not body.get("stream"):
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            payload = json.dumps(_completion(model, behaviour)).encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            self.write(head.encode() + payload)
            return
        self.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        text = behaviour.text
        count = max(1, self.chunk_count)
        size = -(-len(text) // count)
        for index in range(count):
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds / count)
            piece = text[index * size : (index + 1) * size]
            delta = {"content": piece} if index else {"role": "assistant", "content": piece}
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            self.write(_sse_chunk({**_chunk_base(model), "choices": [choice]}))
        self.write(_sse_chunk(_last_chunk(model, behaviour)) + _sse_chunk("[DONE]") + b"0\r\n\r\n")

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)


def _completion(model: str | None, behaviour: Behaviour) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": behaviour.text},
                "finish_reason": behaviour.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(behaviour),
    }


def _usage(behaviour: Behaviour) -> dict:
    return {
        "prompt_tokens": behaviour.prompt_tokens,
        "completion_tokens": behaviour.completion_tokens,
        "total_tokens": behaviour.prompt_tokens + behaviour.completion_tokens,
    }


def _chunk_base(model: str | None) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "created": int(time.time())}


def _last_chunk(model: str | None, behaviour: Behaviour) -> dict:
    return {
        **_chunk_base(model),
        "choices": [{"index": 0, "delta": {}, "finish_reason": behaviour.finish_reason}],
        "x_groq": {"id": "req_fake", "usage": _usage(behaviour)},
    }


def _sse_chunk(payload: dict | str) -> bytes:
    data = f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def serve_fast(port: int, delay_seconds: float = 0.0) -> None:
    """Serve FastFakeGroq on 127.0.0.1:PORT until killed (uvloop when installed)."""
    FastFakeGroq.delay_seconds = delay_seconds

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(FastFakeGroq, "127.0.0.1", port, backlog=4096)
        print(f"Fast fake Groq listening on http://127.0.0.1:{port} (delay {delay_seconds:g} s)", flush=True)
        await server.serve_forever()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


if __name__ == "__main__":
    # A stand-in Groq to try the proxy without a key: python -m tests.fake_groq [PORT]
    # The asyncio one the bench uses: python -m tests.fake_groq --fast PORT [DELAY_SECONDS]
    import sys

    if sys.argv[1:2] == ["--fast"]:
        serve_fast(int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
        sys.exit(0)
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8099
    fake = FakeGroq()
    fake.server.server_close()
    fake.server = ThreadingHTTPServer(("127.0.0.1", port), fake._handler_class())
    print(f"Fake Groq listening on {fake.base_url}", flush=True)
    fake.server.serve_forever()
