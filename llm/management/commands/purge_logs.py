from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from llm import retention


class Command(BaseCommand):
    help = (
        "Delete logs older than the retention period, their feedback, the traces' context spans and old "
        "acknowledged alerts, in batches. Prometheus counters keep counting what is deleted."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--older-than",
            type=int,
            default=None,
            metavar="DAYS",
            help=f"Age in days (default RETENTION_DAYS, now {settings.RETENTION_DAYS}).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")
        parser.add_argument(
            "--batch-size", type=int, default=retention.BATCH_SIZE, help="Rows deleted per transaction."
        )

    def handle(self, *args, older_than: int | None, dry_run: bool, batch_size: int, **options) -> None:
        days = settings.RETENTION_DAYS if older_than is None else older_than
        if days < 1:
            raise CommandError("--older-than must be at least 1 day.")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        result = retention.purge(days, dry_run=dry_run, batch_size=batch_size)
        verb = "Would delete" if dry_run else "Deleted"
        self.stdout.write(
            f"{verb} {result.logs} logs, {result.feedback} feedback and {result.alert_logs} acknowledged alerts "
            f"older than {days} days (before {result.cutoff:%Y-%m-%d %H:%M} UTC)"
            + ("" if dry_run else f" in {result.batches} batches")
            + f". Traces' context spans: {result.spans}."
        )
