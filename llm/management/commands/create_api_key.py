from __future__ import annotations

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from llm.models import APIKey


class Command(BaseCommand):
    requires_system_checks = []  # keep the output clean: it is read by scripts
    help = "Create an API key for machine clients and print it once on stdout."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="What the key is for, e.g. 'billing-service'.")
        parser.add_argument(
            "--scopes",
            default=APIKey.DEFAULT_SCOPES,
            help=f"Comma-separated, among {', '.join(APIKey.Scope.values)} (default: {APIKey.DEFAULT_SCOPES}: "
            "the key can only report calls).",
        )
        parser.add_argument(
            "--expires-in-days", type=int, default=None, help="The key answers 401 after this many days."
        )

    def handle(self, *args, name: str, scopes: str, expires_in_days: int | None, **options) -> None:
        if expires_in_days is not None and not 1 <= expires_in_days <= 36_500:
            raise CommandError("--expires-in-days must be between 1 and 36500.")
        expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
        try:
            api_key, raw_key = APIKey.generate(name, scopes, expires_at=expires_at)
        except ValidationError as error:
            raise CommandError(f"--scopes: {' '.join(error.messages)}") from error
        until = f", expires {api_key.expires_at:%Y-%m-%d %H:%M} UTC" if api_key.expires_at else ""
        self.stderr.write(
            f"Created API key #{api_key.pk} “{name}” with scopes {api_key.scopes}{until}. "
            "Store it now: it is not shown again."
        )
        self.stdout.write(raw_key)
