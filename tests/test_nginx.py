"""docs/nginx.conf.example, the production serving setup: nginx accepts it (`nginx -t`), and in
front of gunicorn it keeps clients that send their body slowly (or never) away from the app's
threads, which they hold when they reach gunicorn directly. Skipped without nginx (Debian package
nginx, installed by scripts/install-system-deps)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from django.conf import settings

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SAMPLE = Path(settings.BASE_DIR) / "docs" / "nginx.conf.example"
pytestmark = [
    pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx missing: run scripts/install-system-deps"),
    pytest.mark.one_database,  # gunicorn on a SQLite file of its own, whatever the suite's database
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main_config(tmp_path: Path, site: str) -> Path:
    """nginx.conf around the sample (which belongs in `http { }`), everything in tmp_path."""
    (tmp_path / "site.conf").write_text(site)
    temp_paths = "\n".join(f"  {kind}_temp_path {tmp_path / kind};" for kind in ("client_body", "proxy", "fastcgi"))
    temp_paths += "\n".join(f"\n  {kind}_temp_path {tmp_path / kind};" for kind in ("uwsgi", "scgi"))
    config = tmp_path / "nginx.conf"
    config.write_text(
        f"""
daemon off;
{"user root;" if os.getuid() == 0 else ""}
pid {tmp_path / "nginx.pid"};
error_log {tmp_path / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
{temp_paths}
  include {tmp_path / "site.conf"};
}}
"""
    )
    return config


def test_the_sample_config_is_valid_as_shipped(tmp_path):
    # Only the certificate paths change: to a self-signed pair made here.
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=observatory.test",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    site = SAMPLE.read_text()
    site = site.replace("/etc/letsencrypt/live/observatory.example.com/fullchain.pem", str(tmp_path / "cert.pem"))
    site = site.replace("/etc/letsencrypt/live/observatory.example.com/privkey.pem", str(tmp_path / "key.pem"))
    assert str(tmp_path / "cert.pem") in site and str(tmp_path / "key.pem") in site
    config = main_config(tmp_path, site)
    result = subprocess.run([NGINX, "-t", "-c", str(config), "-p", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def wait_for(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            time.sleep(0.1)
    pytest.fail(f"{url} did not answer in time")


@contextmanager
def gunicorn(tmp_path: Path, port: int, threads: int):
    environment = {
        **os.environ,
        "OBSERVATORY_ENV_FILE": "",
        "DJANGO_SETTINGS_MODULE": "core.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "gunicorn", "core.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    command += ["--threads", str(threads), "--timeout", "60"]
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, cwd=settings.BASE_DIR, env=environment, stdout=log, stderr=log)
    try:
        wait_for(f"http://127.0.0.1:{port}/health/")
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@contextmanager
def nginx(tmp_path: Path, port: int, upstream_port: int):
    """The sample's HTTPS server on plain HTTP at `port` (no certificate needed), in front of
    `upstream_port`; every timeout and buffer setting as shipped."""
    site = SAMPLE.read_text()
    replacements = {
        "listen 443 ssl http2;": f"listen 127.0.0.1:{port};",
        "listen 80;": f"listen 127.0.0.1:{free_port()};",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{upstream_port};",
    }
    for old, new in replacements.items():
        assert old in site
        site = site.replace(old, new)
    site = "\n".join(line for line in site.splitlines() if "ssl_certificate" not in line)
    process = subprocess.Popen([NGINX, "-c", str(main_config(tmp_path, site)), "-p", str(tmp_path)])
    try:
        wait_for(f"http://127.0.0.1:{port}/health/")
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def slow_login_posts(port: int, count: int, stack: ExitStack) -> None:
    """Connections that declare a 100 kB login form and send one byte of it."""
    for _ in range(count):
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        sock.sendall(
            b"POST /accounts/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\nu"
        )
    time.sleep(0.5)  # let them reach a thread (directly) or nginx's buffer (through nginx)


def health_within(port: int, seconds: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/", timeout=seconds) as response:
            return response.status == 200
    except (TimeoutError, urllib.error.URLError):
        return False


def test_slow_clients_hold_gunicorns_threads_but_not_behind_nginx(tmp_path):
    app_port, proxy_port = free_port(), free_port()
    (tmp_path / "app").mkdir()
    (tmp_path / "proxy").mkdir()
    with gunicorn(tmp_path / "app", app_port, threads=2), nginx(tmp_path / "proxy", proxy_port, app_port):
        # Directly: two slow clients per thread, and a health check no longer gets an answer.
        with ExitStack() as stack:
            slow_login_posts(app_port, 4, stack)
            assert not health_within(app_port, 2)
        wait_for(f"http://127.0.0.1:{app_port}/health/")  # the threads are free again
        # Through nginx: twenty slow clients, and pages still answer at once.
        with ExitStack() as stack:
            slow_login_posts(proxy_port, 20, stack)
            started = time.monotonic()
            assert health_within(proxy_port, 2)
            assert time.monotonic() - started < 1
            with urllib.request.urlopen(f"http://127.0.0.1:{proxy_port}/accounts/login/", timeout=2) as response:
                assert response.status == 200 and response.headers["X-Request-ID"]
