"""Limits shared by both ways of reporting calls made elsewhere: the events API (`llm/events.py`)
and the OTLP receiver (`llm/otlp.py`).

Both import this module and neither imports the other, so a rule about what a reported call may
carry is stated once, and the two receivers cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A timestamp may run this far ahead of our clock (clock skew between hosts); further ahead is a
# bug in the sender (milliseconds sent as seconds, a wrong time zone) and is refused.
FUTURE_TOLERANCE = timedelta(minutes=5)
FUTURE_TOLERANCE_TEXT = f"more than {int(FUTURE_TOLERANCE.total_seconds() // 60)} minutes in the future"

# PositiveIntegerField is a 32-bit integer on PostgreSQL.
MAX_COUNT = 2_147_483_647
# One call cannot have lasted longer than a day; a larger figure is a unit mistake.
MAX_LATENCY_MS = 24 * 60 * 60 * 1000.0
ERROR_MESSAGE_MAX_CHARS = 10_000

# Column widths of LLMRequestLog, for text a receiver cuts rather than refuses.
PROVIDER_MAX_CHARS = 64
MODEL_MAX_CHARS = 200
USER_ID_MAX_CHARS = 200
SESSION_ID_MAX_CHARS = 200
FINISH_REASON_MAX_CHARS = 32

HEX_TRACE_ID = r"^[0-9a-fA-F]{32}$"
HEX_SPAN_ID = r"^[0-9a-fA-F]{16}$"
