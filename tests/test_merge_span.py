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
