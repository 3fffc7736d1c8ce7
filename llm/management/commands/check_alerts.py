"""Evaluate the active alert rules once, record state changes and send the notices.

Meant for cron (every minute is fine): see the README's "Alerts" section. Exit status 0 when
every rule was evaluated, even if a notification failed (that is recorded on the AlertLog);
non-zero when it could not run (bad arguments, no database, a rule that could not be evaluated).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from llm import alerts, budgets, notifiers, rollups
from llm.models import ALERT_WINDOW_MINUTES_MAX, AlertRule


def window_minutes(value: str) -> int:
    minutes = int(value)
    if not 1 <= minutes <= ALERT_WINDOW_MINUTES_MAX:
        raise ValueError(minutes)
    return minutes


class Command(BaseCommand):
    help = "Evaluate active alert rules; write an AlertLog and notify on each state change."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--time-window",
            type=window_minutes,
            metavar="MIN",
            help=f"Evaluate every rule over this many minutes (1 to {ALERT_WINDOW_MINUTES_MAX}) instead of its own.",
        )
        parser.add_argument(
            "--create-defaults", action="store_true", help="First create the default rules that do not exist yet."
        )
        parser.add_argument("--dry-run", action="store_true", help="Evaluate and print; write and send nothing.")
        parser.add_argument("--rule", type=int, metavar="ID", help="Evaluate only this active rule.")

    def handle(self, *args, time_window: int | None, create_defaults: bool, dry_run: bool, rule: int | None, **options):
        if not dry_run:
            # Cron's minute is when the roll-ups catch up on what the writes' own roll-ups skipped.
            rollups.roll_up(limit=rollups.CATCH_UP_LIMIT)
        now = timezone.now()
        if create_defaults:
            self.create_defaults(dry_run)
        if rule is None:
            self.check_budgets(now, dry_run)
        rules = self.rules_to_check(rule)
        if not rules:
            self.stdout.write("No active alert rules. Add some in admin, or run check_alerts --create-defaults.")
            return
        run = alerts.check_rules(rules, now, window_minutes=time_window, dry_run=dry_run)
        self.report(run, dry_run)

    def check_budgets(self, now, dry_run: bool) -> None:
        """Each budget's warning percentages reached this period, sent once (llm/budgets.py)."""
        for line in budgets.check_budgets(now, dry_run=dry_run):
            self.stdout.write(line)

    def create_defaults(self, dry_run: bool) -> None:
        if dry_run:
            existing = set(AlertRule.objects.values_list("name", flat=True))
            names = [spec["name"] for spec in alerts.DEFAULT_RULES if spec["name"] not in existing]
            self.stdout.write(f"Would create {len(names)} default rule(s): {', '.join(names) or 'none'}.")
        else:
            names = [created.name for created in alerts.create_default_rules()]
            self.stdout.write(f"Created {len(names)} default rule(s): {', '.join(names) or 'none'}.")
        # Said once, when the rules are set up, not on every cron run.
        active = AlertRule.objects.active().prefetch_related("channels").order_by("id")
        unreached = [r.name for r in active if not notifiers.channel_names(r)]
        if unreached:
            self.stdout.write(
                f"{len(unreached)} active rule(s) reach no one ({alerts.NO_CHANNEL_HELP}): "
                f"they are checked and recorded, nothing is sent. Try it with the alerts page's Send test."
            )

    def rules_to_check(self, rule_id: int | None) -> list[AlertRule]:
        """The active rules, or only `--rule ID` (which must be one of them)."""
        rules = AlertRule.objects.active().order_by("id")
        if rule_id is not None:
            rules = rules.filter(pk=rule_id)
            if not rules.exists():
                raise CommandError(f"No active alert rule with id {rule_id}.")
        return list(rules)

    def report(self, run: alerts.CheckRun, dry_run: bool) -> None:
        """A line per rule and per notice sent; non-zero exit when a rule could not be evaluated."""
        for outcome in run.outcomes:
            self.stdout.write(outcome.summary(dry_run))
        for alert_rule, error in run.failures:
            self.stderr.write(f"#{alert_rule.pk} {alert_rule.name}: could not evaluate: {error}")
        for alert in run.deliveries:
            self.stdout.write("  " + alerts.delivery_summary(alert))
        if run.failures:
            failed = ", ".join(str(alert_rule.pk) for alert_rule, _ in run.failures)
            raise CommandError(f"{len(run.failures)} rule(s) could not be evaluated: {failed}.")
