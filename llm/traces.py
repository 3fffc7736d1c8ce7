"""Reading one trace: its stored calls as a tree and its context spans (the spans that are not
LLM calls), for GET /api/traces/<id>/, and the whole request as a waterfall for the trace page.

Plain functions over rows, below `models.py`: `LLMRequestLog.objects.trace(trace_id)` queries the
rows and hands them here; this module imports no model, so neither side imports the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from llm.ingest_limits import HEX_TRACE_ID

# A trace with more calls (or more context spans) than this is cut short (the answer says so).
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


TRACE_SPAN_FIELDS = [
    "span_id",
    "parent_span_id",
    "name",
    "service",
    "kind",
    "start",
    "end",
    "status",
    "status_message",
    "attributes",
    "dropped_attributes",
]


@dataclass
class Trace:
    calls: list[dict[str, Any]]
    truncated: bool
    # Context spans (not LLM calls), rows of TRACE_SPAN_FIELDS with `duration_ms`, in time order.
    spans: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.calls or self.spans)


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


def as_tree(rows: list[dict[str, Any]], span_rows: list[dict[str, Any]] | None = None) -> Trace:
    """The calls of one trace (rows of TRACE_CALL_FIELDS in time order, at most one more than
    MAX_TRACE_CALLS), each with `depth` and `parent_request_id`, and its context spans (rows of
    TRACE_SPAN_FIELDS, as many at most), each with `duration_ms`.

    A call's parent is the nearest ancestor span that is itself a stored call; spans between them
    (an HTTP handler, an agent step) were not stored, so a call whose parent span is not a stored
    call is a root (depth 0).
    """
    span_rows = span_rows or []
    truncated = len(rows) > MAX_TRACE_CALLS or len(span_rows) > MAX_TRACE_CALLS
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
    spans = [
        {
            **row,
            "start": row["start"].isoformat(),
            "end": row["end"].isoformat(),
            "duration_ms": (row["end"] - row["start"]).total_seconds() * 1000,
        }
        for row in span_rows[:MAX_TRACE_CALLS]
    ]
    return Trace(calls, truncated, spans)


# The waterfall's bars are drawn in an SVG whose width is WATERFALL_WIDTH units; a bar is at
# least MIN_BAR units wide, so an instant span stays visible.
WATERFALL_WIDTH = 1000
MIN_BAR = 3
AXIS_TICKS = 4
MAX_INDENT = 8


@dataclass
class WaterfallRow:
    """One bar: a stored call (`request_id` set, linked to its page) or a context span."""

    name: str
    service: str
    depth: int
    start: datetime
    duration_ms: float
    offset_ms: float
    status: str
    kind: str
    x: float = 0.0
    width: float = 0.0
    request_id: str | None = None
    detail: str = ""
    # A context span's kept attributes (shown when its row is opened).
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def is_call(self) -> bool:
        return self.request_id is not None

    @property
    def indent(self) -> int:
        # Deeper rows are drawn at this depth: the label column stays readable.
        return min(self.depth, MAX_INDENT)


@dataclass
class Waterfall:
    rows: list[WaterfallRow]
    start: datetime | None
    duration_ms: float
    # (position in WATERFALL_WIDTH units, label in ms) for the time axis.
    ticks: list[tuple[float, float]]


def _call_row(call: dict[str, Any]) -> WaterfallRow:
    start = datetime.fromisoformat(call["timestamp"])
    tokens = f"{call['total_tokens']:,} tokens"
    return WaterfallRow(
        name=call["model_name"],
        service=call.get("provider", ""),
        depth=0,
        start=start,
        duration_ms=call["latency_ms"],
        offset_ms=0.0,
        status="error" if call["status"] == "error" else "ok",
        kind="llm",
        request_id=call["request_id"],
        detail=tokens,
    )


def _span_row(span: dict[str, Any]) -> WaterfallRow:
    return WaterfallRow(
        name=span["name"],
        service=span["service"],
        depth=0,
        start=datetime.fromisoformat(span["start"]),
        duration_ms=span["duration_ms"],
        offset_ms=0.0,
        status=span["status"],
        kind=span["kind"],
        detail=span["status_message"],
        # In key order: PostgreSQL's jsonb gives keys back shortest first.
        attributes=dict(sorted((span.get("attributes") or {}).items())),
    )


def tree_order(nodes: list[tuple[str, str]]) -> list[tuple[int, int]]:
    """(index, depth) of `nodes` ((span id, parent span id), in time order) walked depth first:
    each node after its parent, children in time order; a node whose parent is not among them is
    a root. Iterative, and a cycle of parent ids (a confused client) is cut where it closes."""
    index_of = {span_id: index for index, (span_id, _) in enumerate(nodes) if span_id}
    children: dict[int, list[int]] = {}
    roots = []
    for index, (span_id, parent) in enumerate(nodes):
        parent_index = index_of.get(parent) if parent and parent != span_id else None
        if parent_index is None:
            roots.append(index)
        else:
            children.setdefault(parent_index, []).append(index)
    order: list[tuple[int, int]] = []
    seen: set[int] = set()
    # Nodes caught in a cycle are reached from no root: walk them afterwards, as roots.
    for root in [*roots, *range(len(nodes))]:
        stack = [(root, 0)]
        while stack:
            index, depth = stack.pop()
            if index in seen:
                continue
            seen.add(index)
            order.append((index, depth))
            stack.extend((child, depth + 1) for child in reversed(children.get(index, [])))
    return order


def waterfall(trace: Trace) -> Waterfall:
    """The whole request, calls and context spans, as bars on one time axis, nested by parent."""
    items = [(call.get("span_id", ""), call["parent_span_id"], _call_row(call)) for call in trace.calls]
    items += [(span["span_id"], span["parent_span_id"], _span_row(span)) for span in trace.spans]
    items.sort(key=lambda item: item[2].start)
    if not items:
        return Waterfall([], None, 0.0, [])
    start = min(item[2].start for item in items)
    end = max(item[2].start + timedelta(milliseconds=item[2].duration_ms) for item in items)
    total_ms = max((end - start).total_seconds() * 1000, 0.001)
    rows = []
    for index, depth in tree_order([(span_id, parent) for span_id, parent, _ in items]):
        row = items[index][2]
        row.depth = depth
        row.offset_ms = (row.start - start).total_seconds() * 1000
        row.x = round(min(row.offset_ms / total_ms * WATERFALL_WIDTH, WATERFALL_WIDTH - MIN_BAR), 2)
        row.width = round(max(row.duration_ms / total_ms * WATERFALL_WIDTH, MIN_BAR), 2)
        row.width = min(row.width, WATERFALL_WIDTH - row.x)
        rows.append(row)
    ticks = [(WATERFALL_WIDTH * step / AXIS_TICKS, total_ms * step / AXIS_TICKS) for step in range(AXIS_TICKS + 1)]
    return Waterfall(rows, start, total_ms, ticks)
