"""What a value from outside may be, stated once: the limits the storage really has (column
widths, 32-bit counts, the cost column's digits), the ranges the pages can show, and the rules
for text and JSON every door shares.

Used by the events API (`llm/events.py` through `llm/serializers.py`), the OTLP receiver
(`llm/otlp.py`), the prompt, feedback and alert-rule serializers, the filters and the JSON parser
of the API (`llm/api/parsers.py`). Each imports this module and none imports another, so a rule
about what a value may carry cannot drift between the doors.

What happens to a value outside them, per door:
- events, prompt, feedback, alert rules: 400 naming the field (a batch: the event's index and field);
- OTLP: the span is rejected in `partial_success` with the reason, the other spans are stored;
- query parameters: 400 naming the parameter on the API, the message in the filter bar on a page.
Nothing is cleaned silently, with one exception: text a provider answers through the proxy (the
call happened and must be logged) has NUL characters and lone surrogates replaced by U+FFFD.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A timestamp may run this far ahead of our clock (clock skew between hosts); further ahead is a
# bug in the sender (milliseconds sent as seconds, a wrong time zone) and is refused.
FUTURE_TOLERANCE = timedelta(minutes=5)
FUTURE_TOLERANCE_TEXT = f"more than {int(FUTURE_TOLERANCE.total_seconds() // 60)} minutes in the future"
# The earliest time a call may carry: OTLP cannot say earlier (nanoseconds since the epoch), and
# year-1 values break the pages under a TIME_ZONE west of UTC.
EARLIEST_TIMESTAMP = EPOCH
EARLIEST_TIMESTAMP_TEXT = "before 1970-01-01T00:00:00Z"
# Years a time typed in a form (admin) may have: later than 2999 soon overflows Python's datetime
# when converted between time zones.
STORED_YEARS = (1970, 2999)

# PositiveIntegerField is a 32-bit integer on PostgreSQL: every token count, and their sum
# (total_tokens), must fit.
MAX_COUNT = 2_147_483_647
# Row ids are 64-bit (BigAutoField): a filter on an id beyond this would overflow the query.
MAX_ROW_ID = 2**63 - 1
# One call cannot have lasted longer than a day; a larger figure is a unit mistake (an OTLP end
# time of 2^64-1 ns would be a latency of 528 years). Also bounds ttft_ms.
MAX_LATENCY_MS = 24 * 60 * 60 * 1000.0
# The cost column is DECIMAL(20, 10); SQLite keeps it as a 64-bit float, which rounds values near
# 10^10 up to 10^10, a number the column cannot hold and the pages cannot read back. One call
# costing more than a million dollars is a unit mistake.
MAX_COST_USD = Decimal(1_000_000)
# The request's sampling temperature; providers take 0 to 2.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.0, 2.0
ERROR_MESSAGE_MAX_CHARS = 10_000

# Column widths of LLMRequestLog, for text a receiver cuts rather than refuses.
PROVIDER_MAX_CHARS = 64
MODEL_MAX_CHARS = 200
USER_ID_MAX_CHARS = 200
SESSION_ID_MAX_CHARS = 200
# Tags: a flat JSON object of strings (llm.serializers.validate_tags), also what a `tag` filter may ask.
TAGS_MAX_COUNT = 50
TAG_KEY_MAX_CHARS = 100
TAG_VALUE_MAX_CHARS = 500
FINISH_REASON_MAX_CHARS = 32

HEX_TRACE_ID = r"^[0-9a-fA-F]{32}$"
HEX_SPAN_ID = r"^[0-9a-fA-F]{16}$"

# JSON bodies (every JSON endpoint, and JSON carried inside OTLP attributes) nest at most this
# deep; the deepest real body (an OTLP export with nested attribute values) is far shallower.
MAX_JSON_DEPTH = 100

# Text the databases cannot hold: PostgreSQL refuses NUL in text and JSON, and a lone surrogate
# cannot be encoded as UTF-8 (SQLite stores it, then every page that shows it fails).
UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")
# A name that goes into an e-mail subject, a header or one line of a list: no control characters
# (line breaks included) and no Unicode line or paragraph separators.
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored, or None when it can."""
    match = UNSTORABLE_CHARACTER.search(text)
    if match is None:
        return None
    if match.group() == "\x00":
        return "Null characters are not allowed."
    return f"Surrogate characters are not allowed: U+{ord(match.group()):04X}."


def storable_text(text: str) -> str:
    """`text` with what the databases cannot hold replaced by U+FFFD (for text we must keep)."""
    return UNSTORABLE_CHARACTER.sub("\ufffd", text)


def finite_problem(value: float) -> str | None:
    if not math.isfinite(value):
        return "Must be a finite number (not NaN or Infinity)."
    return None


class JSONError(ValueError):
    """A body that is not strict JSON, or is nested deeper than MAX_JSON_DEPTH."""


def _refuse_constant(name: str) -> Any:
    raise JSONError(f"{name} is not valid JSON (numbers must be finite).")


def parse_json(text: str | bytes) -> Any:
    """Strict JSON: no NaN or Infinity, at most MAX_JSON_DEPTH levels deep; raises JSONError."""
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise JSONError(f"Nested more than {MAX_JSON_DEPTH} levels deep.") from None
    except JSONError:
        raise
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, an integer too long
        raise JSONError(str(error)) from error
    if json_depth(document) > MAX_JSON_DEPTH:
        raise JSONError(f"Nested more than {MAX_JSON_DEPTH} levels deep.")
    return document


def json_depth(document: Any) -> int:
    """How deep lists and objects nest in `document` (a scalar: 0); level by level, so any depth is
    safe, and one list comprehension a level rather than a push and a pop a container (an OTLP
    export's many small attribute objects took several times longer)."""
    level = [document] if isinstance(document, dict | list) else []
    deepest = 0
    while level and deepest <= MAX_JSON_DEPTH:  # deep enough to refuse: no need to measure the rest
        deepest += 1
        level = [
            child
            for container in level
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, dict | list)
        ]
    return deepest


# Several SDKs send the user and the session as tags rather than as fields.
ID_TAGS = {"user_id": USER_ID_MAX_CHARS, "session_id": SESSION_ID_MAX_CHARS}


def fill_ids_from_tags(log: Any) -> None:
    """Fill an unsaved row's empty user_id / session_id from tags["user_id"] / tags["session_id"]
    (events and OTLP alike); the tags stay as they are. A value the column could not hold is cut
    to its width, as the other ingested text is."""
    tags = log.tags if isinstance(log.tags, dict) else {}
    for name, max_chars in ID_TAGS.items():
        value = tags.get(name)
        if not getattr(log, name) and isinstance(value, str) and value:
            setattr(log, name, value[:max_chars])
