"""Windowed percentiles for the rule preview: the percentile of each of many ranges of one array
(thousands of windows per group; with every user a group, millions). A sort per window costs
seconds, so windows are taken in two ways, both exact, with the same float operations as a sort
and an index (linear interpolation between closest ranks, as percentile_cont):

- small windows (most of them when a rule groups by user) are copied into rows of a padded table,
  sorted together, one NumPy call per block of rows;
- large windows (an ungrouped rule: hundreds of calls per window) one by one with np.partition,
  whose per-call overhead is small next to the values it moves.
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
