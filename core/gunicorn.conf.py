"""How `make run` serves the app: `gunicorn --config core/gunicorn.conf.py core.asgi:application`.

Uvicorn workers (core/workers.py, the uvicorn-worker package's; uvicorn's own `uvicorn.workers` is deprecated) run
core/asgi.py on an event loop: a prompt waiting on its LLM vendor holds no thread, and Django's sync
code runs in THREADS threads per worker (core/asgi.py), as gthread's did. BIND, WEB_CONCURRENCY
and the other GUNICORN_CMD_ARGS flags still apply.
"""

import os

worker_class = "core.workers.Worker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
timeout = 120
graceful_timeout = 10
# No access log: RequestLogMiddleware (llm/logging.py) already writes one line per request, with its
# request id, status, duration and caller; a second line per prompt cost CPU on the hot path.
# `--access-logfile -` in GUNICORN_CMD_ARGS turns it back on.
accesslog = None
# Room for a thousand calls in flight per worker (gunicorn's default backlog is 2048).
backlog = 4096
# Each worker listens on a socket of its own (SO_REUSEPORT; gunicorn opens them after the fork), and
# the kernel spreads new connections across them by their addresses. On one shared socket, the
# worker whose loop woke first accepted every connection of a burst: 16 keep-alive clients were
# often all served by one worker, on one core, while the other sat idle.
reuse_port = True
# No control socket (gunicorn 25's `gunicornc`): its path is one per user ($XDG_RUNTIME_DIR/gunicorn.ctl or
# ~/.gunicorn/gunicorn.ctl), which each server that starts takes over and each that stops removes, so
# the tool would reach whichever instance on the host started last (two deployments, `make run` beside
# the tests). Signals (HUP, TERM, TTIN/TTOU) and systemd manage the server: docs/deployment.md.
control_socket_disable = True


def on_starting(server) -> None:
    """reuse_port only where each worker can open a socket of its own: TCP addresses gunicorn binds
    itself. Not a unix socket (each worker would remove the file of the one before), nor sockets
    handed over by systemd or by a re-exec (USR2), which the workers must share."""
    inherited = os.environ.get("LISTEN_FDS") or os.environ.get("GUNICORN_FD")
    if inherited or any(address.startswith(("unix:", "fd://")) for address in server.cfg.bind):
        server.cfg.set("reuse_port", False)


def when_ready(server) -> None:
    """With a socket per worker the master holds none, and gunicorn's own "Listening at:" line is
    empty: say where the workers listen."""
    if server.cfg.reuse_port:
        addresses = ", ".join(f"http://{address}" for address in server.cfg.bind)
        server.log.info("Workers listen at: %s (a socket each)", addresses)
