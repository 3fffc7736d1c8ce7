"""The proxy's overhead of two or more checkouts, measured side by side (an A/B of a change).

    scripts/with-postgres .venv/bin/python bench/overhead_ab.py DIR_A DIR_B [DIR ...]

Each DIR is a checkout with its virtualenv at DIR/.venv (a git worktree: `git worktree add ../b
HEAD~1 && ln -s "$PWD/.venv" ../b/.venv`). One fake Groq answers them all; each checkout's server
runs as `make run` serves it (WEB_CONCURRENCY workers, 1 by default), on the same database; one
client sends the same prompt to the upstream directly, then to each server in turn, rotating the
order every prompt. The whole-bench overhead (bench/hotpath_bench.py) moves 0.3 ms and more from run
to run on this shared 2-core machine, which hides a change worth 0.1 ms; prompts alternated within
one run see the same machine. Prints each checkout's overhead p50/p90/p99 over the direct p50.
BENCH_AB_CALLS prompts per checkout (3,000), BENCH_AB_ENV_<i>="NAME=value ..." settings for one.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

from bench import hotpath_bench as hotpath  # noqa: E402 - after the path and the settings

CALLS = int(os.environ.get("BENCH_AB_CALLS", "3000"))
WARM_UP = 100


@contextmanager
def served(index: int, checkout: str, port: int, upstream: str, log: Path) -> Iterator[subprocess.Popen]:
    """The checkout's server as `make run` serves it (hotpath_bench's command, from the checkout)."""
    settings = dict(pair.partition("=")[::2] for pair in os.environ.get(f"BENCH_AB_ENV_{index}", "").split())
    env = hotpath.app_environment(upstream, **{"WEB_CONCURRENCY": os.environ.get("WEB_CONCURRENCY", "1"), **settings})
    command = shlex.split(hotpath.SERVE_COMMAND) + ["--bind", f"127.0.0.1:{port}"]
    command[0] = f"{checkout}/.venv/bin/{command[0]}"
    with hotpath.running(command, port, env, log, cwd=Path(checkout)) as server:
        hotpath.wait_for_workers(log, server)
        yield server


async def alternate(upstream_port: int, ports: list[int], auth: str) -> dict[str, list[float]]:
    upstream_body = json.dumps(
        {"model": hotpath.PROMPT["model"], "messages": [{"role": "user", "content": hotpath.PROMPT["prompt"]}]}
    ).encode()
    body = json.dumps(hotpath.PROMPT).encode()
    direct = hotpath.Connection(upstream_port)
    servers = [hotpath.Connection(port) for port in ports]
    times: dict[str, list[float]] = {"direct": [], **{str(index): [] for index in range(len(ports))}}

    async def timed(connection: hotpath.Connection, path: str, content: bytes, headers: str = "") -> float:
        started = time.perf_counter()
        status, answer = await connection.post(path, content, headers)
        assert status == 200, answer[:300]
        return (time.perf_counter() - started) * 1000

    for call in range(WARM_UP + CALLS):
        direct_ms = await timed(direct, "/openai/v1/chat/completions", upstream_body)
        order = list(range(len(ports)))
        order = order[call % len(order) :] + order[: call % len(order)]
        through = {index: await timed(servers[index], "/api/llm/prompt/", body, auth) for index in order}
        if call >= WARM_UP:
            times["direct"].append(direct_ms)
            for index, milliseconds in through.items():
                times[str(index)].append(milliseconds)
    for connection in (direct, *servers):
        connection.close()
    return times


def main() -> None:
    checkouts = sys.argv[1:]
    if len(checkouts) < 2:
        sys.exit(__doc__)
    auth = f"Authorization: Bearer {hotpath.prepare_database()}\r\n"
    logs = Path(tempfile.mkdtemp(prefix="llm-overhead-ab-"))
    upstream_port = hotpath.free_port()
    with hotpath.fake_groq(upstream_port, hotpath.FAST_SECONDS, logs / "fake.log"):
        ports = [hotpath.free_port() for _ in checkouts]
        upstream = f"http://127.0.0.1:{upstream_port}"
        with ExitStack() as servers:
            for index, (checkout, port) in enumerate(zip(checkouts, ports, strict=True)):
                servers.enter_context(served(index, checkout, port, upstream, logs / f"app{index}.log"))
            times = hotpath._loop_runner()(alternate(upstream_port, ports, auth))
    direct = statistics.median(times["direct"])
    print(f"{CALLS} prompts each, load average {hotpath.load_average()}, direct p50 {direct:.3f} ms")
    print("checkout | overhead p50 | p90 | p99")
    for index, checkout in enumerate(checkouts):
        cuts = statistics.quantiles(times[str(index)], n=100)
        median = statistics.median(times[str(index)])
        print(f"{checkout} | {median - direct:.3f} ms | {cuts[89] - direct:.3f} ms | {cuts[98] - direct:.3f} ms")
    print(f"server logs: {logs}", file=sys.stderr)


if __name__ == "__main__":
    main()
