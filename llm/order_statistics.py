"""Windowed percentiles for the rule preview: the percentile of each of many ranges of one array
(thousands of windows per group; with every user a group, millions). A sort per window costs
seconds, so windows are taken in two ways, both exact, with the same float operations as a sort
and an index (linear interpolation between closest ranks, as percentile_cont):

- small windows (most of them when a rule groups by user) are copied into rows of a padded table,
  sorted together, one NumPy call per block of rows;
- large windows (an ungrouped rule: hundreds of calls per window) one by one with np.partition,
  whose per-call overhead is small next to the values it moves.

Sliding windows of whole buckets (the preview's: every window of a group at once) first take the
windows whose percentile lies between the two largest values (fewer than 1 / (1 - fraction) + 1
values: 21 for a p95, 101 for a p99; most windows of a rule grouped by user) from the two
largest of each bucket, merged over the window by doubling; only the others are sorted.
"""

from __future__ import annotations

import math

import numpy as np

# Window sizes sorted in padded rows of these widths (a window goes to the narrowest that holds
# it); larger windows are partitioned one by one.
PADDED_WIDTHS = (8, 32, 128)
# At most this many cells per padded block (8 bytes each, plus the index table).
BLOCK_CELLS = 2_000_000


def window_percentiles(
    values: np.ndarray, lows: np.ndarray, highs: np.ndarray, fraction: float, block_cells: int = BLOCK_CELLS
) -> np.ndarray:
    """The `fraction` percentile of values[lows[i]:highs[i]] for each i; NaN for an empty range."""
    lows = np.asarray(lows, dtype=np.int64)
    highs = np.asarray(highs, dtype=np.int64)
    sizes = highs - lows
    answer = np.full(len(lows), np.nan)
    narrower = 0
    for width in PADDED_WIDTHS:
        chosen = np.flatnonzero((sizes > narrower) & (sizes <= width))
        narrower = width
        if not len(chosen):
            continue
        for block in np.array_split(chosen, math.ceil(len(chosen) * width / block_cells)):
            answer[block] = _padded(values, lows[block], sizes[block], width, fraction)
    large = np.flatnonzero(sizes > narrower)
    answer[large] = percentiles_by_partition(values, lows[large], highs[large], fraction)
    return answer


def _padded(values: np.ndarray, lows: np.ndarray, sizes: np.ndarray, width: int, fraction: float) -> np.ndarray:
    """Each range (1 to `width` values) as a row padded with +inf, all rows sorted in one call."""
    columns = np.arange(width)
    cells = np.minimum(lows[:, None] + columns, len(values) - 1)
    table = np.where(columns < sizes[:, None], values[cells], np.inf)
    table.sort(axis=1)
    position = (sizes - 1) * fraction
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, sizes - 1)
    rows = np.arange(len(sizes))
    first, second = table[rows, lower], table[rows, upper]
    return first + (second - first) * (position - lower)


def percentiles_by_partition(values: np.ndarray, lows: np.ndarray, highs: np.ndarray, fraction: float) -> np.ndarray:
    """Each range's percentile by a partial sort (np.partition) of its values."""
    answer = np.full(len(lows), np.nan)
    for index, (low, high) in enumerate(zip(np.asarray(lows).tolist(), np.asarray(highs).tolist(), strict=True)):
        if high <= low:
            continue
        position = (high - low - 1) * fraction
        lower = int(position)
        upper = min(lower + 1, high - low - 1)
        ordered = np.partition(values[low:high], (lower, upper))
        answer[index] = ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)
    return answer


def sliding_percentiles(
    values: np.ndarray, ends: np.ndarray, span: int, highs: np.ndarray, fraction: float
) -> np.ndarray:
    """The `fraction` percentile of each window of `span` buckets ending before bucket highs[i]
    (NaN: no values). Bucket b holds values[ends[b] : ends[b + 1]] (one group's values, by bucket).

    Exact, with the same floats as a sort: where the rank falls between the two largest values
    (or on the largest), those come from `window_top_two`; other windows from `window_percentiles`.
    """
    highs = np.asarray(highs, dtype=np.int64)
    lows = highs - span
    starts, stops = ends[np.maximum(lows, 0)], ends[highs]
    sizes = stops - starts
    position = (sizes - 1) * fraction
    lower = np.floor(position).astype(np.int64)
    small = (sizes > 0) & (lower >= sizes - 2)
    answer = np.full(len(highs), np.nan)
    if small.any():
        largest, second = window_top_two(values, ends, span)
        chosen = highs[small]
        top = largest[chosen]
        first = np.where(lower[small] == sizes[small] - 1, top, second[chosen])
        answer[small] = first + (top - first) * (position[small] - lower[small])
    rest = np.flatnonzero(~small & (sizes > 0))
    if len(rest):
        answer[rest] = window_percentiles(values, starts[rest], stops[rest], fraction)
    return answer


def window_top_two(values: np.ndarray, ends: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray]:
    """For each h (0 to len(ends) - 1), the largest and second largest value (-inf where absent)
    of buckets [h - span, h): each bucket's two largest, merged over the window by doubling."""
    # One more, empty, bucket: the window ending before the last bucket's end.
    counts = np.append(np.diff(ends), 0)
    largest = np.full(len(counts), -np.inf)
    second = np.full(len(counts), -np.inf)
    filled = np.flatnonzero(counts > 0)
    if len(filled):
        chosen = values[ends[0] : ends[-1]]
        starts = ends[filled] - ends[0]
        largest[filled] = np.maximum.reduceat(chosen, starts)
        owners = np.repeat(np.arange(len(counts)), counts)
        # Each bucket without one occurrence of its largest: the largest of the rest is the second.
        tops = np.flatnonzero(chosen == largest[owners])
        _, first_top = np.unique(owners[tops], return_index=True)
        rest = chosen.copy()
        rest[tops[first_top]] = -np.inf
        second[filled] = np.maximum.reduceat(rest, starts)
    # Windows of `width` buckets ending at each bucket, doubled; the span's taken bit by bit.
    window: tuple[np.ndarray, np.ndarray] | None = None
    current, width, offset, remaining = (largest, second), 1, 0, span
    while remaining:
        if remaining & 1:
            window = _merged(window, _shifted(current, offset))
            offset += width
        remaining >>= 1
        if remaining:
            current = _merged(current, _shifted(current, width))
            width *= 2
    assert window is not None
    # The window ending before h ends at bucket h - 1.
    return _shifted(window, 1)


def _shifted(pair: tuple[np.ndarray, np.ndarray], by: int) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays moved `by` places later (-inf in front)."""
    if not by:
        return pair
    moved = []
    for array in pair:
        later = np.full(len(array), -np.inf)
        later[by:] = array[: max(len(array) - by, 0)]
        moved.append(later)
    return moved[0], moved[1]


def _merged(
    pair: tuple[np.ndarray, np.ndarray] | None, other: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The two largest of two multisets, each given by its two largest."""
    if pair is None:
        return other
    (first, second), (other_first, other_second) = pair, other
    return np.maximum(first, other_first), np.maximum(np.minimum(first, other_first), np.maximum(second, other_second))
