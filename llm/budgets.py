"""Budgets: what each one has spent and is forecast to spend this period, the hard limit that the
prompt path asks about, and the warnings check_alerts sends once per percentage and period.

Spend and forecasts come from llm/forecast.py, which reads all budgets of a period in a few
queries (roll-ups for all-calls and model scopes, the calls for user, tag and API key scopes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from llm import forecast, formatting, notifiers, rollups
from llm.models import (
    NOT_SENT_NO_CHANNEL,
    Budget,
    BudgetWarning,
    LLMRequestLog,
    NotificationChannel,
    in_atomic_block,
    split_email_list,
)
from llm.providers import ProviderError

logger = logging.getLogger(__name__)


def scope_of(budget: Budget) -> forecast.Scope:
    return forecast.Scope(budget.scope, budget.scope_value)


def spent(budgets: list[Budget], now: datetime) -> dict[int, Decimal]:
    """USD each budget's scope has spent in its current period (exact): one reading of hourly
    costs for all of them (llm.forecast.read)."""
    reading = forecast.read([scope_of(budget) for budget in budgets], [b.period for b in budgets], now, history=False)
    return {budget.pk: rollups.usd(reading.spent_units(scope_of(budget), budget.period)) for budget in budgets}


@dataclass(frozen=True)
class BudgetStatus:
    """A budget's current period: spend so far and the forecast for the period's end."""

    spent_usd: Decimal
    forecast: forecast.Forecast
    amount_usd: Decimal

    @property
    def period_start(self) -> datetime:
        return self.forecast.start

    @property
    def period_end(self) -> datetime:
        return self.forecast.end

    @property
    def percent_used(self) -> float:
        return float(self.spent_usd * 100 / self.amount_usd) if self.amount_usd else 0.0

    @property
    def forecast_percent(self) -> float:
        return self.forecast.forecast * 100 / float(self.amount_usd) if self.amount_usd else 0.0


def statuses(budgets: list[Budget], now: datetime, reading: forecast.Reading | None = None) -> dict[int, BudgetStatus]:
    """Spend and forecast of each budget: one reading of hourly costs for all of them, whatever
    their number, scopes and periods (llm.forecast.read), or `reading` when it covers them."""
    if reading is None:
        reading = forecast.read([scope_of(budget) for budget in budgets], [b.period for b in budgets], now)
    answer = {}
    for budget in budgets:
        scope = scope_of(budget)
        spent_usd = rollups.usd(reading.spent_units(scope, budget.period))
        answer[budget.pk] = BudgetStatus(spent_usd, reading.forecast(scope, budget.period), budget.amount_usd)
    return answer


# The hard limit on the prompt path.
#
# Each process keeps the list of hard-limit budgets that are spent, read again at most every
# HARD_LIMIT_CACHE_SECONDS (one query when no budget has a hard limit; a few more when some do),
# at once in the process that saves or deletes a Budget, and as soon as a listed budget's period
# has ended. The bound: a budget stops calls at most HARD_LIMIT_CACHE_SECONDS after its spend
# reaches the amount in each worker (plus the calls already under way), so it overshoots by what
# its scope spends in that time. Inside a transaction the list is read afresh, as the price table.
HARD_LIMIT_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Spent:
    budget: Budget
    spent_usd: Decimal
    period_end: datetime


_spent_cache: tuple[float, list[Spent]] | None = None


def spent_hard_limits(now: datetime) -> list[Spent]:
    """The hard-limit budgets whose spend has reached their amount this period (cached, see above)."""
    global _spent_cache
    in_transaction = in_atomic_block()
    if not in_transaction and (known := spent_hard_limits_if_known(now)) is not None:
        return known
    budgets = list(Budget.objects.filter(hard_limit=True))
    found = spent(budgets, now) if budgets else {}
    listed = [
        Spent(budget, found[budget.pk], forecast.period_bounds(budget.period, now)[1])
        for budget in budgets
        if found[budget.pk] >= budget.amount_usd
    ]
    if not in_transaction:
        _spent_cache = (time.monotonic() + HARD_LIMIT_CACHE_SECONDS, listed)
    return listed


def spent_hard_limits_if_known(now: datetime) -> list[Spent] | None:
    """spent_hard_limits() when this process's list answers it without a query; None otherwise
    (for the prompt's fast path on the event loop, which must not wait on the database)."""
    cached = _spent_cache
    if cached is not None and cached[0] > time.monotonic() and all(entry.period_end > now for entry in cached[1]):
        return cached[1]
    return None


def forget_spent(**kwargs: Any) -> None:
    global _spent_cache
    _spent_cache = None


models.signals.post_save.connect(forget_spent, sender=Budget, dispatch_uid="llm_budgets_forget_on_save")
models.signals.post_delete.connect(forget_spent, sender=Budget, dispatch_uid="llm_budgets_forget_on_delete")


def covering(
    spent_budgets: list[Spent], *, model_name: str, user_id: str, tags: dict[str, str], api_key_name: str
) -> Spent | None:
    """The first of these spent budgets whose scope covers a call with these labels, if any."""
    for entry in spent_budgets:
        if entry.budget.covers(model_name=model_name, user_id=user_id, tags=tags, api_key_name=api_key_name):
            return entry
    return None


def refusal(
    *, model_name: str, user_id: str, tags: dict[str, str], api_key_name: str, now: datetime | None = None
) -> ProviderError | None:
    """Why a call with these labels must not reach the vendor (a spent hard-limit budget of its
    scope), as the error the proxy answers and logs; None: let it through."""
    now = now or timezone.now()
    entry = covering(
        spent_hard_limits(now), model_name=model_name, user_id=user_id, tags=tags, api_key_name=api_key_name
    )
    if entry is None:
        return None
    return ProviderError(
        error_type=LLMRequestLog.ErrorType.BUDGET_EXCEEDED,
        message=refusal_message(entry),
        retry_after_seconds=max((entry.period_end - now).total_seconds(), 1.0),
    )


SCOPE_WORDS = {"model": "model", "user": "user", "tag": "tag", "api_key": "API key"}


def describe_scope(budget: Budget) -> str:
    """ "all calls", "model qwen/qwen3-32b", "tag feature:chat", "API key ci"…"""
    if budget.scope == Budget.Scope.ALL:
        return "all calls"
    return f"{SCOPE_WORDS.get(budget.scope, budget.scope)} {budget.scope_value}"


def refusal_message(entry: Spent) -> str:
    budget = entry.budget
    until = timezone.localtime(entry.period_end).strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"Budget “{budget.name}” (#{budget.pk}) is spent: {formatting.usd(float(entry.spent_usd))} of "
        f"{formatting.usd(float(budget.amount_usd))} this {budget.period}, and it has a hard limit, so calls "
        f"for {describe_scope(budget)} are refused until {until}. Raise its amount or turn its hard limit off "
        "(admin, or PATCH /api/budgets/<id>/)."
    )


# Warnings, from check_alerts.


def check_budgets(now: datetime, *, dry_run: bool = False, base: str | None = None) -> list[str]:
    """Send each warning percentage a budget has reached, once per period; answers a line per
    budget and per notice for the command's output. A percentage is claimed by inserting its
    BudgetWarning (unique per budget, period and percentage) before anything is sent, so two
    overlapping runs never send it twice."""
    budgets = list(Budget.objects.prefetch_related("channels").order_by("id"))
    if not budgets:
        return []
    found = spent(budgets, now)
    starts = {budget.pk: forecast.period_bounds(budget.period, now)[0] for budget in budgets}
    already = set(
        BudgetWarning.objects.filter(period_start__in=set(starts.values())).values_list(
            "budget_id", "period_start", "percent"
        )
    )
    lines = []
    for budget in budgets:
        used = found[budget.pk] * 100 / budget.amount_usd
        lines.append(
            f"budget #{budget.pk} {budget.name}: {formatting.usd(float(found[budget.pk]))} of "
            f"{formatting.usd(float(budget.amount_usd))} this {budget.period} ({formatting.percent(float(used))})"
        )
        due = [
            percent
            for percent in sorted(budget.warn_at_percent)
            if used >= percent and (budget.pk, starts[budget.pk], percent) not in already
        ]
        for percent in due:
            if dry_run:
                lines.append(f"  would warn at {percent}%")
                continue
            warning = claim_warning(budget, starts[budget.pk], percent, found[budget.pk], now)
            if warning is not None:
                deliver_warning(warning, base)
                lines.append(f"  warned at {percent}%: {warning.delivery_summary}")
    return lines


def claim_warning(budget: Budget, period_start: datetime, percent: int, spent_usd: Decimal, now: datetime):
    """The new BudgetWarning, or None when another run has claimed this percentage already."""
    try:
        with transaction.atomic():
            return BudgetWarning.objects.create(
                budget=budget, period_start=period_start, percent=percent, spent_usd=spent_usd, created_at=now
            )
    except IntegrityError:
        return None


def warning_text(warning: BudgetWarning) -> str:
    budget = warning.budget
    spent_text = formatting.usd(float(warning.spent_usd))
    limit = " It has a hard limit: calls in its scope are refused once it is spent." if budget.hard_limit else ""
    return (
        f"Budget “{budget.name}” reached {warning.percent}% this {budget.period}: {spent_text} of "
        f"{formatting.usd(float(budget.amount_usd))} for {describe_scope(budget)}.{limit}"
    )


def deliver_warning(warning: BudgetWarning, base: str | None = None) -> dict[str, dict[str, Any]]:
    """Send through the budget's e-mail, webhook and named channels (each as alert notices go:
    llm/notifiers.py) and record what happened to each."""
    text = warning_text(warning)
    link = (base or notifiers.base_url()) + "/"
    results = {
        label: notifiers.attempt(send, what=f"Budget warning {warning.pk}", label=label, channel=channel)
        for label, send, channel in _targets(warning, text, link)
    }
    warning.notifications = results
    warning.delivered_at = timezone.now()
    warning.delivery_note = "" if results else NOT_SENT_NO_CHANNEL
    BudgetWarning.objects.filter(pk=warning.pk).update(
        notifications=results, delivered_at=warning.delivered_at, delivery_note=warning.delivery_note
    )
    return results


Send = Callable[[], dict[str, Any]]


def _targets(warning: BudgetWarning, text: str, link: str) -> list[tuple[str, Send, NotificationChannel | None]]:
    """(label, send, named channel or None) for each place the warning goes, labelled as alert
    notices are: "email", "webhook", "<kind>:<channel name>"."""
    budget = warning.budget
    payload = _payload(warning, text, link)
    targets: list[tuple[str, Send, NotificationChannel | None]] = []
    if recipients := budget.recipients:
        targets.append(("email", lambda: _email(recipients, text, link), None))
    if url := budget.effective_webhook_url:
        targets.append(("webhook", lambda: {"url": url, **notifiers.post_json(url, payload)}, None))
    for channel in budget.channels.all():
        if channel.is_active:
            send = _channel_send(channel, warning, text, link, payload)
            targets.append((f"{channel.kind}:{channel.name}", send, channel))
    return targets


def _channel_send(channel: NotificationChannel, warning: BudgetWarning, text: str, link: str, payload: dict) -> Send:
    kinds = NotificationChannel.Kind
    senders: dict[str, Send] = {
        kinds.EMAIL: lambda: _email(split_email_list(channel.target), text, link),
        kinds.SLACK: lambda: notifiers.post_json(channel.target, payload),
        kinds.WEBHOOK: lambda: {"signed": True, **notifiers.post_json(channel.target, payload, secret=channel.secret)},
        kinds.PAGERDUTY: lambda: _pagerduty(channel.routing_key, warning, text, link),
    }
    return senders[channel.kind]


def _email(recipients: list[str], text: str, link: str) -> dict[str, Any]:
    body = f"{text}\n\nOverview: {link}\n"
    EmailMessage(
        subject=notifiers.subject_line(f"[BUDGET] {text}"),
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
    ).send(fail_silently=False)
    return {"recipients": recipients}


def _payload(warning: BudgetWarning, text: str, link: str) -> dict[str, Any]:
    budget = warning.budget
    return {
        "text": f"[BUDGET] {text} <{link}|Open overview>",
        "status": "budget_warning",
        "budget": budget.name,
        "budget_id": budget.pk,
        "percent": warning.percent,
        "spent_usd": float(warning.spent_usd),
        "amount_usd": float(budget.amount_usd),
        "period": budget.period,
        "period_start": warning.period_start.isoformat(),
        "message": text,
        "link": link,
    }


def pagerduty_dedup_key(warning: BudgetWarning) -> str:
    """One PagerDuty incident per budget and period: the 80 % and 100 % warnings of a month update
    the same incident rather than opening two."""
    return f"llm-observatory/budget-{warning.budget_id}/{warning.period_start:%Y-%m-%d}"


def _pagerduty(routing_key: str, warning: BudgetWarning, text: str, link: str) -> dict[str, Any]:
    budget = warning.budget
    event = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": pagerduty_dedup_key(warning),
        "payload": {
            "summary": notifiers.subject_line(f"[BUDGET] {text}", limit=1024),
            "source": urlsplit(link).hostname or "llm-observatory",
            "severity": "critical" if warning.percent >= 100 else "warning",
            "timestamp": warning.created_at.isoformat(),
            "component": describe_scope(budget),
            "class": "budget",
            "custom_details": {
                "budget": budget.name,
                "budget_id": budget.pk,
                "percent": warning.percent,
                "spent_usd": float(warning.spent_usd),
                "amount_usd": float(budget.amount_usd),
                "period_start": warning.period_start.isoformat(),
            },
        },
        "links": [{"href": link, "text": "Open overview"}],
    }
    result = notifiers.post_json(settings.PAGERDUTY_EVENTS_URL, event)
    return {"event_action": "trigger", "dedup_key": event["dedup_key"], **result}


def latest_warnings(budget_ids: list[int]) -> dict[int, BudgetWarning]:
    """The newest warning of each budget (one query), for the overview's cards."""
    latest: dict[int, BudgetWarning] = {}
    if not budget_ids:  # no budget, no warning: no query (the overview without budgets)
        return latest
    # The last five weeks hold every budget's current period (a month at most).
    recent = BudgetWarning.objects.filter(budget_id__in=budget_ids, created_at__gte=timezone.now() - timedelta(days=35))
    for warning in recent.order_by("budget_id", "-created_at", "-id"):
        latest.setdefault(warning.budget_id, warning)
    return latest
