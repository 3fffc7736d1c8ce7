"""rollup_math.merge_span and merge_grouped: stored histograms summed per group equal the plain
Python sum of their counts, bucket by bucket, over the span of buckets they (and `also`) use."""

from __future__ import annotations

import random

import numpy as np

from llm import rollup_math


def random_histograms(rng: random.Random, count: int) -> list[dict[int, int]]:
    """Sparse histograms as {bucket: count}, some empty, one at each end of the bucket range."""
    histograms = []
    for _index in range(count):
        if rng.random() < 0.1:
            histograms.append({})
            continue
        centre = rng.randint(300, 900)
        histograms.append(
            {rng.randint(centre - 40, centre + 40): rng.randint(1, 2**31) for _ in range(rng.randint(1, 30))}
        )
    histograms[0] = {0: 3, 5: 1}
    histograms[1] = {rollup_math.TOP_BUCKET: 7}
    return histograms


def test_merged_per_group_equal_the_sums_of_the_counts_over_the_span():
    rng = random.Random(5)
    histograms = random_histograms(rng, 400)
    stored = [rollup_math.encode(rollup_math.from_counts(histogram.items())) for histogram in histograms]
    for count in (1, 7, 400):
        groups = [rng.randrange(count) for _ in histograms]
        expected = [dict.fromkeys(range(rollup_math.BUCKETS), 0) for _ in range(count)]
        for group, histogram in zip(groups, histograms, strict=True):
            for bucket, value in histogram.items():
                expected[group][bucket] += value
        first, compact = rollup_math.merge_span(groups, stored, count)
        used = [bucket for histogram in histograms for bucket in histogram]
        assert (first, compact.shape) == (min(used), (count, max(used) + 1 - min(used)))
        merged = rollup_math.merge_grouped(groups, stored, count)
        for group in range(count):
            assert merged[group].tolist() == list(expected[group].values())
            assert compact[group].tolist() == [expected[group][bucket] for bucket in range(first, max(used) + 1)]


def test_the_span_widens_to_the_callers_buckets_and_is_empty_without_any():
    stored = [rollup_math.encode(rollup_math.from_counts([(600, 2), (610, 5)]))]
    first, compact = rollup_math.merge_span([1], stored, 2, also=[590, 640])
    assert (first, compact.shape) == (590, (2, 51))
    assert compact[1, 10] == 2 and compact[1, 20] == 5 and int(compact.sum()) == 7
    first, compact = rollup_math.merge_span([0, 0], [b"", None], 3, also=[12])
    assert (first, compact.shape, int(compact.sum())) == (12, (3, 1), 0)
    first, compact = rollup_math.merge_span([], [], 2)
    assert compact.shape == (2, 0)
    assert rollup_math.merge_grouped([], [], 2).shape == (2, rollup_math.BUCKETS)
    assert np.array_equal(rollup_math.merge([b"", stored[0]]), rollup_math.from_counts([(600, 2), (610, 5)]))


def test_words_summed_per_group_equal_the_sums_of_the_counts_and_the_added_ones():
    """rollup_math.unpack and Words.summed_per_group (the shared reading's histograms): stored
    histograms and (cell, bucket, count) triples, negative ones included, summed per group of
    cells (-1: left out) equal the plain Python sums, bucket by bucket."""
    rng = random.Random(8)
    histograms = random_histograms(rng, 300)
    stored = [rollup_math.encode(rollup_math.from_counts(histogram.items())) for histogram in histograms]
    cells = 40
    owners = [rng.randrange(cells) for _ in histograms]
    also = [(rng.randrange(cells), rng.randint(250, 950), rng.randint(-5, 50)) for _ in range(200)]
    words = rollup_math.unpack(owners, stored, also)
    for count in (1, 6, cells):
        group_of = [rng.randrange(-1, count) for _ in range(cells)]
        expected = [dict.fromkeys(range(rollup_math.BUCKETS), 0) for _ in range(count)]
        for cell, histogram in zip(owners, histograms, strict=True):
            for bucket, value in histogram.items():
                if group_of[cell] >= 0:
                    expected[group_of[cell]][bucket] += value
        for cell, bucket, value in also:
            if group_of[cell] >= 0:
                expected[group_of[cell]][bucket] += value
        first, summed = words.summed_per_group(np.array(group_of, dtype=np.int64), count)
        used = [bucket for histogram in histograms for bucket in histogram] + [bucket for _c, bucket, _v in also]
        assert (first, summed.shape) == (min(used), (count, max(used) + 1 - min(used)))
        for group in range(count):
            dense = np.zeros(rollup_math.BUCKETS, dtype=np.int64)
            dense[first : first + summed.shape[1]] = summed[group]
            assert dense.tolist() == list(expected[group].values())
    empty = rollup_math.unpack([0, 1], [b"", None])
    first, summed = empty.summed_per_group(np.zeros(2, dtype=np.int64), 3)
    assert summed.shape == (3, 0)
    only_added = rollup_math.unpack([], [], [(1, 700, 4)])
    assert only_added.summed_per_group(np.array([-1, 0]), 1)[1].tolist() == [[4]]


def test_percentiles_per_row_equal_the_percentiles_of_each_histogram():
    """Every row's percentiles at once are the very floats rollup_math.percentiles answers one
    histogram at a time (and None for an empty row), for spans not starting at bucket 0."""
    rng = random.Random(9)
    fractions = [0.0, 0.5, 0.95, 0.99, 1.0]
    rows = []
    for _ in range(120):
        row = np.zeros(300, dtype=np.int64)
        for _count in range(rng.choice([0, 1, 2, 5, 40])):
            row[rng.randrange(300)] += rng.choice([1, 1, 3, 10**9])
        rows.append(row)
    span = np.array(rows)
    for first in (0, 400, rollup_math.BUCKETS - 300):
        found = rollup_math.percentiles_per_row(first, span, fractions)
        for row, answer in zip(rows, found, strict=True):
            dense = np.zeros(rollup_math.BUCKETS, dtype=np.int64)
            dense[first : first + 300] = row
            assert answer == rollup_math.percentiles(dense, fractions)
    assert rollup_math.percentiles_per_row(5, np.zeros((2, 0), dtype=np.int64), [0.5]) == [[None], [None]]
