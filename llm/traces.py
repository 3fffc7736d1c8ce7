"""Reading one trace: its stored calls as a tree, for the trace page and GET /api/traces/<id>/.

Plain functions over rows, below `models.py`: `LLMRequestLog.objects.trace(trace_id)` queries the
rows and hands them here; this module imports no model, so neither side imports the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from llm.ingest_limits import HEX_TRACE_ID

# A trace with more calls than this is cut short (the answer says so).
MAX_TRACE_CALLS = 2_000
TRACE_CALL_FIELDS = [
    "request_id",
    "timestamp",
    "source",
    "provider",
    "model_name",
    "span_id",
    "parent_span_id",
    "status",
    "error_type",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_estimate",
    "user_id",
    "session_id",
    "finish_reason",
]


def normal_trace_id(raw: str) -> str | None:
    """The trace id as stored (32 lowercase hex characters), or None when `raw` is not one."""
    trace_id = raw.lower()
    return trace_id if re.fullmatch(HEX_TRACE_ID, trace_id) else None


@dataclass
class Trace:
    calls: list[dict[str, Any]]
    truncated: bool


def span_depths(parents: dict[str, str]) -> dict[str, int]:
    """Depth of each span among `parents` ({span_id: parent_span_id}): 0 when its parent is not
    in the map. Iterative, and a cycle of parent ids (a confused client) ends at the repeat."""
    depths: dict[str, int] = {}
    for start in parents:
        chain, seen, span_id = [], set(), start
        while span_id in parents and span_id not in depths and span_id not in seen:
            seen.add(span_id)
            chain.append(span_id)
            span_id = parents[span_id]
        depth = depths.get(span_id, -1) if span_id not in seen else -1
        for span_id in reversed(chain):
            depth += 1
            depths[span_id] = depth
    return depths


def as_tree(rows: list[dict[str, Any]]) -> Trace:
    """The calls of one trace (rows of TRACE_CALL_FIELDS in time order, at most one more than
    MAX_TRACE_CALLS), each with `depth` and `parent_request_id`.

    A call's parent is the nearest ancestor span that is itself a stored call; spans between them
    (an HTTP handler, an agent step) were not stored, so a call whose parent span is not a stored
    call is a root (depth 0).
    """
    truncated = len(rows) > MAX_TRACE_CALLS
    rows = rows[:MAX_TRACE_CALLS]
    by_span = {row["span_id"]: row for row in rows if row["span_id"]}
    depths = span_depths({span_id: row["parent_span_id"] for span_id, row in by_span.items()})

    calls = []
    for row in rows:
        parent = by_span.get(row["parent_span_id"]) if row["parent_span_id"] else None
        # An event may name a parent without a span id of its own.
        depth = depths[row["span_id"]] if row["span_id"] else (depths[parent["span_id"]] + 1 if parent else 0)
        calls.append(
            {
                **row,
                "request_id": str(row["request_id"]),
                "timestamp": row["timestamp"].isoformat(),
                "cost_estimate": float(row["cost_estimate"]),
                "parent_request_id": str(parent["request_id"]) if parent is not None else None,
                "depth": depth,
            }
        )
    return Trace(calls, truncated)
