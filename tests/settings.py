"""Settings for the test suite: core.settings as a fresh checkout gets them, whatever the developer's
`.env` or shell say. Only DATABASE_URL passes through: `make test-postgres` sets it.

pytest loads this module (`--ds` in pyproject.toml) before any conftest or test.
"""

from __future__ import annotations

import os

PASSED_THROUGH = ("DATABASE_URL",)

_developer_environment = dict(os.environ)
os.environ.clear()
os.environ.update({name: _developer_environment[name] for name in PASSED_THROUGH if name in _developer_environment})
os.environ["OBSERVATORY_ENV_FILE"] = ""  # no .env file
try:
    from core.settings import *  # noqa: F403
    from core.settings import env as _settings_env
finally:
    # The rest of the process (subprocesses, browsers) needs PATH and the like back, but none of the
    # developer's settings variables: a subprocess that reads settings gets the same as this one.
    os.environ.update(_developer_environment)
for _name in _settings_env.defaults:
    if _name not in PASSED_THROUGH:
        os.environ.pop(_name, None)
os.environ["OBSERVATORY_ENV_FILE"] = ""

# The alert tests' receivers (webhook, PagerDuty, SMTP) listen on 127.0.0.1: the outbound guard
# (llm/outbound.py) would refuse them otherwise. Tests of the guard itself empty this list.
OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1/32"]
# Rate limits (llm/throttles.py) far above what any test sends: tests of the limits lower them.
PROMPT_RATE_LIMIT = 1_000_000
INGEST_RATE_LIMIT = 1_000_000_000
