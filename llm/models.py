from __future__ import annotations

import hashlib
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, URLValidator, validate_email
from django.db import IntegrityError, connections, models, transaction
from django.dispatch import Signal
from django.utils import timezone

from llm import traces
from llm.ingest_limits import CONTROL_CHARACTER, STORED_YEARS

ONE_MILLION = Decimal(1_000_000)
# Sent (sender LLMRequestLog, `created`: how many rows) once calls stored by `record` or
# `record_many` are committed. llm/rollups.py listens (connected in apps.py) and brings the
# roll-ups up to date, so this module does not import what imports it.
calls_recorded = Signal()
COST_PLACES = Decimal("0.0000000001")


class LLMRequestLogQuerySet(models.QuerySet):
    def in_window(self, start: datetime | None, end: datetime | None) -> LLMRequestLogQuerySet:
        """Rows with start <= timestamp < end; either bound may be None."""
        queryset = self
        if start is not None:
            queryset = queryset.filter(timestamp__gte=start)
        if end is not None:
            queryset = queryset.filter(timestamp__lt=end)
        return queryset

    def for_model(self, model_name: str | None) -> LLMRequestLogQuerySet:
        return self.filter(model_name=model_name) if model_name else self

    def failed(self) -> LLMRequestLogQuerySet:
        return self.filter(LLMRequestLog.FAILED)

    def trace(self, trace_id: str) -> traces.Trace:
        """The calls of one trace as a tree (llm/traces.py); no call: an empty list."""
        rows = (
            self.filter(trace_id=trace_id)
            .order_by("timestamp", "id")
            .values(*traces.TRACE_CALL_FIELDS)[: traces.MAX_TRACE_CALLS + 1]
        )
        return traces.as_tree(list(rows))


class LLMRequestLogManager(models.Manager.from_queryset(LLMRequestLogQuerySet)):
    def record(self, **fields: Any) -> tuple[LLMRequestLog, bool]:
        """Store one call; answers (row, created). A repeated request_id stores nothing new.

        Every path that writes calls (proxy, events, OTLP) goes through here or through
        `record_many`, so privacy rules, derived totals and cost apply the same way everywhere.
        """
        fields.setdefault("cost_estimate", None)  # None: computed from ModelPrice
        log = LLMRequestLog(**fields)
        log.prepare_for_storage(cached_price_table())
        log.request_id = _as_uuid(log.request_id)
        for _ in range(2):
            if _insert_new(self.model, [log], self.db):
                _announce(1)
                return log, True
            existing = self.filter(request_id=log.request_id).first()
            if existing is not None:
                return existing, False
            # Stored by another writer, then purged before we read it: store it after all.
        raise IntegrityError(f"request_id {log.request_id} neither stored nor found")

    def record_many(self, logs: list[LLMRequestLog]) -> tuple[int, int]:
        """Store many calls in one transaction; answers (created, duplicates), exact whatever other
        writers do meanwhile: `created` counts the rows this call inserted, `duplicates` the rest
        (a request_id already stored, by anyone, or repeated within `logs`).

        A log whose cost_estimate is None gets its cost from ModelPrice. Created logs get their id.
        """
        prices = cached_price_table()
        unique: dict[uuid.UUID, LLMRequestLog] = {}
        for log in logs:
            log.prepare_for_storage(prices)
            log.request_id = _as_uuid(log.request_id)
            unique.setdefault(log.request_id, log)
        created = _insert_new(self.model, list(unique.values()), self.db)
        if created:
            _announce(created)
        return created, len(logs) - created


# Rows per INSERT statement: 500 rows of ~27 columns stay under both databases' limits on
# parameters per statement (SQLite 32,766; PostgreSQL 65,535).
INSERT_BATCH_ROWS = 500


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _insert_new(model: type[LLMRequestLog], logs: list[LLMRequestLog], using: str) -> int:
    """INSERT … ON CONFLICT (request_id) DO NOTHING RETURNING id, request_id: answers how many rows
    were really inserted (a row another writer stored first is skipped and not counted) and gives
    those logs their id. `logs` must have distinct request_ids.

    Why not bulk_create(ignore_conflicts=True): it cannot tell which rows it skipped. Why sorted by
    request_id: on PostgreSQL an insert waits for a concurrent uncommitted insert of the same key;
    two writers taking their keys in different orders wait for each other (a deadlock, answered
    500). In one global order, one of them always goes first. The statements are built before
    the transaction, which holds only their execution (on SQLite every other writer waits for it).
    """
    if not logs:
        return 0
    connection = connections[using]
    logs = sorted(logs, key=lambda log: log.request_id)
    statements = _insert_statements(model, logs, connection)
    inserted: dict[uuid.UUID, int] = {}
    with _writer_turn(connection), transaction.atomic(using=using), connection.cursor() as cursor:
        for sql, params in statements:
            cursor.execute(sql, params)
            inserted.update((_as_uuid(request_id), pk) for pk, request_id in cursor.fetchall())
    for log in logs:
        if log.request_id in inserted:
            log.pk = inserted[log.request_id]
            log._state.adding = False
            log._state.db = using
    return len(inserted)


# SQLite has one writer at a time; the others poll for the lock (sleeping up to 100 ms between
# tries), so under load some lose many times in a row and wait seconds. Within one process the
# writers queue on this lock instead, and only one of them polls SQLite. Not inside an outer
# transaction, which may hold SQLite's lock already while another thread holds this one.
_SQLITE_WRITERS = threading.Lock()


@contextmanager
def _writer_turn(connection) -> Iterator[None]:
    """Our turn to write, on SQLite; at once elsewhere."""
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        yield
        return
    with _SQLITE_WRITERS:
        yield


def _insert_statements(model: type[LLMRequestLog], logs: list[LLMRequestLog], connection) -> list[tuple[str, list]]:
    """The INSERT statements (SQL, parameters) for `logs`, INSERT_BATCH_ROWS rows each, in order.
    Values are prepared by each field as Django's own inserts do (get_db_prep_save)."""
    meta = model._meta
    fields = [field for field in meta.concrete_fields if not field.primary_key]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    head = f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES "  # noqa: S608 - the model's own names
    unique_column = quote(meta.get_field("request_id").column)
    tail = f" ON CONFLICT ({unique_column}) DO NOTHING RETURNING {quote(meta.pk.column)}, {unique_column}"
    statements = []
    for start in range(0, len(logs), INSERT_BATCH_ROWS):
        chunk = logs[start : start + INSERT_BATCH_ROWS]
        params = [field.get_db_prep_save(field.pre_save(log, True), connection) for log in chunk for field in fields]
        statements.append((head + ", ".join([row] * len(chunk)) + tail, params))
    return statements


def _announce(created: int) -> None:
    """calls_recorded, after the commit (at once outside a transaction): a receiver must never
    run inside the writer's transaction, where its locks would last until that commits."""
    transaction.on_commit(lambda: calls_recorded.send(sender=LLMRequestLog, created=created), robust=True)


class LLMRequestLog(models.Model):
    class Source(models.TextChoices):
        PROXY = "proxy", "Proxy"
        API = "api", "Events API"
        OTLP = "otlp", "OpenTelemetry"

    class Status(models.TextChoices):
        SUCCESS = "success", "Success"
        ERROR = "error", "Error"

    # What a failed call is, for every count of failures: the metrics, alert rules, the pages and
    # the logs API (`LLMRequestLog.objects.failed()`). Also usable as an aggregate's `filter`.
    FAILED = models.Q(status=Status.ERROR)

    class ErrorType(models.TextChoices):
        TIMEOUT = "timeout", "Timeout"
        RATE_LIMIT = "rate_limit", "Rate limit"
        AUTHENTICATION = "authentication", "Authentication"
        BAD_REQUEST = "bad_request", "Bad request"
        SERVER_ERROR = "server_error", "Server error"
        CONNECTION_ERROR = "connection_error", "Connection error"
        CONFIGURATION = "configuration", "Configuration"
        OTHER = "other", "Other"

    request_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    timestamp = models.DateTimeField(default=timezone.now, db_index=True)
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.PROXY)
    provider = models.CharField(max_length=64, default="groq")
    model_name = models.CharField(max_length=200)
    user_id = models.CharField(max_length=200, blank=True, default="")
    session_id = models.CharField(max_length=200, blank=True, default="")
    trace_id = models.CharField(max_length=32, blank=True, default="")
    span_id = models.CharField(max_length=16, blank=True, default="")
    parent_span_id = models.CharField(max_length=16, blank=True, default="")
    prompt_text = models.TextField(blank=True, default="")
    response_text = models.TextField(blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.FloatField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    cost_estimate = models.DecimalField(max_digits=20, decimal_places=10, default=Decimal(0))
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.SUCCESS)
    error_type = models.CharField(max_length=20, choices=ErrorType.choices, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    finish_reason = models.CharField(max_length=32, blank=True, default="")
    temperature = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    tags = models.JSONField(default=dict, blank=True)

    objects = LLMRequestLogManager()

    class Meta:
        verbose_name = "LLM request log"
        indexes = [
            # Dashboard and metrics filtered by model, status or user over a time range (model: also
            # the model list, a loose index scan in llm.dashboard.logged_model_names; user: the
            # `user_id` filter of logs, metrics and export, which the roll-ups do not cover).
            models.Index(fields=["model_name", "timestamp"], name="llm_log_model_time"),
            models.Index(fields=["status", "timestamp"], name="llm_log_status_time"),
            models.Index(fields=["user_id", "timestamp"], name="llm_log_user_time"),
            # The `session_id` filter (logs, metrics, export) and a session's calls, which the
            # roll-ups do not cover: without it a 30-day window reads every row of the window.
            # (`search` has trigram indexes on PostgreSQL: migration 0008, not declared here.)
            models.Index(fields=["session_id", "timestamp"], name="llm_log_session_time"),
            # The trace view lists every call of one trace.
            models.Index(fields=["trace_id", "timestamp"], name="llm_log_trace_time"),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} {self.status} {self.request_id}"

    @property
    def is_error(self) -> bool:
        return self.status == self.Status.ERROR

    def prepare_for_storage(self, prices: dict[str, ModelPrice] | None = None) -> None:
        """Derive totals and cost, and apply the privacy settings to the stored text."""
        from llm import privacy

        if not self.total_tokens:
            self.total_tokens = (self.prompt_tokens or 0) + (self.completion_tokens or 0)
        if self.cost_estimate is None:
            self.cost_estimate = ModelPrice.cost_for(
                self.model_name, self.prompt_tokens, self.completion_tokens, prices
            )
        self.prompt_text = privacy.stored_text(self.prompt_text)
        self.response_text = privacy.stored_text(self.response_text)
        self.error_message = privacy.stored_text(self.error_message, always_store=True)


def validate_stored_year(value: datetime) -> None:
    # Compared by year, in the time zone it was typed in: comparing with a bound in another zone
    # could itself overflow near year 1 or 9999.
    if value is not None and not STORED_YEARS[0] <= value.year <= STORED_YEARS[1]:
        raise ValidationError(f"Enter a time between the years {STORED_YEARS[0]} and {STORED_YEARS[1]}.")


class UserFeedbackQuerySet(models.QuerySet):
    def rate(self, log: LLMRequestLog, rater: str, rating: str, comment: str = "") -> tuple[UserFeedback, bool]:
        """One rating per call and rater: a second one replaces the first (rating, comment and
        time), so that nobody counts twice in a satisfaction rate. Answers (feedback, created)."""
        # update_or_create locks the existing row, and the unique constraint settles two
        # first ratings racing each other (get_or_create retries its get on IntegrityError).
        return self.update_or_create(
            request=log, rater=rater, defaults={"rating": rating, "comment": comment, "created_at": timezone.now()}
        )


class UserFeedback(models.Model):
    class Rating(models.TextChoices):
        THUMBS_UP = "thumbs_up", "Thumbs up"
        THUMBS_DOWN = "thumbs_down", "Thumbs down"

    request = models.ForeignKey(LLMRequestLog, on_delete=models.CASCADE, related_name="feedback")
    rating = models.CharField(max_length=12, choices=Rating.choices)
    comment = models.TextField(blank=True, default="")
    # Who rated: a dashboard user's name, "key:<API key name>", or the end user an app names
    # (POST /api/feedback/ `rater`). Empty for ratings older than this field.
    rater = models.CharField(max_length=200, blank=True, default="")
    # When the current rating was given: replacing a rating moves it.
    created_at = models.DateTimeField(default=timezone.now, db_index=True, validators=[validate_stored_year])

    objects = UserFeedbackQuerySet.as_manager()

    class Meta:
        verbose_name = "user feedback"
        verbose_name_plural = "user feedback"
        constraints = [models.UniqueConstraint(fields=["request", "rater"], name="one_rating_per_call_and_rater")]

    def __str__(self) -> str:
        return f"{self.get_rating_display()} on {self.request.request_id}"


# Bounds for a rule, documented in the README and enforced by the admin form and the API.
ALERT_WINDOW_MINUTES_MAX = 7 * 24 * 60  # one week: longer windows belong on a dashboard, not a pager
ALERT_COOLDOWN_MINUTES_MAX = 7 * 24 * 60
webhook_url_validator = URLValidator(schemes=["http", "https"], message="Enter an http:// or https:// URL.")


def validate_finite(value: float) -> None:
    # NaN and infinity pass MinValueValidator, never compare as over a threshold, and are not JSON.
    if value is not None and not math.isfinite(value):
        raise ValidationError("Enter a finite number.")


def validate_one_line(value: str) -> None:
    # A rule's name goes into e-mail subjects, where a line break makes Django refuse to send.
    if value and CONTROL_CHARACTER.search(value):
        raise ValidationError("Must be one line: no line break, tab or other control character.")


def split_email_list(value: str) -> list[str]:
    """'a@x.org, b@y.org' -> ['a@x.org', 'b@y.org'] (commas, semicolons or whitespace between)."""
    return [address for address in re.split(r"[,;\s]+", value or "") if address]


def validate_email_list(value: str) -> None:
    for address in split_email_list(value):
        try:
            validate_email(address)
        except ValidationError:
            raise ValidationError("“%(address)s” is not a valid e-mail address.", params={"address": address}) from None


class AlertRuleQuerySet(models.QuerySet):
    def active(self) -> AlertRuleQuerySet:
        return self.filter(is_active=True)

    def firing(self) -> AlertRuleQuerySet:
        """Active rules over their threshold at the last check (a deactivated rule is not firing)."""
        return self.active().filter(is_firing=True)


# An error_rate rule's threshold is a percentage.
MAX_ERROR_RATE_PERCENT = 100.0


class AlertRule(models.Model):
    class MetricType(models.TextChoices):
        ERROR_RATE = "error_rate", "Error rate (%)"
        LATENCY_P95 = "latency_p95", "Latency p95 (ms)"
        TOKEN_SPIKE = "token_spike", "Token spike (ratio to previous window)"
        COST = "cost", "Cost (USD per window)"
        NO_TRAFFIC = "no_traffic", "No traffic (fewer requests than threshold)"

    name = models.CharField(max_length=200, unique=True, validators=[validate_one_line])
    description = models.TextField(blank=True, default="")
    metric_type = models.CharField(max_length=16, choices=MetricType.choices)
    threshold = models.FloatField(validators=[validate_finite, MinValueValidator(0)])
    time_window_minutes = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1), MaxValueValidator(ALERT_WINDOW_MINUTES_MAX)]
    )
    model_name = models.CharField(max_length=200, blank=True, default="", help_text="Blank: all models.")
    cooldown_minutes = models.PositiveIntegerField(
        default=60,
        validators=[MaxValueValidator(ALERT_COOLDOWN_MINUTES_MAX)],
        help_text="While the rule stays over its threshold, notify again only after this long.",
    )
    is_active = models.BooleanField(default=True)
    notify_email = models.BooleanField(default=True)
    email_recipients = models.TextField(
        blank=True,
        default="",
        validators=[validate_email_list],
        help_text="Comma-separated; blank: ALERT_EMAIL_RECIPIENTS.",
    )
    webhook_url = models.URLField(
        blank=True, default="", validators=[webhook_url_validator], help_text="Blank: ALERT_WEBHOOK_URL."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    # State, written by check_alerts only (through the methods below).
    is_firing = models.BooleanField(default=False, editable=False)
    last_value = models.FloatField(null=True, blank=True, editable=False)
    last_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    # When the last "fired" notice was written: the cooldown counts from here.
    last_notified_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = AlertRuleQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        self.validate_threshold(self.metric_type, self.threshold)

    @classmethod
    def validate_threshold(cls, metric_type: str | None, threshold: float | None) -> None:
        """The bound a threshold has for its metric type; the admin form (through clean) and the
        API's serializer both ask here."""
        if metric_type == cls.MetricType.ERROR_RATE and threshold is not None and threshold > MAX_ERROR_RATE_PERCENT:
            raise ValidationError({"threshold": f"An error rate is a percentage: at most {MAX_ERROR_RATE_PERCENT:g}."})

    @property
    def recipients(self) -> list[str]:
        return split_email_list(self.email_recipients) or list(settings.ALERT_EMAIL_RECIPIENTS)

    @property
    def effective_webhook_url(self) -> str:
        return self.webhook_url or settings.ALERT_WEBHOOK_URL

    def record_check(
        self,
        *,
        value: float | None,
        breached: bool | None,
        window_start: datetime,
        window_end: datetime,
        message: str,
        now: datetime,
    ) -> AlertLog | None:
        """Store the outcome of one evaluation; answers the notice to send, if any.

        breached None means "too little data to judge": the state is left as it is.
        Each transition is a conditional UPDATE on the rule's row, so when two check_alerts runs
        evaluate the same rule at once, only one of them wins it and writes the AlertLog; the
        loser's UPDATE matches no row (PostgreSQL re-checks the WHERE after the winner commits).
        The transaction is short and holds no lock while anything is sent.
        """
        rules = AlertRule.objects.filter(pk=self.pk)
        kind = None
        alert = None
        with transaction.atomic():
            # A run that evaluated earlier but got here later (it was slow) must not undo what a
            # newer check recorded, e.g. fire again right after a newer check resolved.
            not_older = models.Q(last_checked_at__isnull=True) | models.Q(last_checked_at__lte=now)
            if not rules.filter(not_older).update(last_value=value, last_checked_at=now):
                return None
            if breached:
                # Newly over threshold: always a notice. Still over: a reminder once the cooldown has passed
                # (strictly: two runs at the same instant never both remind, even with a cooldown of 0).
                cooldown_start = now - timedelta(minutes=self.cooldown_minutes)
                newly_firing = rules.filter(is_firing=False).update(is_firing=True, last_notified_at=now)
                reminder_due = not newly_firing and rules.filter(
                    is_firing=True, last_notified_at__lt=cooldown_start
                ).update(last_notified_at=now)
                if newly_firing or reminder_due:
                    kind = AlertLog.Kind.FIRED
            elif breached is False and rules.filter(is_firing=True).update(is_firing=False):
                kind = AlertLog.Kind.RESOLVED
            if kind is not None:
                alert = AlertLog.objects.create(
                    alert_rule=self,
                    kind=kind,
                    triggered_at=now,
                    message=message,
                    metric_value=value,
                    threshold=self.threshold,
                    window_start=window_start,
                    window_end=window_end,
                )
        self.refresh_from_db(fields=["is_firing", "last_value", "last_checked_at", "last_notified_at"])
        return alert


NOT_SENT_NO_CHANNEL = "not sent: no channel"


def describe_notifications(notifications: dict[str, dict[str, Any]]) -> str:
    """{"email": {"status": "sent"}, "webhook": {"status": "error", "error": "HTTP 500"}} ->
    "email sent, webhook error (HTTP 500)"."""
    return ", ".join(
        f"{name} {result.get('status')}" + (f" ({result['error']})" if result.get("error") else "")
        for name, result in notifications.items()
    )


class AlertLogQuerySet(models.QuerySet):
    def undelivered(self) -> AlertLogQuerySet:
        return self.filter(delivery_claimed_at__isnull=True)

    def acknowledge(self, user: Any | None, by_name: str = "") -> int:
        """Acknowledge the ones not yet acknowledged; answers how many."""
        user_id = user.pk if user is not None and user.is_authenticated else None
        if not by_name and user_id is not None:
            by_name = user.get_username()
        return self.filter(acknowledged=False).update(
            acknowledged=True, acknowledged_at=timezone.now(), acknowledged_by_id=user_id, acknowledged_by_name=by_name
        )


class AlertLog(models.Model):
    class Kind(models.TextChoices):
        FIRED = "fired", "Fired"
        RESOLVED = "resolved", "Resolved"
        # Never stored: a test notification is an unsaved AlertLog sent through the same notifiers.
        TEST = "test", "Test"

    alert_rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="logs")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.FIRED)
    triggered_at = models.DateTimeField(default=timezone.now, db_index=True)
    message = models.TextField()
    metric_value = models.FloatField(null=True, blank=True)
    threshold = models.FloatField()
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    acknowledged = models.BooleanField(default=False)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Who, as text: a user name, or "API key <name>" for a machine client (no user row).
    acknowledged_by_name = models.CharField(max_length=200, blank=True, default="")
    # A check_alerts run takes a notice for delivery by setting this from NULL (a conditional
    # UPDATE), so two overlapping runs never both send it.
    delivery_claimed_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # What happened to each channel:
    # {"email": {"status": "sent"|"error"|"skipped", "error": "...", "at": "...", ...}, "webhook": {...}}
    notifications = models.JSONField(default=dict, blank=True)
    # Why nothing was sent when nothing was ("not sent: no channel"); blank when a channel was tried.
    delivery_note = models.CharField(max_length=200, blank=True, default="")

    objects = AlertLogQuerySet.as_manager()

    class Meta:
        ordering = ["-triggered_at", "-id"]
        indexes = [
            # check_alerts looks up the notices nobody has claimed yet, on every run.
            models.Index(
                fields=["alert_rule"], condition=models.Q(delivery_claimed_at__isnull=True), name="llm_alertlog_pending"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.alert_rule.name} {self.kind} at {self.triggered_at:%Y-%m-%d %H:%M}"

    def acknowledge(self, user: Any | None, by_name: str = "") -> bool:
        """Mark acknowledged once; answers False when someone already had."""
        updated = AlertLog.objects.filter(pk=self.pk).acknowledge(user, by_name)
        self.refresh_from_db(fields=["acknowledged", "acknowledged_at", "acknowledged_by", "acknowledged_by_name"])
        return updated == 1

    def claim_delivery(self, now: datetime) -> bool:
        """Take this notice for delivery; answers False when another run already has."""
        claimed = AlertLog.objects.filter(pk=self.pk, delivery_claimed_at__isnull=True).update(delivery_claimed_at=now)
        if claimed:
            self.delivery_claimed_at = now
        return claimed == 1

    def record_delivery(self, notifications: dict[str, dict[str, Any]]) -> None:
        self.notifications = notifications
        self.delivered_at = timezone.now()
        # A rule without any channel is not an error to repeat on every run: it is said once, here.
        self.delivery_note = "" if notifications else NOT_SENT_NO_CHANNEL
        AlertLog.objects.filter(pk=self.pk).update(
            notifications=notifications, delivered_at=self.delivered_at, delivery_note=self.delivery_note
        )

    @property
    def delivery_summary(self) -> str:
        """One line for people: "email sent, webhook error (HTTP 500…)", "not sent: no channel", "pending"."""
        if self.delivered_at is None:
            return "sending" if self.delivery_claimed_at else "pending"
        if self.delivery_note or not self.notifications:
            return self.delivery_note or "nothing recorded"
        return describe_notifications(self.notifications)


class ModelPriceQuerySet(models.QuerySet):
    def price_table(self) -> dict[str, ModelPrice]:
        return {price.model_name: price for price in self}


# The price table each process keeps, so that a write (the proxy's, one per prompt) costs no
# price query: read again after PRICE_CACHE_SECONDS, and at once in the process that saves or
# deletes a ModelPrice (signals below). Inside a transaction the table is read afresh: the
# transaction may see prices of its own that no other connection sees (and tests roll back).
PRICE_CACHE_SECONDS = 10.0
_price_cache: tuple[dict[str, ModelPrice], float] | None = None


def cached_price_table() -> dict[str, ModelPrice]:
    global _price_cache
    if transaction.get_connection().in_atomic_block:
        return ModelPrice.objects.price_table()
    now = time.monotonic()
    cached = _price_cache
    if cached is not None and cached[1] > now:
        return cached[0]
    table = ModelPrice.objects.price_table()
    _price_cache = (table, now + PRICE_CACHE_SECONDS)
    return table


def forget_prices(**kwargs: Any) -> None:
    global _price_cache
    _price_cache = None


class ModelPrice(models.Model):
    model_name = models.CharField(max_length=200, unique=True)
    input_per_million = models.DecimalField(max_digits=12, decimal_places=6, help_text="USD")
    output_per_million = models.DecimalField(max_digits=12, decimal_places=6, help_text="USD")
    updated_at = models.DateTimeField(auto_now=True)

    objects = ModelPriceQuerySet.as_manager()

    class Meta:
        ordering = ["model_name"]

    def __str__(self) -> str:
        return self.model_name

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        total = prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million
        return (total / ONE_MILLION).quantize(COST_PLACES)

    @classmethod
    def cost_for(
        cls,
        model_name: str,
        prompt_tokens: int,
        completion_tokens: int,
        prices: dict[str, ModelPrice] | None = None,
    ) -> Decimal:
        """USD for these tokens at the model's price; an unknown model costs 0."""
        price = prices.get(model_name) if prices is not None else cls.objects.filter(model_name=model_name).first()
        if price is None:
            return Decimal(0)
        return price.cost(prompt_tokens or 0, completion_tokens or 0)


class APIKeyQuerySet(models.QuerySet):
    def active(self) -> APIKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class APIKey(models.Model):
    """A secret for machine clients. Only its SHA-256 is stored; the key is shown once."""

    PREFIX = "llmo_"

    name = models.CharField(max_length=200)
    key_prefix = models.CharField(max_length=16, editable=False, help_text="First characters, to tell keys apart.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = APIKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"

    @staticmethod
    def hash_key(raw_key: str) -> str:
        # The key has 256 bits of entropy, so a fast hash is safe and keeps auth cheap.
        return hashlib.sha256(raw_key.encode()).hexdigest()

    @classmethod
    def generate(cls, name: str) -> tuple[APIKey, str]:
        """Create a key; answers (row, raw key). The raw key cannot be recovered later."""
        raw_key = cls.PREFIX + secrets.token_urlsafe(32)
        api_key = cls.objects.create(name=name, key_prefix=raw_key[:12], key_hash=cls.hash_key(raw_key))
        return api_key, raw_key

    @classmethod
    def authenticate(cls, raw_key: str) -> APIKey | None:
        api_key = cls.objects.active().filter(key_hash=cls.hash_key(raw_key)).first()
        if api_key is not None:
            now = timezone.now()
            # Writing on every request would make each call a write; once a minute is enough.
            if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
                APIKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        return api_key

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


# Prometheus running totals. /metrics reads these small tables instead of scanning the
# logs, and they keep counting what purge_logs deletes, so Prometheus counters never go down.

# Upper bounds, in seconds, of the latency and time-to-first-token histogram buckets: from a
# cached short answer (0.1 s) to a long generation near the proxy's timeout (60 s).
HISTOGRAM_BUCKETS_SECONDS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)


def empty_buckets() -> list[int]:
    return [0] * len(HISTOGRAM_BUCKETS_SECONDS)


class RequestTotal(models.Model):
    """Everything ever logged for one model and status, up to the `requests` watermark."""

    model_name = models.CharField(max_length=200)
    status = models.CharField(max_length=8, choices=LLMRequestLog.Status.choices)
    requests = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=28, decimal_places=10, default=Decimal(0))
    duration_sum_seconds = models.FloatField(default=0)
    # Cumulative counts: duration_buckets[i] = requests with latency <= HISTOGRAM_BUCKETS_SECONDS[i].
    duration_buckets = models.JSONField(default=empty_buckets)
    ttft_count = models.BigIntegerField(default=0)
    ttft_sum_seconds = models.FloatField(default=0)
    ttft_buckets = models.JSONField(default=empty_buckets)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model_name", "status"], name="llm_requesttotal_model_status")]

    def __str__(self) -> str:
        return f"{self.model_name} {self.status}: {self.requests}"


class FeedbackTotal(models.Model):
    rating = models.CharField(max_length=12, choices=UserFeedback.Rating.choices, unique=True)
    count = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.rating}: {self.count}"


class MetricWatermark(models.Model):
    """The highest row id of a table already added to running totals or roll-ups."""

    name = models.CharField(max_length=32, unique=True)  # "requests", "feedback" or "rollups"
    last_id = models.BigIntegerField(default=0)
    # The roll-ups only: the TIME_ZONE their daily rows were built in (llm.checks warns on a change).
    time_zone = models.CharField(max_length=64, blank=True, default="")
    # The roll-ups only: the first day the daily rows cover in full (None: every day). Set when a
    # rebuild in a new TIME_ZONE could not rebuild days whose logs purge_logs had deleted.
    days_since = models.DateField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} up to id {self.last_id}"


# Roll-ups (llm/rollups.py keeps them, llm/metrics.py reads them): the logs summed per UTC hour and
# per day in TIME_ZONE, so a figure over a long window reads a few hundred small rows. Latency and
# time-to-first-token distributions are histograms in the stored form of llm/rollup_math.py.


class RollupFigures(models.Model):
    """What an hour's or a day's calls of one model, status and error type add up to."""

    model_name = models.CharField(max_length=200)
    status = models.CharField(max_length=8, choices=LLMRequestLog.Status.choices)
    error_type = models.CharField(max_length=20, blank=True, default="")
    requests = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    # The sum of the rows' stored cost_estimate (a price change rewrites neither) in units of
    # COST_PLACES (USD 10^-10): an integer, so sums stay exact on SQLite, which adds decimals as floats.
    cost_units = models.BigIntegerField(default=0)
    latency_sum_ms = models.FloatField(default=0)
    ttft_count = models.BigIntegerField(default=0)
    ttft_sum_ms = models.FloatField(default=0)
    latency_histogram = models.BinaryField(default=b"")
    ttft_histogram = models.BinaryField(default=b"")

    class Meta:
        abstract = True


class HourlyRollup(RollupFigures):
    hour = models.DateTimeField(help_text="Start of the UTC hour.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hour", "model_name", "status", "error_type"], name="llm_hourlyrollup_key")
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.model_name} {self.status}: {self.requests}"


class DailyRollup(RollupFigures):
    day = models.DateField(help_text="The date in TIME_ZONE (MetricWatermark 'rollups'.time_zone).")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "model_name", "status", "error_type"], name="llm_dailyrollup_key")
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.model_name} {self.status}: {self.requests}"


class DailyUserRollup(models.Model):
    """One user's calls of a day (TIME_ZONE), model and status: unique users and top users."""

    day = models.DateField()
    user_id = models.CharField(max_length=200)
    model_name = models.CharField(max_length=200)
    status = models.CharField(max_length=8, choices=LLMRequestLog.Status.choices)
    requests = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost_units = models.BigIntegerField(default=0)  # USD 10^-10, as RollupFigures.cost_units

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "model_name", "status", "user_id"], name="llm_dailyuserrollup_key")
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.user_id} {self.model_name} {self.status}: {self.requests}"


class UserTotals(models.Model):
    """One user's calls of a period, all models and statuses together."""

    user_id = models.CharField(max_length=200)
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost_units = models.BigIntegerField(default=0)  # USD 10^-10, as RollupFigures.cost_units

    class Meta:
        abstract = True


class DailyUserTotals(UserTotals):
    """One user's calls of a day (TIME_ZONE), all models and statuses together: DailyUserRollup
    summed over model and status, so unique and top users over 90 days read one row per user and
    day (~45,000 for 500 users) instead of one per user, day, model and status."""

    day = models.DateField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "user_id"], name="llm_dailyusertotals_key")]
        verbose_name_plural = "daily user totals"

    def __str__(self) -> str:
        return f"{self.day} {self.user_id}: {self.requests}"


class HourlyUserTotals(UserTotals):
    """One user's calls of a UTC hour, all models and statuses together: distinct and top users
    over the whole hours of a window (a window without a whole day, and the hours around the
    days of a longer one) without reading their calls."""

    hour = models.DateTimeField(help_text="Start of the UTC hour.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hour", "user_id"], name="llm_hourlyusertotals_key")]
        verbose_name_plural = "hourly user totals"

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.user_id}: {self.requests}"


class DashboardSettings(models.Model):
    """Where the overview's cards turn amber and red; one row, edited in admin."""

    error_rate_amber = models.FloatField(default=2.0, validators=[MinValueValidator(0)], help_text="Percent.")
    error_rate_red = models.FloatField(default=5.0, validators=[MinValueValidator(0)], help_text="Percent.")
    p95_latency_amber_ms = models.FloatField(default=3000, validators=[MinValueValidator(0)])
    p95_latency_red_ms = models.FloatField(default=8000, validators=[MinValueValidator(0)])
    cost_per_day_amber_usd = models.FloatField(
        default=10, validators=[MinValueValidator(0)], help_text="Average spend per day over the range shown."
    )
    cost_per_day_red_usd = models.FloatField(default=50, validators=[MinValueValidator(0)])
    # Where the dashboard was last opened (scheme://host[:port]): links in alert notices point
    # there when SITE_URL is empty. Written only when it changes: a page view costs one small read.
    served_origin = models.CharField(max_length=300, blank=True, default="", editable=False)

    class Meta:
        verbose_name = verbose_name_plural = "dashboard settings"

    def __str__(self) -> str:
        return "Dashboard settings"

    def thresholds(self) -> dict[str, tuple[float, float]]:
        return {
            "error_rate": (self.error_rate_amber, self.error_rate_red),
            "p95_latency": (self.p95_latency_amber_ms, self.p95_latency_red_ms),
            "cost_per_day": (self.cost_per_day_amber_usd, self.cost_per_day_red_usd),
        }

    def clean(self) -> None:
        red_fields = {"error_rate": "error_rate_red", "p95_latency": "p95_latency_red_ms"}
        for metric, (amber, red) in self.thresholds().items():
            if red < amber:
                field = red_fields.get(metric, "cost_per_day_red_usd")
                raise ValidationError({field: "Red must be at least the amber threshold."})

    @classmethod
    def load(cls) -> DashboardSettings:
        settings_row, _ = cls.objects.get_or_create(pk=1)
        return settings_row

    @classmethod
    def last_served_origin(cls) -> str:
        """The origin the dashboard was last served from; "" when it never was."""
        return cls.objects.filter(pk=1).values_list("served_origin", flat=True).first() or ""

    @classmethod
    def remember_origin(cls, origin: str) -> None:
        """Record the origin a page was served from, writing only when it differs from the stored one."""
        if len(origin) > cls._meta.get_field("served_origin").max_length:
            return  # no real host is that long, and a cut origin would be a broken link
        stored = cls.objects.filter(pk=1).values_list("served_origin", flat=True).first()
        if stored == origin:
            return
        if stored is None:
            cls.load()
        cls.objects.filter(pk=1).update(served_origin=origin)

    def level(self, metric: str, value: float | None) -> str:
        """ "ok", "amber" or "red" for a card; metric is error_rate, p95_latency or cost_per_day."""
        if value is None:
            return "ok"
        amber, red = self.thresholds()[metric]
        if value >= red:
            return "red"
        return "amber" if value >= amber else "ok"


models.signals.post_save.connect(forget_prices, sender=ModelPrice, dispatch_uid="llm_forget_prices_on_save")
models.signals.post_delete.connect(forget_prices, sender=ModelPrice, dispatch_uid="llm_forget_prices_on_delete")


class RateLimitCounter(models.Model):
    """How much one caller (an API key or a user) used of one rate limit in one minute
    (llm/throttles.py). A row per subject and minute, raised by one atomic upsert, so that every
    worker process counts in the same place."""

    subject = models.CharField(max_length=100)  # "prompt:key:12", "ingest:user:3"
    minute = models.BigIntegerField()  # minutes since the Unix epoch, UTC
    hits = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["subject", "minute"], name="llm_ratelimit_subject_minute")]
        # The clean-up deletes by minute alone.
        indexes = [models.Index(fields=["minute"], name="llm_ratelimit_minute")]

    def __str__(self) -> str:
        return f"{self.subject} at minute {self.minute}: {self.hits}"
