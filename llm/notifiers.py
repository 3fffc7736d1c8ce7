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

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.mail import EmailMessage
from django.http import HttpRequest
from django.utils import timezone

from llm import formatting, outbound
from llm.ingest_limits import CONTROL_CHARACTER
from llm.models import AlertLog, AlertRule, DashboardSettings, NotificationChannel, split_email_list

logger = logging.getLogger(__name__)

# Where `make run` serves by default: the last resort for links when nothing better is known.
DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class DeliveryError(Exception):
    def __init__(self, message: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


SIGNATURE_VERSION = "v1"
TIMESTAMP_HEADER = "X-Observatory-Timestamp"
SIGNATURE_HEADER = "X-Observatory-Signature"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: "v1=" + hex HMAC-SHA256(secret, f"{timestamp}.{body}").

    The timestamp is signed with the body so a receiver can refuse a replay of an old notice."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def status_line(response: httpx.Response) -> str:
    """ "HTTP 503 Service Unavailable": the code and its standard phrase, never the receiver's own
    words, so nothing a receiver answers is stored or shown (it could be an internal page)."""
    try:
        phrase = HTTPStatus(response.status_code).phrase
    except ValueError:
        phrase = ""
    return f"HTTP {response.status_code} {phrase}".rstrip()


def post_json(
    url: str,
    payload: dict[str, Any],
    *,
    secret: str = "",
    timeout: float | None = None,
    tries: int | None = None,
    retry_delay: float | None = None,
) -> dict[str, Any]:
    """POST `payload` as JSON; answers {"http_status", "attempts"} or raises DeliveryError.

    Every outbound HTTP call of the app comes here, so the guard is here: before each try the
    host is resolved, every address checked (llm/outbound.py) and the connection made to the
    checked address, with the Host header and TLS name of the URL. A refused address fails at
    once. With `secret`, the body is signed (`sign`, headers X-Observatory-Timestamp and
    X-Observatory-Signature). Retries connection errors, timeouts, 429 and 5xx answers, at most
    `tries` times in all; any other non-2xx answer fails at once (retrying a 404 will not fix it).
    Redirects are not followed: a webhook that moved should be updated, not chased (and a
    redirect could point inside the network).
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
    # Serialized once: a signature covers exactly the bytes sent.
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    error = ""
    # trust_env=False: no HTTP(S)_PROXY. A proxy would resolve the name itself, past the guard.
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for attempt in range(1, tries + 1):
            try:
                response = pinned_post(client, url, body, secret)
            except outbound.OutboundURLError as refused:
                raise DeliveryError(str(refused), attempts=attempt - 1) from None
            except httpx.TimeoutException:
                error = f"timed out after {timeout:g}s"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return {"http_status": response.status_code, "attempts": attempt}
                error = status_line(response)
                if response.status_code != 429 and response.status_code < 500:
                    raise DeliveryError(error, attempts=attempt)
            if attempt < tries and retry_delay > 0:
                time.sleep(retry_delay * attempt)  # a short, bounded backoff between tries
    raise DeliveryError(error, attempts=tries)


def pinned_post(client: httpx.Client, url: str, body: bytes, secret: str = "") -> httpx.Response:
    """One POST to `url` through the guard: resolved and checked now (raises OutboundURLError),
    sent to the checked address, with the URL's name as Host header and, for https, as TLS server
    name (SNI) and certificate name, so the receiver's certificate is verified as usual."""
    pinned = outbound.resolve_pinned(url)
    return client.post(
        pinned.url,
        content=body,
        headers=request_headers(pinned, secret, body),
        extensions={"sni_hostname": pinned.server_name} if pinned.url.startswith("https:") else {},
    )


def request_headers(pinned: outbound.PinnedURL, secret: str, body: bytes) -> dict[str, str]:
    headers = {
        "User-Agent": "llm-observatory-alerts",
        "Content-Type": "application/json",
        # The connection goes to the checked address; the receiver still sees the name it serves.
        "Host": pinned.host_header,
    }
    if secret:
        timestamp = str(int(time.time()))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    return headers


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

    @property
    def label(self) -> str:
        """The key its result is recorded under in AlertLog.notifications."""
        return self.name

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
        send_email(alert, self.base, recipients)
        return {"recipients": recipients}


def send_email(alert: AlertLog, base: str, recipients: list[str]) -> None:
    message = EmailMessage(
        subject=subject_line(f"{headline(alert)}: {alert.message}"),
        body=email_body(alert, base),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
    )
    message.send(fail_silently=False)


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


# Channels a rule names (NotificationChannel), by kind. Each sends to the channel's target.


class ChannelNotifier(Notifier):
    """A named channel: its result is recorded under "<kind>:<name>", and counted on the channel
    (a run of failures marks it failing)."""

    def __init__(self, rule: AlertRule, base: str = DEFAULT_BASE_URL, channel: NotificationChannel | None = None):
        super().__init__(rule, base)
        assert channel is not None
        self.channel = channel

    @property
    def label(self) -> str:
        return f"{self.channel.kind}:{self.channel.name}"

    def is_enabled(self) -> bool:
        return self.channel.is_active


CHANNEL_NOTIFIERS: dict[str, type[ChannelNotifier]] = {}


def register_channel(notifier_class: type[ChannelNotifier]) -> type[ChannelNotifier]:
    CHANNEL_NOTIFIERS[notifier_class.name] = notifier_class
    return notifier_class


@register_channel
class EmailChannelNotifier(ChannelNotifier):
    name = NotificationChannel.Kind.EMAIL

    def notify(self, alert: AlertLog) -> dict[str, Any]:
        recipients = split_email_list(self.channel.target)
        send_email(alert, self.base, recipients)
        return {"recipients": recipients}


@register_channel
class SlackChannelNotifier(ChannelNotifier):
    name = NotificationChannel.Kind.SLACK

    def notify(self, alert: AlertLog) -> dict[str, Any]:
        return post_json(self.channel.target, webhook_payload(alert, self.base))


@register_channel
class SignedWebhookNotifier(ChannelNotifier):
    """The webhook payload, signed: see `sign` (and the docs' verification snippet)."""

    name = NotificationChannel.Kind.WEBHOOK

    def notify(self, alert: AlertLog) -> dict[str, Any]:
        payload = webhook_payload(alert, self.base)
        return {"signed": True, **post_json(self.channel.target, payload, secret=self.channel.secret)}


# PagerDuty's severities, from the notice's level (warning / critical thresholds).
PAGERDUTY_SEVERITIES = {"critical": "critical", "warning": "warning", "info": "info"}


def dedup_key(alert: AlertLog) -> str:
    """One PagerDuty incident per rule (and per group of a grouped rule): its trigger and its resolve
    carry the same key, so PagerDuty closes the incident the trigger opened."""
    key = f"llm-observatory/rule-{alert.alert_rule.pk}"
    group = getattr(alert, "group_key", "")
    if group:
        key += f"/{group}"
    if alert.kind == AlertLog.Kind.TEST:
        key += "/test"  # a test never touches the real incident
    return key[:255]  # PagerDuty's limit


def pagerduty_event(alert: AlertLog, routing_key: str, base: str) -> dict[str, Any]:
    """An Events API v2 event: "trigger" for a firing notice (or a test), "resolve" for a resolved one."""
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "resolve" if alert.kind == AlertLog.Kind.RESOLVED else "trigger",
        "dedup_key": dedup_key(alert),
    }
    if alert.kind == AlertLog.Kind.RESOLVED:
        return event  # PagerDuty takes nothing else with a resolve
    level = getattr(alert, "level", "")
    severity = "info" if alert.kind == AlertLog.Kind.TEST else PAGERDUTY_SEVERITIES.get(level, "error")
    rule = alert.alert_rule
    event["payload"] = {
        "summary": subject_line(f"{headline(alert)}: {alert.message}", limit=1024),
        "source": urlsplit(base).hostname or "llm-observatory",
        "severity": severity,
        "timestamp": alert.triggered_at.isoformat(),
        "component": rule.model_name or "all models",
        "class": rule.metric_type,
        "custom_details": {
            "rule": rule.name,
            "rule_id": rule.pk,
            "value": alert.metric_value,
            "threshold": alert.threshold,
            "window_start": alert.window_start.isoformat(),
            "window_end": alert.window_end.isoformat(),
        },
    }
    event["links"] = [{"href": dashboard_link(base), "text": "Open alerts"}]
    return event


@register_channel
class PagerDutyNotifier(ChannelNotifier):
    name = NotificationChannel.Kind.PAGERDUTY

    def notify(self, alert: AlertLog) -> dict[str, Any]:
        event = pagerduty_event(alert, self.channel.routing_key, self.base)
        result = post_json(settings.PAGERDUTY_EVENTS_URL, event)
        if alert.kind == AlertLog.Kind.TEST:
            # A test shows up in PagerDuty and is closed at once: it must not leave an incident open.
            resolve = {"routing_key": event["routing_key"], "event_action": "resolve", "dedup_key": event["dedup_key"]}
            post_json(settings.PAGERDUTY_EVENTS_URL, resolve)
        return {"event_action": event["event_action"], "dedup_key": event["dedup_key"], **result}


def enabled_notifiers(rule: AlertRule, base: str = DEFAULT_BASE_URL) -> list[Notifier]:
    """The channels that apply to the rule: its own e-mail and webhook fields, then the named
    channels it uses (active ones). Empty: the rule reaches no one."""
    notifiers: list[Notifier] = [notifier_class(rule, base) for notifier_class in NOTIFIERS.values()]
    # rule.channels.all() uses the prefetched channels when the caller prefetched them.
    for channel in rule.channels.all():
        notifier_class = CHANNEL_NOTIFIERS.get(channel.kind)
        if notifier_class is not None:
            notifiers.append(notifier_class(rule, base, channel))
    return [notifier for notifier in notifiers if notifier.is_enabled()]


def channel_names(rule: AlertRule) -> list[str]:
    return [notifier.label for notifier in enabled_notifiers(rule)]


def channel_states(rule: AlertRule) -> list[dict[str, Any]]:
    """[{"label": "pagerduty:oncall", "failing": True, "last_error": "HTTP 500 ..."}] for the pages."""
    states = []
    for notifier in enabled_notifiers(rule):
        channel = notifier.channel if isinstance(notifier, ChannelNotifier) else None
        failing = bool(channel and channel.is_failing)
        states.append(
            {"label": notifier.label, "failing": failing, "last_error": channel.last_error if failing else ""}
        )
    return states


def notify_all(alert: AlertLog, base: str | None = None) -> dict[str, dict[str, Any]]:
    """Send through every enabled channel; answers {channel: {"status": "sent"|"error", …}}.

    `base` starts the links in the notice (see `base_url()`, which answers it when None).
    An empty answer means the rule has no channel: nothing was attempted. A named channel's
    result is also counted on it (NotificationChannel.record_result).
    """
    results: dict[str, dict[str, Any]] = {}
    if not enabled_notifiers(alert.alert_rule):
        return results
    label = f"Alert {alert.pk}" if alert.pk else f"Test notification for rule {alert.alert_rule.pk}"
    for notifier in enabled_notifiers(alert.alert_rule, base or base_url()):
        results[notifier.label] = send_one(notifier, alert, label)
    return results


def send_one(notifier: Notifier, alert: AlertLog, label: str) -> dict[str, Any]:
    channel = notifier.channel if isinstance(notifier, ChannelNotifier) else None
    return attempt(lambda: notifier.notify(alert), what=label, label=notifier.label, channel=channel)


def attempt(
    send: Callable[[], dict[str, Any]], *, what: str, label: str, channel: NotificationChannel | None = None
) -> dict[str, Any]:
    """Run one delivery and answer its record: {"status": "sent", …details, "at"} or {"status":
    "error", "error", "attempts", "at"}. A failure is logged, never raised; a named channel counts
    the result (NotificationChannel.record_result). Alert notices and budget warnings both use it."""
    try:
        detail = send()
    except Exception as exc:  # noqa: BLE001 - whatever breaks one channel must not stop the others
        attempts = getattr(exc, "attempts", 1)
        error = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
        logger.warning("%s: %s notification failed: %s", what, label, error)
        result = {"status": "error", "error": error, "attempts": attempts, "at": timezone.now().isoformat()}
    else:
        error = ""
        result = {"status": "sent", **detail, "at": timezone.now().isoformat()}
    if channel is not None:
        channel.record_result(error)
    return result
