from django.core.management.base import BaseCommand

from llm.models import APIKey


class Command(BaseCommand):
    requires_system_checks = []  # keep the output clean: it is read by scripts
    help = "Create an API key for machine clients and print it once on stdout."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="What the key is for, e.g. 'billing-service'.")

    def handle(self, *args, name: str, **options) -> None:
        api_key, raw_key = APIKey.generate(name)
        self.stderr.write(f"Created API key #{api_key.pk} “{name}”. Store it now: it is not shown again.")
        self.stdout.write(raw_key)
