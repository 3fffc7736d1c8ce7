from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, URLValidator, validate_email
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, models, transaction
from django.dispatch import Signal
from django.utils import timezone

from llm import traces
from llm.ingest_limits import CONTROL_CHARACTER, EPOCH, STORED_YEARS
from llm.outbound import validate_outbound_url
from llm.row_insert import INSERT_BATCH_ROWS, as_uuid, insert_new, writer_turn

ONE_MILLION = Decimal(1_000_000)
# Sent (sender LLMRequestLog, `created`: how many rows) once calls stored by `record` or
# `record_many` are committed. llm/rollups.py listens (connected in apps.py) and brings the
# roll-ups up to date, so this module does not import what imports it.
calls_recorded = Signal()
COST_PLACES = Decimal("0.0000000001")
# A call with some text, the only calls a `search` can match (llm.filters.search_logs): the condition
# of the partial index llm_log_text_time, which the search repeats (PostgreSQL uses a partial index
# only for a query that implies its condition). Calls reported without text (spans exported without
# content, events without text) stay out of the index.
CARRIES_TEXT = ~models.Q(prompt_text="") | ~models.Q(response_text="")


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
        """The calls of one trace as a tree, and its context spans (llm/traces.py); nothing stored:
        both lists empty."""
        rows = (
            self.filter(trace_id=trace_id)
            .order_by("timestamp", "id")
            .values(*traces.TRACE_CALL_FIELDS)[: traces.MAX_TRACE_CALLS + 1]
        )
        return traces.as_tree(list(rows), TraceSpan.objects.of_trace(trace_id))


class LLMRequestLogManager(models.Manager.from_queryset(LLMRequestLogQuerySet)):
    def record(self, **fields: Any) -> tuple[LLMRequestLog, bool]:
        """Store one call; answers (row, created). A repeated request_id stores nothing new.

        Every path that writes calls (proxy, events, OTLP) goes through here or through
        `record_many`, so privacy rules, derived totals and cost apply the same way everywhere.
        """
        fields.setdefault("cost_estimate", None)  # None: computed from ModelPrice
        log = LLMRequestLog(**fields)
        log.prepare_for_storage(cached_price_table())
        log.request_id = as_uuid(log.request_id)
        for _ in range(2):
            if insert_new(self.model, [log], self.db):
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
            log.request_id = as_uuid(log.request_id)
            unique.setdefault(log.request_id, log)
        created = insert_new(self.model, list(unique.values()), self.db)
        if created:
            _announce(created)
        return created, len(logs) - created


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
        # Refused by us before any vendor call: a hard-limit Budget of its scope is spent (llm/budgets.py).
        BUDGET_EXCEEDED = "budget_exceeded", "Budget exceeded"

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
    # Prompt tokens the provider served from its cache (part of prompt_tokens), priced at the
    # cached rate where the price has one.
    # Database defaults too, as api_key_name: rows inserted in raw SQL (bench/scale_data.py) need not name them.
    cached_tokens = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Prompt tokens served from the provider's cache (part of prompt_tokens)."
    )
    # True when the provider reported no usage and the counts are estimated (llm.proxy.estimate_tokens).
    tokens_estimated = models.BooleanField(
        default=False,
        db_default=False,
        help_text="True when the provider reported no usage: the token counts (and the cost) are estimated, "
        "ceil(characters / 4).",
    )
    # The provider's own timings, where it reports them (Groq's usage, Cerebras' time_info).
    queue_time_ms = models.FloatField(null=True, blank=True, help_text="Time queued at the provider (its own figure).")
    prompt_time_ms = models.FloatField(null=True, blank=True, help_text="The provider's time reading the prompt.")
    completion_time_ms = models.FloatField(null=True, blank=True, help_text="The provider's time generating.")
    # completion_tokens / (latency - time to first token): how fast a streamed answer came.
    output_tokens_per_second = models.FloatField(
        null=True, blank=True, help_text="completion_tokens / (latency - ttft) in seconds; null unless streamed."
    )
    # The name of the API key a proxied call came with ("" otherwise): what a Budget of scope
    # `api_key` counts. A name, not a foreign key, because a budget names the key and the row
    # must keep counting after the key is revoked or deleted.
    # A database default too: rows inserted in raw SQL (bench/, older scripts) need not name it.
    api_key_name = models.CharField(max_length=200, blank=True, default="", db_default="")

    objects = LLMRequestLogManager()

    class Meta:
        verbose_name = "LLM request log"
        # The rights of the roles (llm/permissions.py): prompt and response text are the most
        # sensitive data stored here, so seeing them is a permission of its own.
        permissions = [
            ("view_prompt_text", "Can see prompt and response text"),
            ("export_logs", "Can export logs (CSV, JSON)"),
            ("give_feedback", "Can rate calls"),
            ("use_playground", "Can send prompts (playground, /api/llm/prompt/)"),
            ("manage_alerting", "Can change alerting: rules, budgets, silences, acknowledging"),
            ("ingest_events", "Can report calls with a logged-in session (/api/events/)"),
        ]
        indexes = [
            # Dashboard and metrics filtered by model, status or user over a time range (model: also
            # the model list, a loose index scan in llm.dashboard.logged_model_names; user: the
            # `user_id` filter of logs, metrics and export, which the roll-ups do not cover).
            # user_id last: the unique users of one model in the hours around a window's whole days
            # (llm.metrics.unique_users_from_rollups) read the index alone, not a row per call
            # (90-day overview of one model at 10M calls: 126 ms with (model_name, timestamp)).
            models.Index(fields=["model_name", "timestamp", "user_id"], name="llm_log_model_time_user"),
            models.Index(fields=["status", "timestamp"], name="llm_log_status_time"),
            models.Index(fields=["user_id", "timestamp"], name="llm_log_user_time"),
            # The `session_id` filter (logs, metrics, export) and a session's calls, which the
            # roll-ups do not cover: without it a 30-day window reads every row of the window.
            # (`search` has trigram indexes on PostgreSQL: migration 0008, not declared here.)
            models.Index(fields=["session_id", "timestamp"], name="llm_log_session_time"),
            # The trace view lists every call of one trace.
            models.Index(fields=["trace_id", "timestamp"], name="llm_log_trace_time"),
            # The spend of an `api_key` Budget over its period (llm/budgets.py), on every refresh of
            # the hard-limit check and on the budgets API.
            models.Index(fields=["api_key_name", "timestamp"], name="llm_log_api_key_time"),
            # `search`, newest first: a walk of the calls with text only. Calls without text can
            # never match, and when they are the newest (each on its own page of the table after a
            # VACUUM) a walk of the timestamp index read ~96,000 of them before its first match.
            # One column, like the timestamp index: PostgreSQL rates a two-column index's order
            # lower (0.75 of its correlation) and then walks the timestamp index instead.
            models.Index(fields=["timestamp"], name="llm_log_text_time", condition=CARRIES_TEXT),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} {self.status} {self.request_id}"

    @property
    def is_error(self) -> bool:
        return self.status == self.Status.ERROR

    def prepare_for_storage(self, prices: PriceTable | None = None) -> None:
        """Derive totals and cost, and apply the privacy settings to the stored text."""
        from llm import privacy

        if not self.total_tokens:
            self.total_tokens = (self.prompt_tokens or 0) + (self.completion_tokens or 0)
        if self.cost_estimate is None:
            self.cost_estimate = (prices if prices is not None else ModelPrice.objects.price_table()).cost(self)
        if self.output_tokens_per_second is None:
            self.output_tokens_per_second = output_tokens_per_second(
                self.completion_tokens, self.latency_ms, self.ttft_ms
            )
        self.prompt_text = privacy.stored_text(self.prompt_text)
        self.response_text = privacy.stored_text(self.response_text)
        self.error_message = privacy.stored_text(self.error_message, always_store=True)


def output_tokens_per_second(completion_tokens: int, latency_ms: float, ttft_ms: float | None) -> float | None:
    """Generation speed after the first token; None when not streamed or nothing to measure."""
    if ttft_ms is None or not completion_tokens or latency_ms is None or latency_ms <= ttft_ms:
        return None
    return completion_tokens / ((latency_ms - ttft_ms) / 1000)


class TraceSpanQuerySet(models.QuerySet):
    def store(self, spans: list[TraceSpan]) -> None:
        """Store context spans; a span already stored (trace_id, span_id) is skipped, so an exporter
        that sends a batch again stores nothing twice.

        Sorted by key for the reason `row_insert.insert_new` sorts by request_id (no deadlock between two
        PostgreSQL writers); on SQLite, in turn with the other writers of this process.
        """
        if not spans:
            return
        spans = sorted(spans, key=lambda span: (span.trace_id, span.span_id))
        connection = connections[self.db]
        with writer_turn(connection), transaction.atomic(using=self.db):
            self.bulk_create(spans, ignore_conflicts=True, batch_size=INSERT_BATCH_ROWS)

    def of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """One trace's spans in time order, at most MAX_TRACE_CALLS + 1 (traces.py cuts and says so)."""
        return list(
            self.filter(trace_id=trace_id)
            .order_by("start", "id")
            .values(*traces.TRACE_SPAN_FIELDS)[: traces.MAX_TRACE_CALLS + 1]
        )


class TraceSpan(models.Model):
    """A span of a trace that is not an LLM call (an HTTP handler, a database query, an agent or
    tool step), kept as the trace's context so the trace page can draw the whole request. LLM
    calls are `LLMRequestLog` rows; the two join on trace_id and span ids.

    Bounded: a name and service of at most 200 characters, a status message of at most 1,000, and
    at most 32 attributes (llm/otlp.py `context_attributes` says which, and counts the others in
    `dropped_attributes`). purge_logs deletes spans by start time with the calls.
    """

    class Kind(models.TextChoices):
        # OTLP's SpanKind, without its prefix.
        UNSPECIFIED = "unspecified", "Unspecified"
        INTERNAL = "internal", "Internal"
        SERVER = "server", "Server"
        CLIENT = "client", "Client"
        PRODUCER = "producer", "Producer"
        CONSUMER = "consumer", "Consumer"

    class Status(models.TextChoices):
        UNSET = "unset", "Unset"
        OK = "ok", "OK"
        ERROR = "error", "Error"

    trace_id = models.CharField(max_length=32)
    span_id = models.CharField(max_length=16)
    parent_span_id = models.CharField(max_length=16, blank=True, default="")
    name = models.CharField(max_length=200)
    service = models.CharField(max_length=200, blank=True, default="")
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.UNSPECIFIED)
    start = models.DateTimeField()
    end = models.DateTimeField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.UNSET)
    status_message = models.CharField(max_length=1000, blank=True, default="")
    attributes = models.JSONField(default=dict, blank=True)
    # Attributes not kept: over the limit, carrying prompt or response text, or dropped by the sender.
    dropped_attributes = models.PositiveIntegerField(default=0)

    objects = TraceSpanQuerySet.as_manager()

    class Meta:
        constraints = [
            # One row per span (an exporter's retry stores nothing twice); also the index the
            # trace page's lookup by trace_id uses.
            models.UniqueConstraint(fields=["trace_id", "span_id"], name="llm_tracespan_trace_span"),
        ]
        indexes = [
            # purge_logs deletes spans older than the retention period.
            models.Index(fields=["start"], name="llm_tracespan_start"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.trace_id}/{self.span_id}"

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start).total_seconds() * 1000


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
        # The rated call's time and model are copied onto the rating (see UserFeedback), here too.
        defaults = {
            "rating": rating,
            "comment": comment,
            "created_at": timezone.now(),
            "call_timestamp": log.timestamp,
            "model_name": log.model_name,
        }
        return self.update_or_create(request=log, rater=rater, defaults=defaults)

    def of_calls(self, start: datetime, end: datetime, model: str = "") -> UserFeedbackQuerySet:
        """Ratings of the calls made in [start, end), of one model (blank: all), by the copies of
        the call's time and model on each rating (indexed): no join to the calls."""
        rated = self.filter(call_timestamp__gte=start, call_timestamp__lt=end)
        return rated.filter(model_name=model) if model else rated

    def bulk_create(self, objs: Iterable[UserFeedback], *args: Any, **kwargs: Any) -> list[UserFeedback]:
        # bulk_create skips save(): copy each rated call's time and model here as well.
        objs = list(objs)
        for feedback in objs:
            feedback.follow_call()
        return super().bulk_create(objs, *args, **kwargs)


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
    # Copies of the rated call's timestamp and model_name (a call never changes once written), so
    # that the feedback figures, which select ratings by the call's time and model, read the ratings
    # alone: joining each rating to its call cost seconds at 10 million calls (issue 14). Filled on
    # every save and bulk_create; the migration feedback_call_fields filled the older rows.
    call_timestamp = models.DateTimeField(editable=False)
    model_name = models.CharField(max_length=200, editable=False)

    objects = UserFeedbackQuerySet.as_manager()

    class Meta:
        verbose_name = "user feedback"
        verbose_name_plural = "user feedback"
        constraints = [models.UniqueConstraint(fields=["request", "rater"], name="one_rating_per_call_and_rater")]
        indexes = [
            models.Index(fields=["call_timestamp"], name="feedback_call_time"),
            models.Index(fields=["model_name", "call_timestamp"], name="feedback_call_model_time"),
        ]

    def __str__(self) -> str:
        return f"{self.get_rating_display()} on {self.request.request_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.follow_call()
        if kwargs.get("update_fields") is not None:
            kwargs["update_fields"] = {*kwargs["update_fields"], "call_timestamp", "model_name"}
        super().save(*args, **kwargs)

    def follow_call(self) -> None:
        """Copy the rated call's time and model onto this rating."""
        self.call_timestamp = self.request.timestamp
        self.model_name = self.request.model_name


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


class NotificationChannelQuerySet(models.QuerySet):
    def failing(self) -> NotificationChannelQuerySet:
        """Channels whose last ALERT_CHANNEL_FAILING_AFTER deliveries (or more) all failed."""
        return self.filter(consecutive_failures__gte=settings.ALERT_CHANNEL_FAILING_AFTER)


class NotificationChannel(models.Model):
    """Somewhere notices go: an e-mail list, a Slack-compatible webhook, a signed webhook or a
    PagerDuty service. A rule may use several; one channel may serve many rules.

    The rule's own `notify_email`/`email_recipients`/`webhook_url` keep working beside these (they
    are the rule's unnamed e-mail and Slack-compatible channels); both are tried on every notice.
    """

    class Kind(models.TextChoices):
        EMAIL = "email", "E-mail"
        SLACK = "slack", "Slack-compatible webhook"
        WEBHOOK = "webhook", "Signed webhook (HMAC-SHA256)"
        PAGERDUTY = "pagerduty", "PagerDuty Events API v2"

    name = models.CharField(max_length=100, unique=True, validators=[validate_one_line])
    kind = models.CharField(max_length=16, choices=Kind.choices)
    target = models.CharField(
        max_length=2000,
        blank=True,
        default="",
        validators=[validate_one_line],
        help_text="E-mail: comma-separated addresses. Webhooks: the http(s) URL. PagerDuty: blank.",
    )
    secret = models.CharField(
        max_length=200,
        blank=True,
        default="",
        validators=[validate_one_line],
        help_text="Signed webhook: the HMAC-SHA256 key the receiver checks the signature with.",
    )
    routing_key = models.CharField(
        max_length=64,
        blank=True,
        default="",
        validators=[validate_one_line],
        help_text="PagerDuty: the integration (routing) key of an Events API v2 integration.",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Delivery health, written by the notifiers only (record_result).
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    last_error = models.CharField(max_length=300, blank=True, default="", editable=False)
    last_failure_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_success_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = NotificationChannelQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    # A secret shorter than this is guessable enough to forge signatures.
    MIN_SECRET_LENGTH = 16

    def clean(self) -> None:
        super().clean()
        problems: dict[str, str] = {}
        if self.kind == self.Kind.EMAIL:
            if not split_email_list(self.target):
                problems["target"] = "Enter at least one e-mail address."
            else:
                try:
                    validate_email_list(self.target)
                except ValidationError as error:
                    problems["target"] = error.messages[0]
        elif self.kind in (self.Kind.SLACK, self.Kind.WEBHOOK):
            try:
                webhook_url_validator(self.target)
                validate_outbound_url(self.target)
            except ValidationError as error:
                problems["target"] = error.messages[0]
        if self.kind == self.Kind.WEBHOOK and len(self.secret) < self.MIN_SECRET_LENGTH:
            problems["secret"] = f"A signed webhook needs a secret of at least {self.MIN_SECRET_LENGTH} characters."
        if self.kind == self.Kind.PAGERDUTY and not self.routing_key:
            problems["routing_key"] = "A PagerDuty channel needs the routing key of its integration."
        if problems:
            raise ValidationError(problems)

    @property
    def is_failing(self) -> bool:
        return self.consecutive_failures >= settings.ALERT_CHANNEL_FAILING_AFTER

    def record_result(self, error: str = "", now: datetime | None = None) -> None:
        """Count a delivery: a success clears the run of failures, a failure adds one to it.

        An UPDATE with F(), so two runs delivering at once both count."""
        now = now or timezone.now()
        rows = NotificationChannel.objects.filter(pk=self.pk)
        if error:
            rows.update(
                consecutive_failures=models.F("consecutive_failures") + 1, last_error=error[:300], last_failure_at=now
            )
        else:
            rows.update(consecutive_failures=0, last_success_at=now)
        self.refresh_from_db(fields=["consecutive_failures", "last_error", "last_failure_at", "last_success_at"])


class NoticeTargets(models.Model):
    """Where an alert rule's or a budget's notices go besides its named channels: e-mail recipients
    and one webhook, each falling back to ALERT_EMAIL_RECIPIENTS / ALERT_WEBHOOK_URL."""

    email_recipients = models.TextField(
        blank=True,
        default="",
        validators=[validate_email_list],
        help_text="Comma-separated; blank: ALERT_EMAIL_RECIPIENTS.",
    )
    webhook_url = models.URLField(
        blank=True,
        default="",
        validators=[webhook_url_validator, validate_outbound_url],
        help_text="Blank: ALERT_WEBHOOK_URL.",
    )

    class Meta:
        abstract = True

    @property
    def recipients(self) -> list[str]:
        return split_email_list(self.email_recipients) or list(settings.ALERT_EMAIL_RECIPIENTS)

    @property
    def effective_webhook_url(self) -> str:
        return self.webhook_url or settings.ALERT_WEBHOOK_URL


class AlertRuleQuerySet(models.QuerySet):
    def active(self) -> AlertRuleQuerySet:
        return self.filter(is_active=True)

    def firing(self) -> AlertRuleQuerySet:
        """Active rules over their threshold at the last check (a deactivated rule is not firing)."""
        return self.active().filter(is_firing=True)

    def with_channels_and_silences(self, now: datetime | None = None) -> AlertRuleQuerySet:
        """Each rule's named channels and the silences muting it at `now` (`active_silences`), in
        two queries for the whole list rather than two per rule."""
        silences = AlertSilence.objects.active(now or timezone.now()).order_by("-ends_at", "-id")
        return self.prefetch_related(
            "channels", models.Prefetch("silences", queryset=silences, to_attr="active_silences")
        )


# An error_rate rule's threshold is a percentage.
MAX_ERROR_RATE_PERCENT = 100.0


# group_by: "model", "user", or "tag:<key>" (a tag key as the events API stores it).
GROUP_BY_PATTERN = re.compile(r"^(model|user|tag:[^\x00-\x1f\x7f\ud800-\udfff]{1,100})$")
FEEDBACK_MIN_RATINGS_MAX = 1_000_000


def validate_group_by(value: str) -> None:
    if value and not GROUP_BY_PATTERN.match(value):
        raise ValidationError("Group by “model”, “user” or “tag:<key>” (a key of 1 to 100 printable characters).")


class AlertLevel(models.TextChoices):
    """How bad a firing state is: a rule's `threshold` is the critical one, `warning_threshold` the other."""

    OK = "", "OK"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


# The fields that define what a rule measures and when it fires: the rule form, admin's "Condition",
# the rules API and the preview all take these.
RULE_DEFINITION_FIELDS = [
    "metric_type",
    "threshold",
    "warning_threshold",
    "time_window_minutes",
    "model_name",
    "error_type",
    "min_ratings",
    "group_by",
    "no_data",
    "cooldown_minutes",
]


class AlertRule(NoticeTargets):
    class MetricType(models.TextChoices):
        ERROR_RATE = "error_rate", "Error rate (%)"
        LATENCY_P95 = "latency_p95", "Latency p95 (ms)"
        LATENCY_P99 = "latency_p99", "Latency p99 (ms)"
        TTFT_P95 = "ttft_p95", "Time to first token p95 (ms)"
        TOKEN_SPIKE = "token_spike", "Token spike (ratio to previous window)"
        COST = "cost", "Cost (USD per window)"
        NO_TRAFFIC = "no_traffic", "No traffic (fewer requests than threshold)"
        FEEDBACK = "feedback", "Feedback (satisfaction % below threshold)"

    class NoData(models.TextChoices):
        """What a check without a verdict (too little traffic, no ratings, no baseline) does."""

        KEEP = "keep", "Keep the last state"
        OK = "ok", "Count as OK (resolves)"
        ALERT = "alert", "Count as firing (critical)"

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
    warning_threshold = models.FloatField(
        null=True,
        blank=True,
        validators=[validate_finite, MinValueValidator(0)],
        help_text="Optional second level, crossed before the critical `threshold`.",
    )
    error_type = models.CharField(
        max_length=20,
        blank=True,
        default="",
        choices=LLMRequestLog.ErrorType.choices,
        help_text="error_rate only: count only failures of this type (blank: every failure).",
    )
    min_ratings = models.PositiveIntegerField(
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(FEEDBACK_MIN_RATINGS_MAX)],
        help_text="feedback only: no verdict on fewer ratings than this in the window.",
    )
    group_by = models.CharField(
        max_length=104,
        blank=True,
        default="",
        validators=[validate_group_by],
        help_text="“model”, “user” or “tag:<key>”: one alert state per group. Blank: one state for the rule.",
    )
    no_data = models.CharField(max_length=8, choices=NoData.choices, default=NoData.KEEP)
    is_active = models.BooleanField(default=True)
    notify_email = models.BooleanField(default=True)
    channels = models.ManyToManyField(
        NotificationChannel, blank=True, related_name="rules", help_text="Named channels, besides the fields above."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    # State, written by check_alerts only (through the methods below).
    # For a grouped rule these say whether any group fires (and the worst level); each group's
    # own state is an AlertState row.
    is_firing = models.BooleanField(default=False, editable=False)
    level = models.CharField(max_length=8, choices=AlertLevel.choices, blank=True, default="", editable=False)
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
        self.validate_definition(
            {
                "metric_type": self.metric_type,
                "threshold": self.threshold,
                "warning_threshold": self.warning_threshold,
                "error_type": self.error_type,
            }
        )

    @classmethod
    def validate_threshold(cls, metric_type: str | None, threshold: float | None) -> None:
        """The bound a threshold has for its metric type; the admin form (through clean) and the
        API's serializer both ask here."""
        cls.validate_definition({"metric_type": metric_type, "threshold": threshold})

    @classmethod
    def validate_definition(cls, fields: dict[str, Any]) -> None:
        """What holds between a rule's fields (the admin form, the rule form and the API ask here):
        percentages at most 100, the warning level crossed before the critical one, error_type on
        error_rate only."""
        metric_type = fields.get("metric_type")
        errors: dict[str, str] = {}
        if metric_type in PERCENT_METRICS:
            for name in ("threshold", "warning_threshold"):
                value = fields.get(name)
                if value is not None and value > MAX_ERROR_RATE_PERCENT:
                    errors[name] = f"A percentage: at most {MAX_ERROR_RATE_PERCENT:g}."
        threshold, warning = fields.get("threshold"), fields.get("warning_threshold")
        if warning is not None and threshold is not None and "warning_threshold" not in errors:
            if metric_type in FIRES_BELOW and warning <= threshold:
                errors["warning_threshold"] = "This rule fires below its threshold: the warning level must be above it."
            elif metric_type not in FIRES_BELOW and warning >= threshold:
                errors["warning_threshold"] = "The warning level must be below the critical threshold."
        if fields.get("error_type") and metric_type != cls.MetricType.ERROR_RATE:
            errors["error_type"] = "Only an error_rate rule counts failures of one type."
        if errors:
            raise ValidationError(errors)

    @property
    def fires_below(self) -> bool:
        return self.metric_type in FIRES_BELOW

    def level_of(self, value: float) -> str:
        """The level a value reaches: critical past `threshold`, warning past `warning_threshold`."""
        if self.fires_below:
            crossed = lambda bound: bound is not None and value < bound  # noqa: E731
        else:
            crossed = lambda bound: bound is not None and value > bound  # noqa: E731
        if crossed(self.threshold):
            return AlertLevel.CRITICAL
        return AlertLevel.WARNING if crossed(self.warning_threshold) else AlertLevel.OK

    def active_silence(self, now: datetime | None = None) -> AlertSilence | None:
        """The silence muting the rule now (the one that lasts longest), or None."""
        return self.silences.active(now or timezone.now()).order_by("-ends_at", "-id").first()

    def silence(self, until: datetime, reason: str, user: Any | None = None, by_name: str = "") -> AlertSilence:
        """Mute the rule's notices until `until`; it is still evaluated and its state still shown."""
        if not by_name and user is not None and user.is_authenticated:
            by_name = user.get_username()
        created_by = user if user is not None and user.is_authenticated else None
        return AlertSilence.objects.create(
            alert_rule=self, ends_at=until, reason=reason, created_by=created_by, created_by_name=by_name
        )

    def unsilence(self, user: Any | None = None, by_name: str = "", now: datetime | None = None) -> int:
        """End every silence muting the rule now; answers how many."""
        if not by_name and user is not None and user.is_authenticated:
            by_name = user.get_username()
        now = now or timezone.now()
        return self.silences.active(now).update(ended_at=now, ended_by_name=by_name)

    def record_check(
        self,
        *,
        value: float | None,
        level: str | None,
        window_start: datetime,
        window_end: datetime,
        message: str,
        now: datetime,
        group_key: str | None = None,
    ) -> AlertLog | None:
        """Store the outcome of one evaluation of the rule (or of one group of a grouped rule);
        answers the notice to send, if any.

        level None means "no verdict" (after the no-data policy: see llm/alerts.py): the state is
        left as it is. The transitions are those of `alerts.next_state` (which the preview
        replays); here each is a conditional UPDATE on the state's row, so when two check_alerts
        runs evaluate the same rule at once, only one of them wins it and writes the AlertLog; the
        loser's UPDATE matches no row (PostgreSQL re-checks the WHERE after the winner commits).
        The transaction is short and holds no lock while anything is sent.
        """
        if group_key is None:
            states: models.QuerySet = AlertRule.objects.filter(pk=self.pk)
        else:
            AlertState.objects.get_or_create(rule=self, group_key=group_key)
            states = AlertState.objects.filter(rule=self, group_key=group_key)
        alert = None
        with transaction.atomic():
            # A run that evaluated earlier but got here later (it was slow) must not undo what a
            # newer check recorded, e.g. fire again right after a newer check resolved.
            not_older = models.Q(last_checked_at__isnull=True) | models.Q(last_checked_at__lte=now)
            if not states.filter(not_older).update(last_value=value, last_checked_at=now):
                return None
            kind = self._transition(states, level, now)
            if kind is not None:
                alert = AlertLog.objects.create(
                    alert_rule=self,
                    kind=kind,
                    level=level or "",
                    group_key=group_key or "",
                    triggered_at=now,
                    message=message,
                    metric_value=value,
                    threshold=self.threshold,
                    window_start=window_start,
                    window_end=window_end,
                )
        if group_key is None:
            self.refresh_from_db(fields=["is_firing", "level", "last_value", "last_checked_at", "last_notified_at"])
        return alert

    def _transition(self, states: models.QuerySet, level: str | None, now: datetime) -> str | None:
        """The conditional UPDATEs of one transition; answers the notice's kind, if one is due."""
        if level:
            # Newly over a level: always a notice. Warning to critical: a notice (an escalation).
            # Still over: a reminder once the cooldown has passed (strictly: two runs at the same
            # instant never both remind, even with a cooldown of 0). Critical back to warning: no notice.
            cooldown_start = now - timedelta(minutes=self.cooldown_minutes)
            notified = (
                states.filter(is_firing=False).update(is_firing=True, level=level, last_notified_at=now)
                or (
                    level == AlertLevel.CRITICAL
                    and states.filter(is_firing=True, level=AlertLevel.WARNING).update(
                        level=level, last_notified_at=now
                    )
                )
                or states.filter(is_firing=True, last_notified_at__lt=cooldown_start).update(
                    level=level, last_notified_at=now
                )
            )
            if notified:
                return AlertLog.Kind.FIRED
            states.exclude(level=level).update(level=level)
            return None
        if level == AlertLevel.OK and states.filter(is_firing=True).update(is_firing=False, level=AlertLevel.OK):
            return AlertLog.Kind.RESOLVED
        return None


# The metric types whose threshold is a percentage, and those that fire below it.
PERCENT_METRICS = {AlertRule.MetricType.ERROR_RATE, AlertRule.MetricType.FEEDBACK}
FIRES_BELOW = {AlertRule.MetricType.NO_TRAFFIC, AlertRule.MetricType.FEEDBACK}


class AlertState(models.Model):
    """The state of one group of a grouped rule (`group_by`): the same fields as the rule's own,
    with its own cooldown and resolve."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="states")
    # The model, the user id or the tag's value.
    group_key = models.CharField(max_length=200)
    is_firing = models.BooleanField(default=False)
    level = models.CharField(max_length=8, choices=AlertLevel.choices, blank=True, default="")
    last_value = models.FloatField(null=True, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["rule", "group_key"]
        constraints = [models.UniqueConstraint(fields=["rule", "group_key"], name="one_state_per_rule_group")]

    def __str__(self) -> str:
        return f"{self.rule.name} [{self.group_key}]"


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
    # The level a "fired" notice reached (blank on a resolve), and the group of a grouped rule.
    level = models.CharField(max_length=8, choices=AlertLevel.choices, blank=True, default="")
    group_key = models.CharField(max_length=200, blank=True, default="")
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

    def record_muted(self, silence: AlertSilence) -> None:
        """Settle a claimed notice without sending it: the rule is silenced."""
        self.notifications = {}
        self.delivered_at = timezone.now()
        self.delivery_note = silence.muted_note()[:200]
        AlertLog.objects.filter(pk=self.pk).update(
            notifications={}, delivered_at=self.delivered_at, delivery_note=self.delivery_note
        )

    @property
    def is_muted(self) -> bool:
        return self.delivery_note.startswith(MUTED_NOTE_PREFIX)

    @property
    def delivery_summary(self) -> str:
        """One line for people: "email sent, webhook error (HTTP 500…)", "not sent: no channel", "pending"."""
        if self.delivered_at is None:
            return "sending" if self.delivery_claimed_at else "pending"
        if self.delivery_note or not self.notifications:
            return self.delivery_note or "nothing recorded"
        return describe_notifications(self.notifications)


MUTED_NOTE_PREFIX = "muted"


class AlertSilenceQuerySet(models.QuerySet):
    def active(self, now: datetime) -> AlertSilenceQuerySet:
        return self.filter(ended_at__isnull=True, starts_at__lte=now, ends_at__gt=now)


class AlertSilence(models.Model):
    """A rule muted until a time, by whom and why. While it lasts, the rule is still evaluated and
    its state recorded and shown, but its notices are settled as "muted" instead of being sent."""

    alert_rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="silences")
    starts_at = models.DateTimeField(default=timezone.now)
    ends_at = models.DateTimeField(validators=[validate_stored_year])
    reason = models.CharField(max_length=500)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Who, as text: a user name, or "API key <name>" (as for acknowledging).
    created_by_name = models.CharField(max_length=200, blank=True, default="")
    # Set when someone unmutes before ends_at.
    ended_at = models.DateTimeField(null=True, blank=True)
    ended_by_name = models.CharField(max_length=200, blank=True, default="")

    objects = AlertSilenceQuerySet.as_manager()

    class Meta:
        ordering = ["-starts_at", "-id"]
        indexes = [
            # Delivery and the alerts page ask which rules are muted now, on every run.
            models.Index(fields=["alert_rule", "ends_at"], name="llm_silence_rule_ends"),
        ]

    def __str__(self) -> str:
        return f"{self.alert_rule.name} muted until {self.ends_at:%Y-%m-%d %H:%M}"

    def clean(self) -> None:
        super().clean()
        if self.ends_at and self.starts_at and self.ends_at <= self.starts_at:
            raise ValidationError({"ends_at": "A silence must end after it starts."})

    def muted_note(self) -> str:
        who = f" by {self.created_by_name}" if self.created_by_name else ""
        return f"{MUTED_NOTE_PREFIX}: silenced until {self.ends_at:%Y-%m-%d %H:%M} UTC{who}"


# Budgets (llm/budgets.py computes their spend, forecast, hard limit and warnings).
BUDGET_PERCENT_MIN = 1
BUDGET_PERCENT_MAX = 1000
BUDGET_MAX_WARNINGS = 10
BUDGET_AMOUNT_DIGITS = 14
BUDGET_AMOUNT_PLACES = 4
BUDGET_MIN_AMOUNT = Decimal("0.0001")
# A tag scope is `key:value` with a tag's own limits (llm/serializers.py TAG_KEY/VALUE_MAX_CHARS).
BUDGET_SCOPE_VALUE_MAX_CHARS = 601


def default_warn_at_percent() -> list[int]:
    return [80, 100]


def validate_warn_at_percent(value: Any) -> None:
    """A short list of whole percentages of the amount; each one is a notice once per period."""
    low, high = BUDGET_PERCENT_MIN, BUDGET_PERCENT_MAX
    if not isinstance(value, list):
        raise ValidationError("Enter a list of whole percentages, e.g. [80, 100].")
    if len(value) > BUDGET_MAX_WARNINGS:
        raise ValidationError(f"At most {BUDGET_MAX_WARNINGS} percentages.")
    for percent in value:
        if isinstance(percent, bool) or not isinstance(percent, int) or not low <= percent <= high:
            raise ValidationError(f"Each percentage is a whole number from {low} to {high}.")
    if len(set(value)) != len(value):
        raise ValidationError("Each percentage once.")


class Budget(NoticeTargets):
    """An amount of USD per day, week or calendar month (in TIME_ZONE) for a scope of calls."""

    class Scope(models.TextChoices):
        ALL = "all", "All calls"
        MODEL = "model", "One model"
        USER = "user", "One user"
        TAG = "tag", "One tag (key:value)"
        API_KEY = "api_key", "One API key (its name)"

    class Period(models.TextChoices):
        DAY = "day", "Day"
        WEEK = "week", "Week (from Monday)"
        MONTH = "month", "Calendar month"

    name = models.CharField(max_length=200, unique=True, validators=[validate_one_line])
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.ALL)
    scope_value = models.CharField(
        max_length=BUDGET_SCOPE_VALUE_MAX_CHARS,
        blank=True,
        default="",
        help_text="The model, the user id, key:value of a tag, or the API key's name; empty for all calls.",
    )
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.MONTH)
    amount_usd = models.DecimalField(
        max_digits=BUDGET_AMOUNT_DIGITS,
        decimal_places=BUDGET_AMOUNT_PLACES,
        validators=[MinValueValidator(BUDGET_MIN_AMOUNT)],
    )
    warn_at_percent = models.JSONField(
        default=default_warn_at_percent,
        validators=[validate_warn_at_percent],
        help_text="Percentages of the amount that each send one notice per period.",
    )
    hard_limit = models.BooleanField(
        default=False, help_text="Once spent, POST /api/llm/prompt/ in this scope answers 429 until the period ends."
    )
    channels = models.ManyToManyField(
        NotificationChannel,
        blank=True,
        related_name="budgets",
        help_text="Named channels, besides the fields above.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        if problem := self.scope_problem(self.scope, self.scope_value):
            raise ValidationError({"scope_value": problem})

    @classmethod
    def scope_problem(cls, scope: str, value: str) -> str | None:
        """What is wrong with `value` as the scope_value of `scope` (None: nothing); the admin form
        (clean) and the API's serializer both ask here."""
        if scope == cls.Scope.ALL:
            return "Leave empty: the budget covers all calls." if value else None
        if not value:
            return f"Required for scope {scope}."
        if scope == cls.Scope.TAG:
            key, colon, tag_value = value.partition(":")
            if not colon or not key or not tag_value:
                return "A tag scope is key:value, e.g. feature:summarize."
        return None

    @property
    def tag(self) -> tuple[str, str]:
        key, _, value = self.scope_value.partition(":")
        return key, value

    def covers(self, *, model_name: str, user_id: str, tags: dict[str, str], api_key_name: str) -> bool:
        """Whether a call with these labels is in this budget's scope (the prompt path's check)."""
        if self.scope == self.Scope.MODEL:
            return model_name == self.scope_value
        if self.scope == self.Scope.USER:
            return user_id == self.scope_value
        if self.scope == self.Scope.API_KEY:
            return api_key_name == self.scope_value
        if self.scope == self.Scope.TAG:
            key, value = self.tag
            return tags.get(key) == value
        return True


class BudgetWarning(models.Model):
    """A warning percentage a budget reached in one period. Its row is its claim: check_alerts
    inserts it before sending, and the unique constraint lets only one of two overlapping runs
    do so, so each percentage is sent once per period."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="warnings")
    period_start = models.DateTimeField()
    percent = models.PositiveIntegerField()
    spent_usd = models.DecimalField(max_digits=28, decimal_places=10)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # As AlertLog.notifications: {"email": {"status": "sent"|"error", ...}, "webhook": {...}}.
    notifications = models.JSONField(default=dict, blank=True)
    delivery_note = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start", "percent"], name="llm_budgetwarning_once")
        ]

    def __str__(self) -> str:
        return f"{self.budget.name} {self.percent}% ({self.period_start:%Y-%m-%d})"

    @property
    def delivery_summary(self) -> str:
        if self.delivered_at is None:
            return "sending"
        return self.delivery_note or describe_notifications(self.notifications) or NOT_SENT_NO_CHANNEL


class ModelPriceQuerySet(models.QuerySet):
    def price_table(self) -> PriceTable:
        return PriceTable(self)


# A price's model name may end in or contain `*` (any characters): `gpt-4o*` prices every
# `gpt-4o-…` snapshot. An exact name beats any pattern; among patterns the longest wins.
PRICE_WILDCARD = "*"
# Model names whose pattern match a table remembers (one lookup per distinct name, not per row).
MATCH_MEMORY_NAMES = 10_000


class PriceTable:
    """Every price, ready to answer "what did this call cost" without a query.

    Prices are kept per name, newest effective date first: a call is priced at the price in effect
    at its timestamp, so a price change never reprices older calls, even ones reported late.
    Where several providers price one name, the call's own provider's price wins.
    """

    def __init__(self, prices: Iterable[ModelPrice]) -> None:
        self.exact: dict[str, list[ModelPrice]] = {}
        patterns: dict[str, list[ModelPrice]] = {}
        for price in prices:
            home = patterns if PRICE_WILDCARD in price.model_name else self.exact
            home.setdefault(price.model_name, []).append(price)
        for rows in [*self.exact.values(), *patterns.values()]:
            rows.sort(key=lambda price: price.effective_from, reverse=True)
        # Longest pattern first (ties: by name, so the choice never depends on the row order).
        self.patterns = [
            (_pattern_regex(name), rows)
            for name, rows in sorted(patterns.items(), key=lambda item: (-len(item[0]), item[0]))
        ]
        self._matched: dict[str, list[ModelPrice] | None] = {}

    def candidates(self, model_name: str) -> list[ModelPrice] | None:
        """The prices of the name, or of the longest pattern matching it; None: no price at all."""
        rows = self.exact.get(model_name)
        if rows is not None or not self.patterns:
            return rows
        if model_name not in self._matched:
            if len(self._matched) >= MATCH_MEMORY_NAMES:
                self._matched.clear()
            self._matched[model_name] = next(
                (rows for regex, rows in self.patterns if regex.fullmatch(model_name)), None
            )
        return self._matched[model_name]

    def lookup(self, model_name: str, provider: str = "", at: datetime | None = None) -> ModelPrice | None:
        """The price in effect at `at` (default: now), the provider's own first."""
        rows = self.candidates(model_name)
        if not rows:
            return None
        at = at or timezone.now()
        newest_in_effect = None
        for price in rows:  # newest first
            if price.effective_from <= at:
                if price.provider == provider:
                    return price
                newest_in_effect = newest_in_effect or price
        return newest_in_effect

    def providers(self, model_name: str) -> list[str]:
        """Who serves a model, by the price table (none: the table does not know it)."""
        return sorted({price.provider for price in self.candidates(model_name) or []})

    def cost(self, log: LLMRequestLog) -> Decimal:
        """USD for one call at the price in effect at its timestamp; an unknown model costs 0."""
        price = self.lookup(log.model_name, log.provider, log.timestamp)
        if price is None:
            return Decimal(0)
        return price.cost(log.prompt_tokens or 0, log.completion_tokens or 0, log.cached_tokens or 0)

    def __contains__(self, model_name: object) -> bool:
        return isinstance(model_name, str) and bool(self.candidates(model_name))

    def __getitem__(self, model_name: str) -> ModelPrice:
        price = self.lookup(model_name)
        if price is None:
            raise KeyError(model_name)
        return price

    def get(self, model_name: str, default: ModelPrice | None = None) -> ModelPrice | None:
        return self.lookup(model_name) or default


def _pattern_regex(pattern: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in pattern.split(PRICE_WILDCARD)), re.DOTALL)


# The price table each process keeps, so that a write (the proxy's, one per prompt) costs no
# price query: read again after PRICE_CACHE_SECONDS, and at once in the process that saves or
# deletes a ModelPrice (signals below). Inside a transaction the table is read afresh: the
# transaction may see prices of its own that no other connection sees (and tests roll back).
PRICE_CACHE_SECONDS = 10.0
_price_cache: tuple[PriceTable, float] | None = None


def in_atomic_block() -> bool:
    """Whether this thread (on an event loop: this task) has a transaction open on the default
    database, asked without making it a connection object: Django keeps one per task on an event
    loop, so `connections["default"]` there builds a new one for every prompt the proxy routes
    (15-40 us each). No object yet means no transaction open here."""
    return any(
        connection.in_atomic_block
        for connection in connections.all(initialized_only=True)
        if connection.alias == DEFAULT_DB_ALIAS
    )


def cached_price_table() -> PriceTable:
    global _price_cache
    if in_atomic_block():
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
    class Provider(models.TextChoices):
        GROQ = "groq", "Groq"
        CEREBRAS = "cerebras", "Cerebras"
        OPENAI = "openai", "OpenAI-compatible"

    provider = models.CharField(
        max_length=16,
        choices=Provider.choices,
        default=Provider.GROQ,
        help_text="Who serves the model: the proxy sends a prompt for this model there.",
    )
    model_name = models.CharField(
        max_length=200,
        help_text="The model's name, or a pattern with * (gpt-4o* prices every gpt-4o-… snapshot). "
        "An exact name beats a pattern; the longest matching pattern wins.",
    )
    input_per_million = models.DecimalField(max_digits=12, decimal_places=6, help_text="USD")
    output_per_million = models.DecimalField(max_digits=12, decimal_places=6, help_text="USD")
    cached_input_per_million = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD for cached prompt tokens; empty: they cost the input price.",
    )
    effective_from = models.DateTimeField(
        default=EPOCH,
        validators=[validate_stored_year],
        help_text="The price applies to calls from this time on. To change a price, add a row with the "
        "date of the change: calls before it keep the old price, even when reported late.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = ModelPriceQuerySet.as_manager()

    class Meta:
        ordering = ["provider", "model_name", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model_name", "effective_from"], name="llm_modelprice_provider_model_from"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_name} ({self.provider})"

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Decimal:
        # Cached tokens are part of prompt_tokens (as OpenAI reports them), at their own rate if set.
        cached = min(cached_tokens, prompt_tokens) if self.cached_input_per_million is not None else 0
        total = (
            (prompt_tokens - cached) * self.input_per_million
            + cached * (self.cached_input_per_million or 0)
            + completion_tokens * self.output_per_million
        )
        return (total / ONE_MILLION).quantize(COST_PLACES)

    @classmethod
    def cost_for(
        cls,
        model_name: str,
        prompt_tokens: int,
        completion_tokens: int,
        prices: PriceTable | None = None,
        *,
        provider: str = "",
        at: datetime | None = None,
        cached_tokens: int = 0,
    ) -> Decimal:
        """USD for these tokens at the model's price in effect at `at`; an unknown model costs 0."""
        table = prices if prices is not None else cls.objects.price_table()
        price = table.lookup(model_name, provider, at)
        if price is None:
            return Decimal(0)
        return price.cost(prompt_tokens or 0, completion_tokens or 0, cached_tokens or 0)


class APIKeyQuerySet(models.QuerySet):
    def active(self) -> APIKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


def parse_scopes(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """Scope names, from a comma-separated text or a list, in the canonical order of
    APIKey.Scope; a name that is no scope raises ValidationError naming it."""
    names = [name.strip() for name in value.split(",")] if isinstance(value, str) else [*value]
    names = [name for name in names if name]
    unknown = sorted(set(names) - set(APIKey.Scope.values))
    if unknown:
        raise ValidationError(
            f"Unknown scope {', '.join(unknown)}: choose among {', '.join(APIKey.Scope.values)}.", code="scope"
        )
    if not names:
        raise ValidationError("Give at least one scope.", code="scope")
    return [scope for scope in APIKey.Scope.values if scope in names]


def validate_scopes(value: str) -> None:
    parse_scopes(value)


class APIKey(models.Model):
    """A secret for machine clients. Only its SHA-256 is stored; the key is shown once.

    A key may do what its scopes allow and nothing else (llm/permissions.py maps each endpoint to
    one scope); `scopes` holds their names comma-separated, in Scope's order, so that "has every
    scope" is one exact match (the admin's filter)."""

    PREFIX = "llmo_"

    class Scope(models.TextChoices):
        INGEST = "ingest", "ingest: report calls (/api/events/, /v1/traces)"
        PROMPT = "prompt", "prompt: send prompts (/api/llm/prompt/)"
        READ = "read", "read: metrics, logs without their text, alerts"
        READ_TEXT = "read_text", "read_text: what read allows, with prompt and response text, search, export, feedback"
        MANAGE = "manage", "manage: alert rules, budgets, acknowledging"

    DEFAULT_SCOPES = "ingest"
    ALL_SCOPES = ",".join(Scope.values)

    name = models.CharField(max_length=200)
    key_prefix = models.CharField(max_length=16, editable=False, help_text="First characters, to tell keys apart.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.CharField(
        max_length=100,
        default=DEFAULT_SCOPES,
        validators=[validate_scopes],
        help_text="What the key may do, comma-separated: " + ", ".join(Scope.values) + ".",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="After this moment the key answers 401 (empty: never expires)."
    )
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
    def generate(
        cls, name: str, scopes: str | list[str] = DEFAULT_SCOPES, expires_at: datetime | None = None
    ) -> tuple[APIKey, str]:
        """Create a key with these scopes (ValidationError for an unknown one); answers (row, raw
        key). The raw key cannot be recovered later."""
        scope_text = ",".join(parse_scopes(scopes))
        raw_key = cls.PREFIX + secrets.token_urlsafe(32)
        api_key = cls.objects.create(
            name=name,
            key_prefix=raw_key[:12],
            key_hash=cls.hash_key(raw_key),
            scopes=scope_text,
            expires_at=expires_at,
        )
        return api_key, raw_key

    @property
    def scope_list(self) -> list[str]:
        return [scope for scope in self.scopes.split(",") if scope]

    def has_scope(self, scope: str) -> bool:
        return scope in self.scope_list

    @property
    def has_all_scopes(self) -> bool:
        return self.scopes == self.ALL_SCOPES

    def has_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    @classmethod
    def authenticate(cls, raw_key: str) -> APIKey | None:
        """The unrevoked key, expired or not (the caller tells an expired key apart: 401 saying so)."""
        api_key = cls.objects.active().filter(key_hash=cls.hash_key(raw_key)).first()
        if api_key is not None and not api_key.has_expired():
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
    # The provider of the model's calls (the greatest name among the rows last added): kept here,
    # not read from the logs, so `llm_model_info` stays the same when purge_logs deletes them.
    provider = models.CharField(max_length=64, blank=True, default="")
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
    # The roll-ups only: the breakdowns (`by`: "source", "tag:<key>") the breakdown roll-ups hold
    # in full, each with the first local day they cover (null: every day). A `by` added to
    # ROLLUP_TAG_KEYS later joins when rebuild_rollups has summed the calls before it.
    breakdowns = models.JSONField(default=dict, blank=True)
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
    # The provider speed figures of the analytics page's model table (llm.metrics.model_speeds):
    # how many calls have each and their sum, so a mean over any window adds rows, not calls.
    speed_count = models.BigIntegerField(default=0, help_text="Calls with output_tokens_per_second.")
    speed_sum = models.FloatField(default=0, help_text="Sum of their output_tokens_per_second.")
    queue_count = models.BigIntegerField(default=0, help_text="Calls with queue_time_ms.")
    queue_sum_ms = models.FloatField(default=0, help_text="Sum of their queue_time_ms.")

    class Meta:
        abstract = True


# The failures per error type of a window (the overview's errors; llm.metrics.read_shared): an
# index-only scan of the failed rows' (period, error type, requests) rather than a heap scan of the
# wide rows (90 days at 10 million calls: ~12 ms -> ~1 ms). Partial: only failures are indexed.
FAILURES_INCLUDE = ["error_type", "requests", "model_name"]


class HourlyRollup(RollupFigures):
    hour = models.DateTimeField(help_text="Start of the UTC hour.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hour", "model_name", "status", "error_type"], name="llm_hourlyrollup_key")
        ]
        indexes = [
            models.Index(
                fields=["hour"],
                include=FAILURES_INCLUDE,
                condition=models.Q(status="error"),
                name="llm_hourlyrollup_failures",
            )
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.model_name} {self.status}: {self.requests}"


class PeriodModelFigures(models.Model):
    """What an hour's or a day's calls of one model add up to, every status and error type merged:
    the sums of RollupFigures, the failures among them and the latency histogram. A page's figures
    of a window (the totals, a series, per model) read one row per period and model rather than
    one per status and error type (7 days of hours at 10 million calls: ~1,160 rows instead of
    ~5,900; 90 days: 637 instead of 4,437). Kept with HourlyRollup and DailyRollup (llm/rollups.py)."""

    model_name = models.CharField(max_length=200)
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0, help_text="Calls with status error.")
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost_units = models.BigIntegerField(default=0)  # USD 10^-10, as RollupFigures.cost_units
    latency_sum_ms = models.FloatField(default=0)
    ttft_count = models.BigIntegerField(default=0)
    ttft_sum_ms = models.FloatField(default=0)
    speed_count = models.BigIntegerField(default=0)
    speed_sum = models.FloatField(default=0)
    queue_count = models.BigIntegerField(default=0)
    queue_sum_ms = models.FloatField(default=0)
    latency_histogram = models.BinaryField(default=b"")

    class Meta:
        abstract = True


class HourlyLatency(PeriodModelFigures):
    hour = models.DateTimeField(help_text="Start of the UTC hour.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hour", "model_name"], name="llm_hourlylatency_key")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.model_name}"


class DailyRollup(RollupFigures):
    day = models.DateField(help_text="The date in TIME_ZONE (MetricWatermark 'rollups'.time_zone).")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "model_name", "status", "error_type"], name="llm_dailyrollup_key")
        ]
        indexes = [
            models.Index(
                fields=["day"],
                include=FAILURES_INCLUDE,
                condition=models.Q(status="error"),
                name="llm_dailyrollup_failures",
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.model_name} {self.status}: {self.requests}"


class DailyLatency(PeriodModelFigures):
    day = models.DateField(help_text="The date in TIME_ZONE (MetricWatermark 'rollups'.time_zone).")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "model_name"], name="llm_dailylatency_key")]

    def __str__(self) -> str:
        return f"{self.day} {self.model_name}"


class BreakdownRollupFigures(RollupFigures):
    """RollupFigures of the calls of one breakdown group: `by` is "source" or "tag:<key>" (a key of
    ROLLUP_TAG_KEYS), `key` the group (the source, or the tag's value, "" for calls without it), as
    llm.metrics.breakdown names them. A breakdown by source or by such a tag, and the figures under
    one `source=` or `tag=key:value` filter, read these instead of the calls."""

    by = models.CharField(max_length=110)
    key = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        abstract = True


class HourlyBreakdownRollup(BreakdownRollupFigures):
    hour = models.DateTimeField(help_text="Start of the UTC hour.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["by", "key", "hour", "model_name", "status", "error_type"], name="llm_hourlybreakdown_key"
            )
        ]
        # A window's hours of one `by` (the breakdown) or one group (a filter): the unique index,
        # led by `by` and `key`; this one answers a breakdown's hours without a filter on `key`.
        indexes = [models.Index(fields=["by", "hour"], name="llm_hourlybreakdown_by_hour")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.by}={self.key} {self.model_name} {self.status}: {self.requests}"


class DailyBreakdownRollup(BreakdownRollupFigures):
    day = models.DateField(help_text="The date in TIME_ZONE (MetricWatermark 'rollups'.time_zone).")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["by", "key", "day", "model_name", "status", "error_type"], name="llm_dailybreakdown_key"
            )
        ]
        indexes = [models.Index(fields=["by", "day"], name="llm_dailybreakdown_by_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.by}={self.key} {self.model_name} {self.status}: {self.requests}"


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
        # One model's unique users over many days (llm.metrics.unique_users_from_rollups): walk its
        # users one index probe each, then one probe per user for a day of the window, rather than
        # read a row per user and day (90 days: ~50,000 rows for 500 users).
        indexes = [models.Index(fields=["model_name", "user_id", "day", "status"], name="llm_dailyuser_model_user")]

    def __str__(self) -> str:
        return f"{self.day} {self.user_id} {self.model_name} {self.status}: {self.requests}"


class WeeklyUserRollup(models.Model):
    """One user's calls of a local week (Monday to Sunday in TIME_ZONE) and model, statuses
    together; `model_name` "" holds all models. The sums of DailyUserRollup's rows of the week,
    kept with them (llm/rollups.py): the top users over many days read a row per user and whole
    week, and daily rows only for the days around the weeks (90 days of one model at 10,000,000
    calls: ~80,000 daily rows, ~17,000 this way)."""

    ALL_MODELS = ""

    week = models.DateField(help_text="The Monday the week starts on.")
    model_name = models.CharField(max_length=200, blank=True)
    user_id = models.CharField(max_length=200)
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost_units = models.BigIntegerField(default=0)  # USD 10^-10, as RollupFigures.cost_units

    class Meta:
        # Led by the model: a window's weeks of one model (or of all) are one index range.
        constraints = [
            models.UniqueConstraint(fields=["model_name", "week", "user_id"], name="llm_weeklyuserrollup_key")
        ]

    def __str__(self) -> str:
        return f"{self.week} {self.user_id} {self.model_name or 'all models'}: {self.requests}"


class UserTotals(models.Model):
    """One user's calls of a period, all models and statuses together."""

    user_id = models.CharField(max_length=200)
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost_units = models.BigIntegerField(default=0)  # USD 10^-10, as RollupFigures.cost_units
    # For the users list and the breakdown by user (llm.metrics.users, breakdown): exact sums, the
    # period's first and last call, and the latency histogram (llm/rollup_math.py's stored form).
    # (Database defaults: rows written by SQL that predates them, like migration 0011's, stay valid.)
    prompt_tokens = models.BigIntegerField(default=0, db_default=0)
    completion_tokens = models.BigIntegerField(default=0, db_default=0)
    latency_sum_ms = models.FloatField(default=0, db_default=0)
    first_call = models.DateTimeField(null=True)
    last_call = models.DateTimeField(null=True)
    latency_histogram = models.BinaryField(default=b"", db_default=b"")

    class Meta:
        abstract = True


class DailyUserTotals(UserTotals):
    """One user's calls of a day (TIME_ZONE), all models and statuses together: DailyUserRollup
    summed over model and status, so unique and top users over 90 days read one row per user and
    day (~45,000 for 500 users) instead of one per user, day, model and status."""

    day = models.DateField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "user_id"], name="llm_dailyusertotals_key")]
        # Unique users over many days: one probe per user (llm.metrics.unique_users_from_rollups).
        indexes = [models.Index(fields=["user_id", "day"], name="llm_dailyusertotals_user_day")]
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


class SessionFigures(models.Model):
    """What some calls of one session add up to (the session list's columns)."""

    first_call = models.DateTimeField()
    last_call = models.DateTimeField()
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=20, decimal_places=10, null=True)  # as Sum(cost_estimate)
    user_count = models.IntegerField(default=0)
    shown_user = models.CharField(max_length=200, blank=True, default="")
    model_count = models.IntegerField(default=0)
    shown_model = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        abstract = True


class SessionTotals(SessionFigures):
    """One session's calls, all of them (not a window's) up to the roll-up watermark: what the
    sessions list shows, kept by llm/rollups.py (each roll-up adds its new calls; distinct users
    from SessionUser, distinct models grown by the pairs no older call has, so they stay exact).
    A window that holds all of a session's calls reads this row; a session cut by the window's
    edges, or with calls above the roll-up watermark, is read raw."""

    session_id = models.CharField(max_length=200, unique=True)

    class Meta:
        indexes = [
            models.Index(fields=["last_call", "first_call"], name="llm_sessiontotals_last"),
            models.Index(fields=["first_call"], name="llm_sessiontotals_first"),
        ]
        verbose_name_plural = "session totals"

    def __str__(self) -> str:
        return f"{self.session_id}: {self.requests}"


class SessionGroupTotals(SessionFigures):
    """One session's calls of one breakdown group (`by` "source" or "tag:<key>" of ROLLUP_TAG_KEYS,
    `key` the source or the tag's value), as SessionTotals sums them all: the sessions list under
    one `source=` or `tag=key:value` filter reads these (kept and read like SessionTotals)."""

    session_id = models.CharField(max_length=200)
    by = models.CharField(max_length=110)
    key = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["by", "key", "session_id"], name="llm_sessiongrouptotals_key")]
        indexes = [
            # The list of one group over a window, latest first (as llm_sessiontotals_last).
            models.Index(fields=["by", "key", "last_call", "first_call"], name="llm_sessiongroup_last"),
            # refresh_sessions deletes a session's rows.
            models.Index(fields=["session_id"], name="llm_sessiongroup_session"),
        ]
        verbose_name_plural = "session group totals"

    def __str__(self) -> str:
        return f"{self.session_id} {self.by}={self.key}: {self.requests}"


class SessionUser(models.Model):
    """A user of a session, with the session's first and last call: the users list's distinct
    sessions per user over the sessions a window holds whole (the others are counted raw)."""

    session_id = models.CharField(max_length=200)
    user_id = models.CharField(max_length=200)
    first_call = models.DateTimeField()
    last_call = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["session_id", "user_id"], name="llm_sessionuser_key")]
        indexes = [models.Index(fields=["first_call", "last_call"], name="llm_sessionuser_span")]

    def __str__(self) -> str:
        return f"{self.session_id} {self.user_id}"


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
