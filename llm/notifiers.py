"""Alert channels: e-mail and webhook. Each notifier sends one `AlertLog` notice.

`notify_all(alert)` tries every channel configured for the alert's rule and answers what
happened to each (sent, or the error); one failing channel never stops the others. It is
called by `llm.alerts.deliver`, after the notice has been claimed, and by
`llm.alerts.send_test_notification`. Not from `save()` or a signal; from a request handler only
when a user asked for exactly that (a test notification, "check now"), which the timeouts and
bounded tries below keep short.

A rule has a channel when e-mail is on and has recipients (its own or ALERT_EMAIL_RECIPIENTS),
or when it has a webhook (its own or ALERT_WEBHOOK_URL). Without one, nothing is attempted.

Links in notices start with `base_url()`: SITE_URL when set, else the origin of the request that
asked (test, check now), else the origin the dashboard was last served from, else
DEFAULT_BASE_URL.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import httpx
from django.conf import settings
from django.core.mail import EmailMessage
from django.http import HttpRequest
from django.utils import timezone

from llm import formatting
from llm.ingest_limits import CONTROL_CHARACTER
from llm.models import AlertLog, AlertRule, DashboardSettings

logger = logging.getLogger(__name__)

# Where `make run` serves by default: the last resort for links when nothing better is known.
DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class DeliveryError(Exception):
    def __init__(self, message: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


def post_json(
    url: str,
    payload: dict[str, Any],
    *,
    timeout: float | None = None,
    tries: int | None = None,
    retry_delay: float | None = None,
) -> dict[str, Any]:
    """POST `payload` as JSON; answers {"http_status", "attempts"} or raises DeliveryError.

    Retries connection errors, timeouts, 429 and 5xx answers, at most `tries` times in all;
    any other non-2xx answer fails at once (retrying a 404 will not fix it). Redirects are not
    followed: a webhook that moved should be updated, not chased.
    """
    # Each try waits at most the timeout, and there are at most `tries` of them, so one dead
    # receiver delays a check_alerts run by a bounded time. Arguments override the settings.
    if timeout is None:
        timeout = settings.ALERT_WEBHOOK_TIMEOUT_SECONDS
    if tries is None:
        tries = settings.ALERT_WEBHOOK_TRIES
    if retry_delay is None:
        retry_delay = settings.ALERT_WEBHOOK_RETRY_DELAY_SECONDS
    tries = max(1, tries)
    if not url.startswith(("http://", "https://")):
        raise DeliveryError(f"Not an http(s) URL: {url!r}", attempts=0)
    error = ""
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for attempt in range(1, tries + 1):
            try:
                response = client.post(url, json=payload, headers={"User-Agent": "llm-observatory-alerts"})
            except httpx.TimeoutException:
                error = f"timed out after {timeout:g}s"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return {"http_status": response.status_code, "attempts": attempt}
                error = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code != 429 and response.status_code < 500:
                    raise DeliveryError(error, attempts=attempt)
            if attempt < tries and retry_delay > 0:
                time.sleep(retry_delay * attempt)  # a short, bounded backoff between tries
    raise DeliveryError(error, attempts=tries)


def request_origin(request: HttpRequest) -> str:
    """scheme://host[:port] the request was sent to (its Host is already checked by ALLOWED_HOSTS)."""
    return f"{request.scheme}://{request.get_host()}"


def base_url(request_origin: str = "") -> str:
    """Where links in notices point: SITE_URL when set, else the asking request's origin, else the
    origin the dashboard was last served from, else DEFAULT_BASE_URL. Never ends with a slash."""
    if settings.SITE_URL:
        return settings.SITE_URL.rstrip("/")
    return (request_origin or DashboardSettings.last_served_origin() or DEFAULT_BASE_URL).rstrip("/")


def dashboard_link(base: str) -> str:
    return base + "/alerts/"


def subject_line(text: str, limit: int = 200) -> str:
    """`text` as one header line: control characters and line breaks become spaces (a rule named
    before names were checked may hold them, and Django refuses a subject with a line break)."""
    return " ".join(CONTROL_CHARACTER.sub(" ", text).split())[:limit]


def headline(alert: AlertLog) -> str:
    status = {AlertLog.Kind.RESOLVED: "RESOLVED", AlertLog.Kind.TEST: "TEST"}.get(alert.kind, "FIRING")
    return f"[{status}] {alert.alert_rule.name}"


class Notifier:
    """One channel. `notify` sends the notice and answers details to record, or raises."""

    name: ClassVar[str]

    def __init__(self, rule: AlertRule, base: str = DEFAULT_BASE_URL) -> None:
        self.rule = rule
        self.base = base

    def is_enabled(self) -> bool:
        """Whether this channel applies to the rule at all (not recorded when it does not)."""
        raise NotImplementedError

    def notify(self, alert: AlertLog) -> dict[str, Any]:
        raise NotImplementedError


NOTIFIERS: dict[str, type[Notifier]] = {}


def register(notifier_class: type[Notifier]) -> type[Notifier]:
    NOTIFIERS[notifier_class.name] = notifier_class
    return notifier_class


@register
class EmailNotifier(Notifier):
    """Django mail (EMAIL_URL) from DEFAULT_FROM_EMAIL to the rule's recipients or ALERT_EMAIL_RECIPIENTS."""

    name = "email"

    def is_enabled(self) -> bool:
        # E-mail on but nobody to send to is no channel, not an error to record on every run.
        return self.rule.notify_email and bool(self.rule.recipients)

    def notify(self, alert: AlertLog) -> dict[str, Any]:
        recipients = self.rule.recipients
        message = EmailMessage(
            subject=subject_line(f"{headline(alert)}: {alert.message}"),
            body=email_body(alert, self.base),
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=recipients,
        )
        message.send(fail_silently=False)
        return {"recipients": recipients}


@register
class WebhookNotifier(Notifier):
    """POST of JSON: a Slack-compatible `text`, and the same facts as structured fields."""

    name = "webhook"

    def is_enabled(self) -> bool:
        return bool(self.rule.effective_webhook_url)

    def notify(self, alert: AlertLog) -> dict[str, Any]:
        url = self.rule.effective_webhook_url
        return {"url": url, **post_json(url, webhook_payload(alert, self.base))}


def email_body(alert: AlertLog, base: str) -> str:
    rule = alert.alert_rule
    lines = [
        headline(alert),
        "",
        alert.message,
        "",
        f"Rule:      {rule.name} (#{rule.pk})",
        f"Metric:    {rule.get_metric_type_display()}",
        f"Model:     {rule.model_name or 'all models'}",
        f"Value:     {formatting.rule_value(rule.metric_type, alert.metric_value)}",
        f"Threshold: {formatting.rule_value(rule.metric_type, alert.threshold)}",
        f"Window:    {alert.window_start:%Y-%m-%d %H:%M:%S} to {alert.window_end:%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"Alerts: {dashboard_link(base)}",
    ]
    if rule.description:
        lines[3:3] = [rule.description, ""]
    return "\n".join(lines) + "\n"


def webhook_payload(alert: AlertLog, base: str) -> dict[str, Any]:
    rule = alert.alert_rule
    link = dashboard_link(base)
    return {
        # Slack (and Mattermost, Discord's /slack endpoint…) show `text`; the rest is for machines.
        "text": f"{headline(alert)}: {alert.message} <{link}|Open alerts>",
        "status": {AlertLog.Kind.RESOLVED: "resolved", AlertLog.Kind.TEST: "test"}.get(alert.kind, "firing"),
        "test": alert.kind == AlertLog.Kind.TEST,
        "alert_id": alert.pk,
        "rule": rule.name,
        "rule_id": rule.pk,
        "metric": rule.metric_type,
        "model": rule.model_name or None,
        "value": alert.metric_value,
        "threshold": alert.threshold,
        "window": {
            "start": alert.window_start.isoformat(),
            "end": alert.window_end.isoformat(),
            "minutes": round((alert.window_end - alert.window_start).total_seconds() / 60),
        },
        "triggered_at": alert.triggered_at.isoformat(),
        "message": alert.message,
        "link": link,
    }


def enabled_notifiers(rule: AlertRule, base: str = DEFAULT_BASE_URL) -> list[Notifier]:
    """The channels that apply to the rule; empty: the rule reaches no one."""
    notifiers = (notifier_class(rule, base) for notifier_class in NOTIFIERS.values())
    return [notifier for notifier in notifiers if notifier.is_enabled()]


def channel_names(rule: AlertRule) -> list[str]:
    return [notifier.name for notifier in enabled_notifiers(rule)]


def notify_all(alert: AlertLog, base: str | None = None) -> dict[str, dict[str, Any]]:
    """Send through every enabled channel; answers {channel: {"status": "sent"|"error", …}}.

    `base` starts the links in the notice (see `base_url()`, which answers it when None).
    An empty answer means the rule has no channel: nothing was attempted.
    """
    results: dict[str, dict[str, Any]] = {}
    if not enabled_notifiers(alert.alert_rule):
        return results
    label = f"Alert {alert.pk}" if alert.pk else f"Test notification for rule {alert.alert_rule.pk}"
    for notifier in enabled_notifiers(alert.alert_rule, base or base_url()):
        name = notifier.name
        try:
            detail = notifier.notify(alert)
        except Exception as exc:  # noqa: BLE001 - whatever breaks one channel must not stop the others
            attempts = getattr(exc, "attempts", 1)
            error = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
            logger.warning("%s: %s notification failed: %s", label, name, error)
            results[name] = {"status": "error", "error": error, "attempts": attempts, "at": timezone.now().isoformat()}
        else:
            results[name] = {"status": "sent", **detail, "at": timezone.now().isoformat()}
    return results
