"""core/gunicorn.conf.py's reuse_port (one listening socket per worker) only where it can work:
bound to a unix socket, the workers share the one socket gunicorn's master made, as before (with
a socket each, each worker would remove the file of the one before and serve alone).
The TCP side, both workers getting connections, is tests/test_prompt_server.py's."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tests.serving import ROOT, SERVE, children, core_environment, free_port, socket_inodes


def listening_unix_inodes(path: str) -> list[str]:
    found = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON
            found.append(fields[6])
    return found


def get_health(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(60)
        client.connect(path)
        client.sendall(b"GET /health/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return client.recv(12)


def start_server(tmp_path: Path, bind: str, **env: str) -> tuple[subprocess.Popen, Path]:
    """The server `make run` starts, bound to `bind`, on a SQLite file of its own; its output in the log."""
    env = {**core_environment(f"sqlite:///{tmp_path / 'db.sqlite3'}"), **env}
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen([*SERVE, "--bind", bind], cwd=ROOT, env=env, stdout=output, stderr=output)
    return process, log


def test_workers_share_the_masters_unix_socket(tmp_path):
    path = str(tmp_path / "app.sock")
    process, log = start_server(tmp_path, f"unix:{path}", WEB_CONCURRENCY="2", ALLOWED_HOSTS="localhost")
    try:
        deadline = time.monotonic() + 60
        while not (os.path.exists(path) and len(children(process.pid)) == 2):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)  # a starting server: nothing to wait on but its socket and workers
        assert all(get_health(path) == b"HTTP/1.1 200" for _ in range(4)), log.read_text()
        listening = listening_unix_inodes(path)
        assert len(listening) == 1, listening
        assert all(listening[0] in socket_inodes(worker) for worker in children(process.pid))
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_server_leaves_no_control_socket_and_says_where_it_listens(tmp_path):
    """gunicorn's control socket is one path per user, taken over by every server that starts: none
    is made. With a socket per worker, the log still names the address."""
    home, runtime = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    runtime.mkdir()
    port = free_port()
    process, log = start_server(
        tmp_path,
        f"127.0.0.1:{port}",
        HOME=str(home),
        XDG_RUNTIME_DIR=str(runtime),
        WEB_CONCURRENCY="1",
        ALLOWED_HOSTS="127.0.0.1",
    )
    try:
        deadline = time.monotonic() + 60
        while "Application startup complete" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)  # a starting server: nothing to wait on but its log
        assert httpx.get(f"http://127.0.0.1:{port}/health/", timeout=30).status_code == 200
        text = log.read_text()
        assert f"Workers listen at: http://127.0.0.1:{port} (a socket each)" in text, text
        assert "Control socket" not in text, text
        assert list(home.iterdir()) == [] and list(runtime.iterdir()) == []
    finally:
        process.terminate()
        process.wait(timeout=30)
