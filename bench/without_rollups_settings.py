"""core.settings without the roll-up after writes: the "without" server of
bench/ingest_http_rollups.py (ROLLUPS_AFTER_WRITE is not read from the environment)."""

from core.settings import *  # noqa: F403

ROLLUPS_AFTER_WRITE = False
