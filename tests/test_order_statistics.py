"""Windowed percentiles for the rule preview (llm/order_statistics.py): padded rows sorted together
for small windows, a partition per window for large ones; both equal a plain sort of each range
(percentile_cont's linear interpolation) to the last bit, with ties, empty ranges and single values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm.order_statistics import percentiles_by_partition, window_percentiles

pytestmark = pytest.mark.one_database  # plain functions, no database


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
    # Every size class: up to 8, 32, 128 values (padded rows) and beyond (partitioned).
    lows = rng.integers(0, len(values) - 300, 600)
    highs = lows + np.concatenate([rng.integers(0, 9, 150), rng.integers(9, 129, 300), rng.integers(129, 300, 150)])
    # Empty ranges and single values too.
    lows[:5], highs[:5] = 10, 10
    highs[5:10] = lows[5:10] + 1
    return values, lows, highs


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.95, 0.99, 1.0])
def test_window_percentiles_equal_a_sort_of_each_range(data, fraction):
    values, lows, highs = data
    expected = np.array(
        [sorted_percentile(values[low:high].tolist(), fraction) for low, high in zip(lows, highs, strict=True)]
    )
    np.testing.assert_array_equal(window_percentiles(values, lows, highs, fraction), expected)
    np.testing.assert_array_equal(percentiles_by_partition(values, lows, highs, fraction), expected)
    assert np.isnan(expected[:5]).all()
    assert (expected[5:10] == values[lows[5:10]]).all()


def test_blocks_split_the_padded_rows(data):
    """More windows than one block holds: the answer does not depend on the blocks."""
    values, lows, highs = data
    whole = window_percentiles(values, lows, highs, 0.95)
    np.testing.assert_array_equal(window_percentiles(values, lows, highs, 0.95, block_cells=300), whole)


def test_no_values():
    empty = np.array([])
    assert np.isnan(window_percentiles(empty, np.array([0, 0]), np.array([0, 0]), 0.95)).all()
    pair = np.array([10.0, 20.0])
    assert window_percentiles(pair, np.array([0]), np.array([2]), 0.95).tolist() == [10.0 + 10.0 * 0.95]
