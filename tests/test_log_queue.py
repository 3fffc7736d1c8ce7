"""The console handler (llm.logging.QueuedStreamHandler): the caller formats and queues the line, a
thread of the handler's writes it; every line is written, in order, at flush, at exit and in a forked
child (gunicorn's workers)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import uuid

from django.conf import settings

from llm.logging import JSONFormatter, QueuedStreamHandler, request_id_var


class RecordingStream:
    """A stream that notes which thread wrote each line."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []

    def write(self, text: str) -> None:
        self.writes.append((threading.current_thread().name, text))

    def flush(self) -> None:
        pass


class Collecting(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def queued_logger(stream, formatter: logging.Formatter) -> tuple[logging.Logger, QueuedStreamHandler]:
    handler = QueuedStreamHandler(stream)
    handler.setFormatter(formatter)
    log = logging.getLogger(f"tests.log_queue.{uuid.uuid4().hex}")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return log, handler


def test_lines_are_written_in_order_by_the_listener_thread_with_the_callers_request_id():
    stream = RecordingStream()
    log, handler = queued_logger(stream, JSONFormatter())
    try:
        token = request_id_var.set("req-7")  # a context variable: formatted on the caller's side
        try:
            for number in range(50):
                log.info("line %d", number, extra={"path": "/api/x"})
        finally:
            request_id_var.reset(token)
        handler.flush()
        lines = [json.loads(text) for _, text in stream.writes]
        assert [line["message"] for line in lines] == [f"line {number}" for number in range(50)]
        assert {line["request_id"] for line in lines} == {"req-7"}
        assert {line["path"] for line in lines} == {"/api/x"}
        writers = {thread for thread, _ in stream.writes}
        assert threading.current_thread().name not in writers and len(writers) == 1
        # flush() restarted the listener: later lines are still written.
        log.info("after flush")
        handler.flush()
        assert json.loads(stream.writes[-1][1])["message"] == "after flush"
    finally:
        handler.close()
    # After close (a reconfiguration, the interpreter's exit) a line is written by the caller itself.
    log.info("after close")
    assert stream.writes[-1][0] == threading.current_thread().name
    assert json.loads(stream.writes[-1][1])["message"] == "after close"


def test_the_records_other_handlers_see_are_not_changed():
    stream = RecordingStream()
    log, handler = queued_logger(stream, logging.Formatter("%(levelname)s %(message)s"))
    other = Collecting()
    seen = other.records
    log.addHandler(other)
    try:
        log.warning("a %s b", "x")
        handler.flush()
    finally:
        handler.close()
    assert stream.writes[0][1] == "WARNING a x b\n"
    assert (seen[0].msg, seen[0].args) == ("a %s b", ("x",))


# A forked child (as gunicorn's workers are) logs through the parent's handler, and exits as a worker
# does (sys.exit: logging.shutdown drains the queue); the parent's own lines are written once.
FORK = """
import logging, os, sys
from llm.logging import QueuedStreamHandler
handler = QueuedStreamHandler()
handler.setFormatter(logging.Formatter("%(process)d %(message)s"))
log = logging.getLogger("fork")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.info("parent before fork")
handler.flush()
pid = os.fork()
if pid == 0:
    for number in range(20):
        log.info("child %d", number)
    sys.exit(0)
os.waitpid(pid, 0)
log.info("parent after fork")
"""


def test_a_forked_child_writes_its_lines_and_the_exit_drains_the_queue():
    result = subprocess.run(
        [sys.executable, "-c", FORK], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split(" ", 1) for line in result.stderr.splitlines()]
    parent = {pid for pid, text in lines if text.startswith("parent")}
    child = {pid for pid, text in lines if text.startswith("child")}
    assert len(parent) == 1 and len(child) == 1 and parent != child
    assert [text for _, text in lines] == [
        "parent before fork",
        *[f"child {number}" for number in range(20)],
        "parent after fork",
    ]


def test_made_request_ids_are_random_version_4_uuids(client, db):
    made = [client.get("/health/")["X-Request-ID"] for _ in range(40)]
    assert len(set(made)) == 40
    assert all(uuid.UUID(made_id).hex == made_id and uuid.UUID(made_id).version == 4 for made_id in made)
