"""Windowed percentiles for the rule preview: the wavelet matrix (RangeOrder) and the partition per
window give the same floats, and both equal a plain sort of each range (percentile_cont's linear
interpolation), with ties, empty ranges and single values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm.order_statistics import RangeOrder, percentiles_by_partition


def sorted_percentile(values: list[float], fraction: float) -> float:
    """The independent computation: sort, then interpolate between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    # Continuous values, plus a block of ties (rounded) and repeated values.
    values = np.concatenate([rng.lognormal(6, 0.7, 1500), np.round(rng.uniform(0, 50, 500)), np.full(40, 7.0)])
    rng.shuffle(values)
    lows = rng.integers(0, len(values), 400)
    highs = np.minimum(lows + rng.integers(0, 300, 400), len(values))
    # Empty ranges and single values too.
    lows[:5], highs[:5] = 10, 10
    highs[5:10] = lows[5:10] + 1
    return values, lows, highs


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.95, 0.99, 1.0])
def test_range_percentiles_equal_a_sort_of_each_range(data, fraction):
    values, lows, highs = data
    expected = np.array(
        [sorted_percentile(values[low:high].tolist(), fraction) for low, high in zip(lows, highs, strict=True)]
    )
    by_order = RangeOrder(values).percentiles(lows, highs, fraction)
    by_partition = percentiles_by_partition(values, lows, highs, fraction)
    np.testing.assert_array_equal(by_order, expected)
    np.testing.assert_array_equal(by_partition, expected)
    assert np.isnan(by_order[:5]).all()
    assert (by_order[5:10] == values[lows[5:10]]).all()


def test_kth_smallest_of_ranges(data):
    values, lows, highs = data
    order = RangeOrder(values)
    chosen = highs > lows
    lows, highs = lows[chosen], highs[chosen]
    ks = (highs - lows - 1) // 3
    expected = [sorted(values[low:high])[k] for low, high, k in zip(lows, highs, ks, strict=True)]
    assert order.kth(lows, highs, ks).tolist() == expected


def test_tiny_arrays():
    assert np.isnan(RangeOrder(np.array([])).percentiles(np.array([0]), np.array([0]), 0.95)).all()
    single = RangeOrder(np.array([4.0]))
    assert single.percentiles(np.array([0]), np.array([1]), 0.95).tolist() == [4.0]
    pair = np.array([10.0, 20.0])
    assert RangeOrder(pair).percentiles(np.array([0]), np.array([2]), 0.95).tolist() == [10.0 + 10.0 * 0.95]
