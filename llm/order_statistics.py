"""The k-th smallest value of many ranges of one array at once, for the rule preview's windowed
percentiles (thousands of windows over a million values: a sort per window costs seconds).

A wavelet matrix over the values' ranks: one stable partition per bit of the rank, and for each
the count of zero bits before each position. A query walks down the bits, narrowing its range
on each level with two lookups; NumPy walks every query at once. Building it costs
O(n log n), a query O(log n); memory is log2(n) int32 arrays of n + 1.
"""

from __future__ import annotations

import numpy as np


class RangeOrder:
    def __init__(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=float)
        count = len(values)
        order = np.argsort(values, kind="stable")
        self.sorted = values[order]
        ranks = np.empty(count, dtype=np.int64)
        ranks[order] = np.arange(count)
        self.bits = max(1, int(count - 1).bit_length())
        # Per level, from the highest bit down: zero bits before each position, and in all.
        self.zeros: list[np.ndarray] = []
        self.zero_totals: list[int] = []
        current = ranks
        for bit in reversed(range(self.bits)):
            is_zero = ((current >> bit) & 1) == 0
            before = np.zeros(count + 1, dtype=np.int32)
            np.cumsum(is_zero, out=before[1:])
            self.zeros.append(before)
            self.zero_totals.append(int(before[-1]))
            current = np.concatenate([current[is_zero], current[~is_zero]])

    def kth(self, lows: np.ndarray, highs: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """The ks[i]-th smallest (0-based) of values[lows[i]:highs[i]], for each i (ks[i] below
        the range's length)."""
        low = np.asarray(lows, dtype=np.int64)
        high = np.asarray(highs, dtype=np.int64)
        k = np.asarray(ks, dtype=np.int64)
        rank = np.zeros(len(k), dtype=np.int64)
        for level, bit in enumerate(reversed(range(self.bits))):
            before, total = self.zeros[level], self.zero_totals[level]
            zeros_low, zeros_high = before[low], before[high]
            zeros = zeros_high - zeros_low
            one = k >= zeros
            rank |= one.astype(np.int64) << bit
            k = np.where(one, k - zeros, k)
            low = np.where(one, total + low - zeros_low, zeros_low)
            high = np.where(one, total + high - zeros_high, zeros_high)
        return self.sorted[rank]

    def percentiles(self, lows: np.ndarray, highs: np.ndarray, fraction: float) -> np.ndarray:
        """The `fraction` percentile of each range, linearly interpolated between closest ranks as
        percentile_cont (and the same float operations as a sort and index would do); NaN for an
        empty range."""
        lows = np.asarray(lows, dtype=np.int64)
        highs = np.asarray(highs, dtype=np.int64)
        answer = np.full(len(lows), np.nan)
        filled = highs > lows
        low, high = lows[filled], highs[filled]
        if not len(low):
            return answer
        position = (high - low - 1) * fraction
        lower = np.floor(position).astype(np.int64)
        upper = np.minimum(lower + 1, high - low - 1)
        first = self.kth(low, high, lower)
        second = self.kth(low, high, upper)
        answer[filled] = first + (second - first) * (position - lower)
        return answer


def percentiles_by_partition(values: np.ndarray, lows: np.ndarray, highs: np.ndarray, fraction: float) -> np.ndarray:
    """The same answer as RangeOrder(values).percentiles, by a partial sort (np.partition) of each
    range: cheaper while there are fewer than about a hundred thousand ranges (no O(n log n) build),
    slower beyond (a few microseconds per range)."""
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
