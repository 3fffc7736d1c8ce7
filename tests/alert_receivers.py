"""Real peers for alert delivery tests: an SMTP server (aiosmtpd) and a webhook receiver
(http.server), both on 127.0.0.1 in a background thread."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SMTPServer:
    """Collects every message it receives, parsed."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        with self._lock:
            self.messages.append(message)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"

    def start(self) -> SMTPServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def reset(self) -> None:
        with self._lock:
            self.messages.clear()
            self.envelopes.clear()


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


# What a receiver answers in its body: the app must never store or show it (it could be an
# internal page reached by server-side request forgery).
RECEIVER_BODY = b"receiver-private-answer: do not store me"


def verify_signature(secret: str, headers: dict[str, str], body: bytes, tolerance_seconds: int = 300) -> bool:
    """How a receiver checks a signed webhook (the docs' snippet, as a receiver would write it):
    HMAC-SHA256 over "<timestamp>.<raw body>" with the channel's secret, compared in constant
    time, and a timestamp no older than `tolerance_seconds` (a replayed notice is refused)."""
    timestamp = headers.get("X-Observatory-Timestamp", "")
    signature = headers.get("X-Observatory-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_seconds:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature, f"v1={expected}")


@dataclass
class WebhookReceiver:
    """Answers `status` to every POST (with RECEIVER_BODY, and `location` as a redirect's target),
    or hangs (until reset) when `hang` is set. PagerDuty's Events API is this with status 202."""

    status: int = 200
    hang: bool = False
    location: str = ""
    requests: list[ReceivedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's hook name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests.append(ReceivedRequest(self.path, dict(self.headers), body))
                if receiver.hang:
                    # Never answer while the test runs: the client must give up on its own.
                    receiver._release.wait(timeout=30)
                    return
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.end_headers()
                self.wfile.write(RECEIVER_BODY)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        self._release.set()
        self._release = threading.Event()
        with self._lock:
            self.requests.clear()
        self.status = 200
        self.hang = False
        self.location = ""
