"""Evaluate the active alert rules once, record state changes and send the notices.

Meant for cron (every minute is fine): see the README's "Alerts" section. Exit status 0 when
every rule was evaluated, even if a notification failed (that is recorded on the AlertLog);
non-zero when it could not run (bad arguments, no database, a rule that could not be evaluated).
"""

from __future__ import annotations

import logging

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from llm import alerts
from llm.models import ALERT_WINDOW_MINUTES_MAX, AlertLog, AlertRule

logger = logging.getLogger(__name__)


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
        now = timezone.now()
        if create_defaults:
            if dry_run:
                existing = set(AlertRule.objects.values_list("name", flat=True))
                names = [spec["name"] for spec in alerts.DEFAULT_RULES if spec["name"] not in existing]
                self.stdout.write(f"Would create {len(names)} default rule(s): {', '.join(names) or 'none'}.")
            else:
                names = [created.name for created in alerts.create_default_rules()]
                self.stdout.write(f"Created {len(names)} default rule(s): {', '.join(names) or 'none'}.")

        rules = AlertRule.objects.active().order_by("id")
        if rule is not None:
            rules = rules.filter(pk=rule)
            if not rules.exists():
                raise CommandError(f"No active alert rule with id {rule}.")
        rules = list(rules)
        if not rules:
            self.stdout.write("No active alert rules. Add some in admin, or run check_alerts --create-defaults.")
            return

        failed = []
        outcomes = []
        for alert_rule in rules:
            try:
                outcome = alerts.check_rule(alert_rule, now, window_minutes=time_window, dry_run=dry_run)
            except Exception as exc:  # noqa: BLE001 - one broken rule must not keep the others from being checked
                logger.exception("Could not evaluate alert rule %s", alert_rule.pk)
                failed.append(alert_rule)
                error = f"{type(exc).__name__}: {exc}"
                self.stderr.write(f"#{alert_rule.pk} {alert_rule.name}: could not evaluate: {error}")
                continue
            outcomes.append(outcome)
            self.stdout.write(self.summary(outcome, dry_run))

        if not dry_run:
            # After every state is written: sending may take a while and must not delay evaluation.
            for alert in alerts.deliver_pending(rules, now):
                self.stdout.write(self.delivery_summary(alert))
        if failed:
            raise CommandError(f"{len(failed)} rule(s) could not be evaluated: {', '.join(str(r.pk) for r in failed)}.")

    @staticmethod
    def summary(outcome: alerts.CheckOutcome, dry_run: bool) -> str:
        evaluation = outcome.evaluation
        rule = evaluation.rule
        metric = rule.metric_type
        line = (
            f"#{rule.pk} {rule.name} [{metric}]: value {alerts.format_value(metric, evaluation.value)}, "
            f"threshold {alerts.format_value(metric, rule.threshold)}, {evaluation.requests} requests "
            f"in {evaluation.window_minutes} min: {evaluation.state.upper()}"
        )
        if evaluation.note:
            line += f" ({evaluation.note})"
        if outcome.notice:
            verb = "would notify" if dry_run else "notice"
            line += f"; {verb}: {outcome.notice}"
        return line

    @staticmethod
    def delivery_summary(alert: AlertLog) -> str:
        channels = ", ".join(
            f"{name} {result['status']}" + (f" ({result['error']})" if result.get("error") else "")
            for name, result in alert.notifications.items()
        )
        return f"  alert #{alert.pk} ({alert.kind}, {alert.alert_rule.name}): {channels or 'no channel configured'}"
