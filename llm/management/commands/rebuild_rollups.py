"""Rebuild the roll-ups from the logs (after an upgrade, or a TIME_ZONE change)."""

from __future__ import annotations

from datetime import date

from django.core.management.base import BaseCommand, CommandError

from llm import rollups


def parse_day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--since: {value!r} is not a date (YYYY-MM-DD).") from None


class Command(BaseCommand):
    help = (
        "Recompute the hourly, daily and per-user roll-ups from the logs, from --since (a date in TIME_ZONE; "
        "default: the oldest log's day, so history whose logs purge_logs deleted is kept). Idempotent; one "
        "transaction, so figures read the old roll-ups until it ends."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--since", type=str, metavar="YYYY-MM-DD", help="First day to rebuild.")

    def handle(self, *args, since: str | None, **options) -> None:
        verbosity = options.get("verbosity", 1)
        progress = self.stdout.write if verbosity >= 2 else None
        day = parse_day(since) if since else None
        result = rollups.rebuild(day, progress=progress or (lambda message: None))
        self.stdout.write(f"Rolled up {result.days} days from {result.since} (logs up to id {result.upto}).")
