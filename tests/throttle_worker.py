"""Worker processes for tests/test_throttles.py: each counts prompts against PROMPT_RATE_LIMIT in
the shared test database, as one gunicorn worker of several would, and tells how many it admitted.

Forked from the test process (`forked`), as gunicorn forks its workers, or a fresh interpreter:

    DATABASE_URL=postgres://.../test_observatory python -m tests.throttle_worker LIMIT ATTEMPTS START SUBJECT

which prints the number admitted and exits normally: what it had not yet sent reaches the row
through llm/throttles.py's exit hook.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime


def admit(limit: int, attempts: int, start: datetime, subject: str = "key:1") -> int:
    """ATTEMPTS prompts as fast as they go, the clock at START and running (every worker in the
    same minute, whatever the real time); how many were admitted."""
    import time_machine
    from django.conf import settings

    from llm import throttles

    settings.PROMPT_RATE_LIMIT = limit
    caller = throttles.Caller(subject=subject, label='API key "shared"')
    with time_machine.travel(start, tick=True):
        return sum(throttles.use(throttles.PROMPTS, caller) is None for _ in range(attempts))


def forked(limit: int, attempts: int, start: datetime, go, results) -> None:
    """The body of a forked worker: `go` (an Event) starts it; its count goes to `results` (a Queue)."""
    from llm import throttles

    throttles.forget_local_counts()  # the test process's counts are not this worker's
    go.wait()
    results.put(admit(limit, attempts, start))
    # multiprocessing ends a forked child with os._exit, past the atexit hooks: run this one.
    throttles.flush_at_exit()


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    print(admit(int(sys.argv[1]), int(sys.argv[2]), datetime.fromisoformat(sys.argv[3]), sys.argv[4]), flush=True)
