"""A TCP proxy on 127.0.0.1 for tests of clients that must survive an unreliable server.

It can be started and stopped on the same port (nothing listening in between: connection
refused), and told to swallow answers: the request reaches the server and is handled, but the
client's connection is closed before the answer, as when a network drops after the server
stored something. Every answer the server gave is kept in `answers`, swallowed or not.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # start again on the same port right after a stop
    daemon_threads = True


class FlakyProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.swallow = 0  # how many of the next answers to swallow
        self.answers: list[bytes] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FlakyProxy:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with socket.create_connection(proxy.upstream, timeout=10) as upstream:
                    threading.Thread(target=_pipe, args=(self.request, upstream), daemon=True).start()
                    # The client sends `Connection: close`, so the server closes after answering.
                    chunks = []
                    with contextlib.suppress(OSError):
                        while data := upstream.recv(65536):
                            chunks.append(data)
                answer = b"".join(chunks)
                with proxy._lock:
                    proxy.answers.append(answer)
                    swallow = proxy.swallow > 0
                    proxy.swallow -= int(swallow)
                if not swallow:
                    self.request.sendall(answer)

        server = _Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def answer_bodies(self) -> list[dict]:
        """The JSON bodies of the server's answers, in order."""
        with self._lock:
            answers = list(self.answers)
        return [json.loads(answer.partition(b"\r\n\r\n")[2] or b"{}") for answer in answers]
