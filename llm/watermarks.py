"""Rolling rows above a watermark into totals, exactly once: the machinery the Prometheus totals
(llm/prometheus.py) and the roll-ups (llm/rollups.py) share.

A watermark is the highest id of a table already added to some totals. A roll-up adds the rows
above it, up to a boundary, and moves the watermark there, in one transaction.

Why a lock around the watermark: two processes rolling up at once must not both add the same
rows. The roll-up holds the watermark row (SELECT … FOR UPDATE on PostgreSQL; SQLite's write
transaction is exclusive) while it reads, adds and moves the watermark, all in one transaction.

Why a boundary, and not simply "every id above the watermark": ids are handed out when a row is
inserted, not when it is committed. Writer A takes id 10 and commits late; writer B takes id 11
and commits first. A roll-up that saw 11 and moved the watermark past it would never count 10.
So a roll-up only goes up to an id below which every row is final: on PostgreSQL it takes a SHARE
lock on the table for an instant, which waits for the inserts in flight to commit (or roll back)
and is released at once; whatever id is the largest then can no longer be undercut. On SQLite
writers are serialised, so the largest id in the write transaction is final already. Any id
below a final boundary is final too, so a roll-up may stop short of it: `limit` bounds the rows
one call adds (a first roll-up after an upgrade must not add ten million rows inside a request).

Why a try-lock: the roll-up that follows every write must never queue writers behind it. On
PostgreSQL `try_lock=True` first takes a session advisory lock without waiting and skips when
another process is rolling up; its table lock then waits at most TRY_LOCK_TIMEOUT_MS.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import DatabaseError, connection, models, transaction
from django.db.models import Max

from llm.models import MetricWatermark

logger = logging.getLogger(__name__)

# How long a roll-up waits for inserts in flight before giving up; the next one catches up.
BOUNDARY_LOCK_TIMEOUT_MS = 2000
# The same, for the roll-up that follows a write: writers queue behind the table lock meanwhile.
TRY_LOCK_TIMEOUT_MS = 200


def final_id_boundary(model: type[models.Model], *, lock_timeout_ms: int = BOUNDARY_LOCK_TIMEOUT_MS) -> int | None:
    """The largest id of `model` below which no row can still appear; None when it is not known.

    On PostgreSQL, called outside the roll-up transaction so the table lock lasts only this.
    """
    if connection.vendor != "postgresql":
        return model.objects.aggregate(top=Max("id"))["top"] or 0
    table = connection.ops.quote_name(model._meta.db_table)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
            # SHARE conflicts with the ROW EXCLUSIVE lock every INSERT holds until its commit.
            cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")
            cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}")  # noqa: S608 - our own table name
            return cursor.fetchone()[0]
    except DatabaseError:
        logger.warning("Roll-up skipped: inserts into %s held a lock too long.", table)
        return None


@dataclass
class Claim:
    """A watermark held for update, and the ids (last_id, upto] this roll-up adds; upto is None
    when there is nothing to add (or the boundary is not known)."""

    watermark: MetricWatermark
    upto: int | None

    def advance(self) -> None:
        if self.upto is not None:
            self.watermark.last_id = self.upto
            self.watermark.save(update_fields=["last_id", "time_zone", "days_since", "updated_at"])


@contextmanager
def _advisory_try_lock(name: str) -> Iterator[bool]:
    """PostgreSQL: a session advisory lock taken without waiting; True when this process holds it."""
    if connection.vendor != "postgresql":
        yield True
        return
    key = zlib.crc32(f"llm-watermark-{name}".encode())
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        held = cursor.fetchone()[0]
    try:
        yield held
    finally:
        if held:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


@contextmanager
def claim(
    name: str, model: type[models.Model], *, limit: int | None = None, try_lock: bool = False
) -> Iterator[Claim | None]:
    """A transaction holding watermark `name` of `model`'s table; yields the Claim (None: another
    process is rolling up and `try_lock` said not to wait). Call `advance()` once the rows are added."""
    with _advisory_try_lock(name) if try_lock else _held() as held:
        if not held:
            yield None
            return
        postgres = connection.vendor == "postgresql"
        timeout = TRY_LOCK_TIMEOUT_MS if try_lock else BOUNDARY_LOCK_TIMEOUT_MS
        # On PostgreSQL the boundary comes first, in its own short transaction (see the module doc).
        boundary = final_id_boundary(model, lock_timeout_ms=timeout) if postgres else None
        with transaction.atomic():
            watermark = _held_watermark(name)
            if not postgres:
                boundary = final_id_boundary(model)  # SQLite: inside the (exclusive) write transaction
            upto = None
            if boundary is not None and boundary > watermark.last_id:
                upto = boundary if limit is None else _limited_end(model, watermark.last_id, boundary, limit)
            yield Claim(watermark, upto)


def _held_watermark(name: str) -> MetricWatermark:
    """The watermark row, locked (FOR UPDATE) until the transaction ends; created the first time."""
    watermark = MetricWatermark.objects.select_for_update().filter(name=name).first()
    if watermark is None:
        MetricWatermark.objects.get_or_create(name=name)  # a concurrent first roll-up may win the insert
        watermark = MetricWatermark.objects.select_for_update().get(name=name)
    return watermark


def _limited_end(model: type[models.Model], last_id: int, boundary: int, limit: int) -> int:
    """Where a limited roll-up stops: `limit` ids past the first row above `last_id`, so a gap in the
    ids (rows purged before they were counted, a sequence jump) does not cost empty roll-ups. No
    query when the whole range fits in the limit (a roll-up after writes, usually)."""
    if boundary - last_id <= limit:
        return boundary
    first = model.objects.filter(id__gt=last_id, id__lte=boundary).aggregate(first=models.Min("id"))["first"]
    return boundary if first is None else min(boundary, first - 1 + limit)


@contextmanager
def _held() -> Iterator[bool]:
    yield True


def counted_up_to(name: str) -> int:
    """The watermark: rows with a larger id are not in the totals yet."""
    watermark = MetricWatermark.objects.filter(name=name).first()
    return watermark.last_id if watermark else 0
