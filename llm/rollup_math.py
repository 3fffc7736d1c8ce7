"""The arithmetic of the roll-ups, as plain functions: no model, no query (llm/rollups.py writes the
tables, llm/metrics.py reads them; both import this, and this imports neither).

Latency histograms. A latency (or a time to first token) v > 0 ms falls in the log-spaced bucket
k = floor(ln(v / MIN_MS) / ln(RATIO)) + 1, that is [MIN_MS·RATIO^(k-1), MIN_MS·RATIO^k); bucket 0
holds 0 and anything under MIN_MS, and the last bucket everything from its lower bound up. A
bucket stands for its geometric middle, MIN_MS·RATIO^(k-1/2), which is within sqrt(RATIO) - 1
(0.995 % for RATIO 1.02) of every value in it. A percentile is interpolated between the two
closest ranks as NumPy and PostgreSQL's percentile_cont do, each rank read as its bucket's
middle; the interpolation of two values each within 0.995 % is within 0.995 % of theirs, so a
percentile from a histogram is within ERROR_BOUND of the exact one (values under MIN_MS read 0).

Histograms merge by adding counts, so an hour's, a day's or a window's distribution is the sum of
its parts. Stored, a histogram is bytes: the first non-empty bucket's index (int32) and the counts
from there to the last non-empty one (uint32 each), little-endian: the few dozen buckets an hour of
one model touches, not all BUCKETS.

Windows. A window [start, end) is read as whole days (in TIME_ZONE) where it covers them, whole
UTC hours where it covers those, and raw rows for the rest (under an hour at each edge, or a
little more in a half-hour time zone): `split_window`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo

import numpy as np

RATIO = 1.02
MIN_MS = 0.001  # one microsecond: anything faster reads as 0
LN_RATIO = math.log(RATIO)
# Bucket of 10^9 ms (11.6 days): a latency above lands there too.
TOP_BUCKET = math.floor(math.log(1e9 / MIN_MS) / LN_RATIO) + 1
BUCKETS = TOP_BUCKET + 1
ERROR_BOUND = math.sqrt(RATIO) - 1  # 0.995 %
ERROR_LABEL = "approximate (<=1 %)"
EXACT_LABEL = "exact"
_HEADER = np.dtype("<i4")
_COUNTS = np.dtype("<u4")


def bucket_index(value_ms: float | None) -> int | None:
    """The bucket of one value (None for no value); the SQL of llm/rollups.py computes the same."""
    if value_ms is None:
        return None
    if value_ms < MIN_MS:
        return 0
    return min(math.floor(math.log(value_ms / MIN_MS) / LN_RATIO) + 1, TOP_BUCKET)


def bucket_value(index: int) -> float:
    """What a bucket stands for: its geometric middle (0 for bucket 0)."""
    return 0.0 if index == 0 else MIN_MS * RATIO ** (index - 0.5)


def empty() -> np.ndarray:
    return np.zeros(BUCKETS, dtype=np.int64)


def from_counts(counts: Iterable[tuple[int, int]]) -> np.ndarray:
    """A dense histogram from (bucket, count) pairs (the rows of a GROUP BY bucket)."""
    dense = empty()
    for index, count in counts:
        dense[int(index)] += int(count)
    return dense


def encode(dense: np.ndarray) -> bytes:
    """The stored form: the first non-empty bucket and the counts up to the last non-empty one."""
    filled = np.flatnonzero(dense)
    if not len(filled):
        return b""
    first, last = int(filled[0]), int(filled[-1])
    return np.array([first], dtype=_HEADER).tobytes() + dense[first : last + 1].astype(_COUNTS).tobytes()


def add_encoded(dense: np.ndarray, stored: bytes | memoryview | None) -> np.ndarray:
    """Add a stored histogram into a dense one (in place); answers it."""
    if stored:
        raw = bytes(stored)
        first = int(np.frombuffer(raw[:4], dtype=_HEADER)[0])
        counts = np.frombuffer(raw[4:], dtype=_COUNTS)
        dense[first : first + len(counts)] += counts
    return dense


def merge(stored: Iterable[bytes | memoryview | None]) -> np.ndarray:
    """The sum of stored histograms, dense."""
    stored = list(stored)
    return merge_grouped([0] * len(stored), stored, 1)[0]


def merge_grouped(groups: Sequence[int], stored: Sequence[bytes | memoryview | None], count: int) -> np.ndarray:
    """Stored histograms summed per group (`groups[i]` is the group, 0 to count - 1, of
    `stored[i]`): a count x BUCKETS array (see merge_span)."""
    first, compact = merge_span(groups, stored, count)
    merged = np.zeros((count, BUCKETS), dtype=np.int64)
    merged[:, first : first + compact.shape[1]] = compact
    return merged


def merge_span(
    groups: Sequence[int],
    stored: Sequence[bytes | memoryview | None],
    count: int,
    also: Sequence[int] = (),
) -> tuple[int, np.ndarray]:
    """Stored histograms summed per group, over the buckets they use: (first, a count x width
    array whose column j is bucket first + j), the span widened to the buckets `also` (where the
    caller adds counts of its own). One pass of NumPy over all their counts (a stored histogram is
    whole 4-byte words, the first one the index of its first bucket). The span, not all BUCKETS
    (1,397): latencies of one service span a few hundred buckets, and the cells of a 7-day reading
    by hour (1,160 at 10 million calls) summed over all buckets cost ~20 ms, most of it zeros."""
    kept = [(group, bytes(histogram)) for group, histogram in zip(groups, stored, strict=True) if histogram]
    low = min(also, default=BUCKETS)
    high = max(also, default=-1) + 1
    if not kept:
        first = min(low, BUCKETS - 1) if high > 0 else 0
        return first, np.zeros((count, max(high - first, 0)), dtype=np.int64)
    words = np.frombuffer(b"".join(blob for _group, blob in kept), dtype=_COUNTS)
    lengths = np.fromiter((len(blob) // 4 for _group, blob in kept), dtype=np.int64, count=len(kept))
    owners = np.fromiter((group for group, _blob in kept), dtype=np.int64, count=len(kept))
    headers = np.cumsum(lengths) - lengths
    firsts = words[headers].view(_HEADER).astype(np.int64)
    first = min(int(firsts.min()), low)
    width = max(int((firsts + lengths - 1).max()), high) - first
    # Word i of histogram h lands in cell owners[h] * width + firsts[h] - first + (i - headers[h] - 1):
    # a base per histogram, repeated, plus the word's index (few temporaries the size of `words`:
    # gathering per word cost ~10 ms for 1,155 histograms, this ~1 ms).
    cells = np.repeat(owners * width + firsts - first - headers - 1, lengths)
    cells += np.arange(len(words))
    cells[headers] = 0  # the headers are no counts
    counts = words.astype(np.float64)
    counts[headers] = 0
    summed = np.bincount(cells, weights=counts, minlength=count * width)
    return first, summed.astype(np.int64).reshape(count, width)


@dataclass
class Words:
    """Histogram counts as parallel arrays, one entry per count: the cell it belongs to, its bucket
    (as an offset from `first`, the lowest bucket used; `width` buckets in all) and its count
    (float64, as np.bincount weighs: whole numbers, exact below 2**53), unpacked once from stored
    histograms (unpack) and summed per group of cells on demand (summed_per_group). A reading by
    hour of 7 days at 10,000,000 calls holds ~125,000 counts (zeros left out): merging them into a
    dense cells x buckets array (1,141 x 396) and then adding its rows per group (by period, over
    the window) moved several times that many numbers; each grouping now sums the counts into its
    own few rows."""

    cells: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray
    first: int = 0
    width: int = 0

    def summed_per_group(self, group_of: np.ndarray, count: int) -> tuple[int, np.ndarray]:
        """The counts summed per group (`group_of[cell]`, 0 to count - 1; -1: left out): (first, a
        count x width int64 array whose column j is bucket first + j), over the buckets of all cells."""
        if not self.width:
            return self.first, np.zeros((count, 0), dtype=np.int64)
        # Left-out cells go to one more group, dropped at the end: no masking of the counts.
        groups = np.where(group_of < 0, count, group_of)
        index = groups[self.cells]
        index *= self.width
        index += self.offsets
        summed = np.bincount(index, weights=self.counts, minlength=(count + 1) * self.width)
        return self.first, summed[: count * self.width].astype(np.int64).reshape(count, self.width)


def unpack(groups: Sequence[int], stored: Sequence[bytes | memoryview | None], also: Sequence[tuple] = ()) -> Words:
    """The counts of stored histograms (`groups[i]` the cell of `stored[i]`) as Words, then the
    (cell, bucket, count) triples `also` (counts of raw rows, negative for rows subtracted)."""
    kept = [(group, bytes(histogram)) for group, histogram in zip(groups, stored, strict=True) if histogram]
    extra = np.array(also, dtype=np.int64).reshape(-1, 3)
    cells, buckets, counts = extra[:, 0], extra[:, 1], extra[:, 2].astype(np.float64)
    if kept:
        owners, blobs = zip(*kept, strict=True)
        words = np.frombuffer(b"".join(blobs), dtype=_COUNTS)
        lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)) // 4
        headers = np.cumsum(lengths) - lengths
        # Only the non-zero counts (half the words of hourly histograms) are looked at: each one's
        # histogram (a 4-byte index per word, the one array the size of `words`) and from there
        # its cell and its bucket, firsts[h] + (i - headers[h] - 1) for word i of histogram h. A
        # 7-day reading by hour at 10,000,000 calls: 235,000 words, 126,000 counted.
        counted = words != 0
        counted[headers] = False  # the headers are no counts
        index = np.flatnonzero(counted)
        histogram = np.repeat(np.arange(len(blobs), dtype=np.int32), lengths)[index]
        base = headers + 1 - words[headers].view(_HEADER).astype(np.int64)
        cells = np.concatenate([np.asarray(owners, dtype=np.int64)[histogram], cells])
        buckets = np.concatenate([index - base[histogram], buckets])
        counts = np.concatenate([words[index].astype(np.float64), counts])
    if not len(buckets):
        return Words(cells, buckets, counts)
    first = int(buckets.min())
    buckets -= first
    return Words(cells, buckets, counts, first, int(buckets.max()) + 1)


# What each bucket stands for, computed once by bucket_value (so the percentiles of many
# histograms at once are the same floats as one at a time).
_BUCKET_VALUES = np.array([bucket_value(index) for index in range(BUCKETS)])


def percentiles_per_row(first: int, span: np.ndarray, fractions: Sequence[float]) -> list[list[float | None]]:
    """percentiles() of each row of `span` (column j is bucket first + j; the buckets outside it
    empty), all rows at once: the same floats, the same rule."""
    count = span.shape[0]
    if not span.shape[1]:
        return [[None] * len(fractions) for _row in range(count)]
    cumulative = np.cumsum(span, axis=1)
    totals = cumulative[:, -1]
    answers = []
    for fraction in fractions:
        position = (totals - 1) * fraction
        lower = np.floor(position).astype(np.int64)
        upper = np.minimum(lower + 1, totals - 1)
        # searchsorted(side="right") on a row: how many of its cumulative counts are <= the rank.
        low = _BUCKET_VALUES[np.minimum(first + (cumulative <= lower[:, None]).sum(axis=1), BUCKETS - 1)]
        high = _BUCKET_VALUES[np.minimum(first + (cumulative <= upper[:, None]).sum(axis=1), BUCKETS - 1)]
        answers.append((low + (high - low) * (position - lower)).tolist())
    empty_rows = (totals == 0).tolist()
    return [[None] * len(fractions) if empty_rows[row] else [values[row] for values in answers] for row in range(count)]


def _value_at_rank(cumulative: np.ndarray, rank: int) -> float:
    """The (bucket middle of the) value of 0-based rank `rank`."""
    return bucket_value(int(np.searchsorted(cumulative, rank, side="right")))


def percentiles(dense: np.ndarray, fractions: Sequence[float]) -> list[float | None]:
    """Percentiles (fractions 0-1) of a histogram, interpolated between closest ranks."""
    cumulative = np.cumsum(dense)
    total = int(cumulative[-1]) if len(cumulative) else 0
    if total == 0:
        return [None] * len(fractions)
    answers = []
    for fraction in fractions:
        position = (total - 1) * fraction
        lower = math.floor(position)
        upper = min(lower + 1, total - 1)
        low, high = _value_at_rank(cumulative, lower), _value_at_rank(cumulative, upper)
        answers.append(low + (high - low) * (position - lower))
    return answers


# Windows.


@dataclass
class Split:
    """How a window is read: `days` (local dates, each whole), `hours` ([start, end) spans of whole
    UTC hours), `raw` ([start, end) spans read from the log rows), and `outside`: the parts of
    some of those hours that lie outside the window, read from the log rows and subtracted
    (subtract_edges)."""

    days: list[date] = field(default_factory=list)
    hours: list[tuple[datetime, datetime]] = field(default_factory=list)
    raw: list[tuple[datetime, datetime]] = field(default_factory=list)
    outside: list[tuple[datetime, datetime]] = field(default_factory=list)

    @property
    def uses_rollups(self) -> bool:
        return bool(self.days or self.hours)

    def rolled_up_spans(self, zone: tzinfo) -> list[tuple[datetime, datetime]]:
        """The instants the days and hours cover."""
        spans = list(self.hours)
        if self.days:
            spans.append((day_start(self.days[0], zone), day_start(self.days[-1] + timedelta(days=1), zone)))
        return spans


def day_start(day: date, zone: tzinfo) -> datetime:
    """The first instant of a local date (a midnight that does not exist is where the day starts)."""
    return datetime.combine(day, time.min, tzinfo=zone).astimezone(UTC)


def local_date(moment: datetime, zone: tzinfo) -> date:
    return moment.astimezone(zone).date()


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    floored = floor_hour(moment)
    return floored if floored == moment else floored + timedelta(hours=1)


def _whole_days(start: datetime, end: datetime, zone: tzinfo) -> tuple[list[date], datetime, datetime]:
    """The local dates whose whole day lies in [start, end), and where they begin and end."""
    first = local_date(start, zone)
    if day_start(first, zone) < start:
        first += timedelta(days=1)
    last = local_date(end, zone) - timedelta(days=1)  # the day before the one `end` falls in
    if last < first or day_start(last + timedelta(days=1), zone) > end:
        return [], end, end
    days = [first + timedelta(days=offset) for offset in range((last - first).days + 1)]
    return days, day_start(first, zone), day_start(last + timedelta(days=1), zone)


def _split_hours(start: datetime, end: datetime, split: Split) -> None:
    if start >= end:
        return
    first, last = ceil_hour(start), floor_hour(end)
    if first >= last:
        split.raw.append((start, end))
        return
    if start < first:
        split.raw.append((start, first))
    split.hours.append((first, last))
    if last < end:
        split.raw.append((last, end))


def split_window(start: datetime, end: datetime, zone: tzinfo, *, days: bool = True, hours: bool = True) -> Split:
    """Whole days (when `days`), whole UTC hours (when `hours`) and raw edges of [start, end)."""
    split = Split()
    if start >= end:
        return split
    if not hours:
        split.raw.append((start, end))
        return split
    whole_days, days_start, days_end = _whole_days(start, end, zone) if days else ([], end, end)
    if not whole_days:
        _split_hours(start, end, split)
        return split
    split.days = whole_days
    _split_hours(start, days_start, split)
    _split_hours(days_end, end, split)
    return split


def subtract_edges(split: Split, start: datetime, end: datetime, *, since: datetime) -> Split:
    """`split` of [start, end) with each raw edge that is most of its UTC hour read as the whole
    hour (roll-ups) minus the rest of that hour (`outside`, read raw and subtracted): the smaller
    side of the hour is read from the log rows. For a window ending now the rest of the current
    hour is (nearly) empty, and raw reads of recent calls are the slow ones (a page each in a
    freshly loaded table). Sums and counts subtract exactly (integers; float sums to rounding),
    histograms bucket by bucket (the difference is the kept side's histogram: the same bound).

    Only an hour that starts at or after `since` and whose rest lies wholly outside the window
    (not covered by a day or another hour), and only a span within one hour."""
    hours, raw, outside = list(split.hours), [], list(split.outside)
    for low, high in split.raw:
        hour = floor_hour(low)
        top = hour + timedelta(hours=1)
        rest = [(a, b) for a, b in ((hour, low), (high, top)) if a < b]
        eligible = (
            high <= top
            and hour >= since
            and low in (hour, start)
            and high in (top, end)
            and sum((b - a for a, b in rest), timedelta(0)) < high - low
        )
        if eligible:
            hours.append((hour, top))
            outside.extend(rest)
        else:
            raw.append((low, high))
    return Split(split.days, joined_spans(hours), raw, outside)


def joined_spans(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The spans in time order, those that touch or overlap joined: one index range and one part of
    a query each."""
    joined: list[tuple[datetime, datetime]] = []
    for low, high in sorted(spans):
        if joined and low <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(high, joined[-1][1]))
        else:
            joined.append((low, high))
    return joined


def whole_hour_offsets(zone: tzinfo, *moments: datetime) -> bool:
    """Whether the zone is a whole number of hours from UTC at these moments: then a UTC hour lies
    within one local hour (and one local day), and hourly roll-ups can be grouped by local periods."""
    return all(moment.astimezone(zone).utcoffset() % timedelta(hours=1) == timedelta(0) for moment in moments)
