from __future__ import annotations

from auditlog.admin import LogEntryAdmin
from auditlog.models import LogEntry
from axes.admin import AccessAttemptAdmin, AccessFailureLogAdmin, AccessLogAdmin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.db import models
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from llm import alerts, audit, formatting, notifiers
from llm.ingest_limits import text_problem
from llm.models import (
    ALERT_COOLDOWN_MINUTES_MAX,
    ALERT_WINDOW_MINUTES_MAX,
    RULE_DEFINITION_FIELDS,
    AlertLog,
    AlertRule,
    AlertSilence,
    APIKey,
    Budget,
    BudgetWarning,
    DashboardSettings,
    LLMRequestLog,
    ModelPrice,
    NotificationChannel,
    TraceSpan,
    UserFeedback,
)


class ModelAdmin(admin.ModelAdmin):
    """Every admin list: a query-string lookup the database cannot run (a NUL character, which
    PostgreSQL refuses; a year such as 0 that Python cannot represent) sends the list back to its
    unfiltered form with Django's "?e=1" notice, as any other wrong lookup does, instead of a 500."""

    def get_changelist_instance(self, request):
        if any(text_problem(value) for values in request.GET.lists() for value in values[1]):
            raise IncorrectLookupParameters("Text the database cannot hold in the query string.")
        try:
            return super().get_changelist_instance(request)
        except (ValueError, OverflowError) as error:
            raise IncorrectLookupParameters(error) from error


class ReadOnlyAdmin(ModelAdmin):
    """Logged calls are evidence: they can be read and deleted, not edited."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class UserFeedbackInline(admin.TabularInline):
    model = UserFeedback
    extra = 0
    fields = ["rating", "rater", "comment", "created_at"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(LLMRequestLog)
class LLMRequestLogAdmin(ReadOnlyAdmin):
    list_display = [
        "timestamp",
        "model_name",
        "status",
        "error_type",
        "user_id",
        "total_tokens",
        "latency_ms",
        "cost_estimate",
        "source",
    ]
    list_filter = ["status", "source", "error_type", "model_name", "provider"]
    search_fields = ["=request_id", "user_id", "session_id", "=trace_id", "prompt_text", "response_text"]
    date_hierarchy = "timestamp"
    list_select_related = True
    show_full_result_count = False  # COUNT(*) over millions of rows on every page is slow
    inlines = [UserFeedbackInline]
    TEXT_FIELDS = ("prompt_text", "response_text")

    # Prompt and response text only for a user with the permission (the Analyst role and up):
    # neither shown on a row's page nor searchable (which calls match a word tells what they hold).
    def can_see_text(self, request) -> bool:
        return request.user.has_perm("llm.view_prompt_text")

    def get_search_fields(self, request) -> list[str]:
        fields = super().get_search_fields(request)
        return fields if self.can_see_text(request) else [name for name in fields if name not in self.TEXT_FIELDS]

    def get_exclude(self, request, obj=None):
        excluded = super().get_exclude(request, obj) or ()
        return excluded if self.can_see_text(request) else [*excluded, *self.TEXT_FIELDS]

    def get_fields(self, request, obj=None) -> list[str]:
        fields = super().get_fields(request, obj)
        return fields if self.can_see_text(request) else [name for name in fields if name not in self.TEXT_FIELDS]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        return queryset if self.can_see_text(request) else queryset.defer(*self.TEXT_FIELDS)


@admin.register(TraceSpan)
class TraceSpanAdmin(ReadOnlyAdmin):
    """Spans kept as a trace's context (from /v1/traces; text-bearing attributes were never kept).
    The trace page draws them as a waterfall: each row links there."""

    list_display = ["start", "name", "service", "kind", "status", "duration_ms", "trace_page"]
    list_filter = ["kind", "status"]
    search_fields = ["=trace_id", "=span_id", "name", "service"]
    ordering = ["-start"]
    show_full_result_count = False  # as the calls: no COUNT(*) over every span on each page

    @admin.display(description="duration")
    def duration_ms(self, span: TraceSpan) -> str:
        return formatting.milliseconds((span.end - span.start).total_seconds() * 1000)

    @admin.display(description="trace")
    def trace_page(self, span: TraceSpan) -> str:
        return format_html('<a href="{}">{}</a>', reverse("trace", args=[span.trace_id]), span.trace_id)


@admin.register(UserFeedback)
class UserFeedbackAdmin(ModelAdmin):
    list_display = ["created_at", "rating", "rater", "request", "comment"]
    list_filter = ["rating"]
    search_fields = ["comment", "=rater", "=request__request_id"]
    raw_id_fields = ["request"]
    date_hierarchy = "created_at"
    list_select_related = ["request"]


@admin.register(AlertRule)
class AlertRuleAdmin(ModelAdmin):
    # Few, compact columns: the list must fit a 1366 px wide screen next to the filter sidebar.
    list_display = ["name", "condition", "notify_to", "is_active", "state", "checked"]
    list_filter = ["metric_type", "is_active", "is_firing"]
    search_fields = ["name", "description", "model_name"]
    # A webhook typed without a scheme is meant as https (Django 6's default; silences its warning).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    readonly_fields = [
        "is_firing",
        "level",
        "last_value",
        "last_checked_at",
        "last_notified_at",
        "created_at",
        "updated_at",
    ]
    fieldsets = [
        (None, {"fields": ["name", "description", "is_active", "rule_form"]}),
        (
            "Condition",
            {
                "fields": RULE_DEFINITION_FIELDS,
                "description": "error_rate (%), latency_p95/p99 and ttft_p95 (ms), token_spike (ratio), cost "
                "(USD) fire above the threshold; no_traffic and feedback (satisfaction %) fire below it. "
                f"Window 1 to {ALERT_WINDOW_MINUTES_MAX} minutes; cooldown 0 to {ALERT_COOLDOWN_MINUTES_MAX}.",
            },
        ),
        ("Notify", {"fields": ["notify_email", "email_recipients", "webhook_url", "channels"]}),
        ("State (written by check_alerts)", {"fields": readonly_fields}),
    ]
    filter_horizontal = ["channels"]

    def get_readonly_fields(self, request: HttpRequest, obj: AlertRule | None = None) -> list[str]:
        return [*self.readonly_fields, "rule_form"]

    @admin.display(description="preview")
    def rule_form(self, rule: AlertRule) -> str:
        """A link to the dashboard's rule form, which replays the rule on past days."""
        if rule.pk is None:
            url, text = reverse("alert-rule-new"), "Draw a new rule with its preview on past days"
        else:
            url, text = reverse("alert-rule-edit", args=[rule.pk]), "Edit with its preview on past days"
        return format_html('<a class="rule-form-link" href="{}">{}</a>', url, text)

    actions = ["send_test_notification"]

    def get_queryset(self, request):
        # The channel column names each rule's channels: one query for all rows, not one per row.
        return super().get_queryset(request).prefetch_related("channels")

    @admin.display(description="condition")
    def condition(self, rule: AlertRule) -> str:
        comparison = "<" if rule.fires_below else ">"
        threshold = formatting.rule_value(rule.metric_type, rule.threshold)
        scope = f", {rule.model_name}" if rule.model_name else ""
        return f"{rule.metric_type} {comparison} {threshold} / {rule.time_window_minutes} min{scope}"

    @admin.display(description="channels")
    def notify_to(self, rule: AlertRule) -> str:
        return ", ".join(notifiers.channel_names(rule)) or "none"

    @admin.display(description="state", ordering="is_firing")
    def state(self, rule: AlertRule) -> str:
        if rule.last_checked_at is None:
            return "not checked"
        value = formatting.rule_value(rule.metric_type, rule.last_value)
        return f"{'firing' if rule.is_firing else 'ok'} ({value})"

    @admin.display(description="last checked", ordering="last_checked_at")
    def checked(self, rule: AlertRule) -> str:
        if rule.last_checked_at is None:
            return "-"
        return timezone.localtime(rule.last_checked_at).strftime("%Y-%m-%d %H:%M")

    @admin.action(description="Send a test notification")
    def send_test_notification(self, request, queryset) -> None:
        # Sent in this request because a user asked for it; notifier timeouts and tries bound it.
        base = notifiers.base_url(notifiers.request_origin(request))
        now = timezone.now()
        for rule in queryset.order_by("name"):
            try:
                result = alerts.send_test_notification(rule, now, base)
            except alerts.NoChannel as exc:
                self.message_user(request, f"{rule.name}: {exc}.", messages.WARNING)
                continue
            level = messages.SUCCESS if result.all_sent else messages.ERROR
            self.message_user(request, f"Test notification for {rule.name}: {result.summary}.", level)


@admin.register(NotificationChannel)
class NotificationChannelAdmin(ModelAdmin):
    list_display = ["name", "kind", "is_active", "health", "last_success_at", "last_failure_at"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name", "target"]
    readonly_fields = ["consecutive_failures", "last_error", "last_success_at", "last_failure_at", "created_at"]
    fieldsets = [
        (None, {"fields": ["name", "kind", "is_active"]}),
        (
            "Where",
            {
                "fields": ["target", "secret", "routing_key"],
                "description": "Webhook URLs may not point at loopback, private, link-local or metadata addresses "
                "unless OUTBOUND_ALLOWED_NETWORKS allows them.",
            },
        ),
        ("Delivery health (written by the notifiers)", {"fields": readonly_fields}),
    ]

    @admin.display(description="health", ordering="consecutive_failures")
    def health(self, channel: NotificationChannel) -> str:
        if channel.is_failing:
            return f"failing ({channel.consecutive_failures} in a row: {channel.last_error})"
        if channel.consecutive_failures:
            return f"{channel.consecutive_failures} recent failure(s)"
        return "ok"


@admin.register(AlertSilence)
class AlertSilenceAdmin(ModelAdmin):
    list_display = ["alert_rule", "starts_at", "ends_at", "created_by_name", "reason", "ended_at", "ended_by_name"]
    list_filter = ["alert_rule"]
    search_fields = ["reason", "alert_rule__name", "created_by_name"]
    list_select_related = ["alert_rule"]
    fields = ["alert_rule", "starts_at", "ends_at", "reason", "created_by_name", "ended_at", "ended_by_name"]
    readonly_fields = ["created_by_name", "ended_at", "ended_by_name"]
    actions = ["unmute"]

    def save_model(self, request, obj, form, change) -> None:
        if not change:
            # Who muted it is whoever saved it here, not a field to type.
            obj.created_by = request.user
            obj.created_by_name = request.user.get_username()
        super().save_model(request, obj, form, change)

    @admin.action(description="Unmute (end the selected silences now)")
    def unmute(self, request, queryset) -> None:
        count = queryset.active(timezone.now()).update(
            ended_at=timezone.now(), ended_by_name=request.user.get_username()
        )
        self.message_user(request, f"Ended {count} silence(s).", messages.SUCCESS)


@admin.register(AlertLog)
class AlertLogAdmin(ModelAdmin):
    list_display = [
        "triggered_at",
        "alert_rule",
        "kind",
        "metric_value",
        "threshold",
        "delivery",
        "acknowledged",
        "acknowledged_by_name",
    ]
    list_filter = ["kind", "acknowledged", "alert_rule"]
    search_fields = ["message", "alert_rule__name"]
    date_hierarchy = "triggered_at"
    list_select_related = ["alert_rule", "acknowledged_by"]
    # A triggered alert is history: every field is shown, none edited.
    readonly_fields = [field.name for field in AlertLog._meta.concrete_fields if not field.primary_key]
    actions = ["acknowledge"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="delivery")
    def delivery(self, alert: AlertLog) -> str:
        return alert.delivery_summary

    @admin.action(description="Acknowledge selected alerts")
    def acknowledge(self, request, queryset) -> None:
        count = queryset.acknowledge(request.user)
        self.message_user(request, f"Acknowledged {count} alert(s).", messages.SUCCESS)


@admin.register(Budget)
class BudgetAdmin(ModelAdmin):
    """Spend and forecast are on the overview and in GET /api/budgets/ (llm/budgets.py)."""

    list_display = ["name", "scope", "scope_value", "period", "amount_usd", "warn_at_percent", "hard_limit"]
    list_filter = ["scope", "period", "hard_limit"]
    search_fields = ["name", "scope_value"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    fieldsets = [
        (None, {"fields": ["name", "scope", "scope_value", "period", "amount_usd", "hard_limit"]}),
        ("Warnings (check_alerts)", {"fields": ["warn_at_percent", "email_recipients", "webhook_url", "channels"]}),
    ]
    filter_horizontal = ["channels"]


@admin.register(BudgetWarning)
class BudgetWarningAdmin(ModelAdmin):
    list_display = ["created_at", "budget", "percent", "spent_usd", "period_start", "delivery"]
    list_filter = ["budget", "percent"]
    list_select_related = ["budget"]
    # A sent warning is history: every field is shown, none edited.
    readonly_fields = [field.name for field in BudgetWarning._meta.concrete_fields if not field.primary_key]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="delivery")
    def delivery(self, warning: BudgetWarning) -> str:
        return warning.delivery_summary


@admin.register(ModelPrice)
class ModelPriceAdmin(ModelAdmin):
    """Who serves each model and at what price. A price change is a new row with its effective date,
    so calls made before it keep their price (cost is computed once, when a call is stored)."""

    list_display = [
        "model_name",
        "provider",
        "input_per_million",
        "output_per_million",
        "cached_input_per_million",
        "effective_from",
        "updated_at",
    ]
    list_filter = ["provider"]
    search_fields = ["model_name"]
    fields = [
        "provider",
        "model_name",
        "input_per_million",
        "output_per_million",
        "cached_input_per_million",
        "effective_from",
    ]


class APIKeyForm(forms.ModelForm):
    """Scopes as checkboxes (a new key gets `ingest` unless more are ticked), stored as APIKey.scopes."""

    scope_choices = forms.MultipleChoiceField(
        label="Scopes",
        choices=APIKey.Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[APIKey.DEFAULT_SCOPES],
        help_text="What the key may do; nothing else. An app that only sends events needs `ingest` alone.",
    )

    class Meta:
        model = APIKey
        fields = ["name", "expires_at"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["scope_choices"].initial = self.instance.scope_list

    def clean(self) -> dict:
        cleaned = super().clean()
        if "scope_choices" in cleaned:
            self.instance.scopes = ",".join(scope for scope in APIKey.Scope.values if scope in cleaned["scope_choices"])
        return cleaned


class ScopeBreadthFilter(admin.SimpleListFilter):
    """Keys made before scopes existed kept every scope: this finds them (and any made that broad)."""

    title = "scopes"
    parameter_name = "scopes"

    def lookups(self, request, model_admin):
        return [("all", "all scopes"), ("limited", "limited")]

    def queryset(self, request, queryset):
        if self.value() == "all":
            return queryset.filter(scopes=APIKey.ALL_SCOPES)
        if self.value() == "limited":
            return queryset.exclude(scopes=APIKey.ALL_SCOPES)
        return queryset


@admin.register(APIKey)
class APIKeyAdmin(ModelAdmin):
    form = APIKeyForm
    list_display = ["name", "key_prefix", "scope_summary", "created_at", "last_used_at", "expires_at", "revoked_at"]
    list_filter = [ScopeBreadthFilter, ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "key_prefix"]
    fields = ["name", "scope_choices", "expires_at", "key_prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["key_prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    @admin.display(description="scopes", ordering="scopes")
    def scope_summary(self, api_key: APIKey) -> str:
        return "all scopes" if api_key.has_all_scopes else ", ".join(api_key.scope_list)

    def save_model(self, request, obj, form, change) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        api_key, raw_key = APIKey.generate(obj.name, obj.scopes, expires_at=obj.expires_at)
        obj.pk = api_key.pk
        obj.key_prefix = api_key.key_prefix
        obj.key_hash = api_key.key_hash
        obj.created_at = api_key.created_at
        self.message_user(
            request,
            f"API key for “{api_key.name}”: {raw_key} — copy it now, it will not be shown again.",
            messages.WARNING,
        )

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


@admin.register(DashboardSettings)
class DashboardSettingsAdmin(ModelAdmin):
    """One row: the overview's amber and red thresholds."""

    list_display = ["__str__", "error_rate_amber", "error_rate_red", "p95_latency_amber_ms", "p95_latency_red_ms"]
    # Written by the pages themselves; alert notices link there when SITE_URL is empty.
    readonly_fields = ["served_origin"]

    def has_add_permission(self, request) -> bool:
        return not DashboardSettings.objects.exists()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# The audit log (llm/audit.py): django-auditlog's read-only list of entries, with the API key shown
# as the actor where a key, not a user, made the change, and the same guard on hostile lookups.
admin.site.unregister(LogEntry)


@admin.register(LogEntry)
class AuditEntryAdmin(ModelAdmin, LogEntryAdmin):
    @admin.display(description="Actor")
    def user_url(self, obj: LogEntry) -> str:
        if obj.actor_id is None:
            return audit.actor_label(obj)
        return super().user_url(obj)


# django-axes' lists of login attempts (llm/logins.py; deleting an attempt lifts its lockout), with
# the same guard: an address lookup that is no address would raise ValueError (a 500).
for _model, _axes_admin in [
    (AccessAttempt, AccessAttemptAdmin),
    (AccessLog, AccessLogAdmin),
    (AccessFailureLog, AccessFailureLogAdmin),
]:
    admin.site.unregister(_model)
    admin.site.register(_model, type(_axes_admin.__name__, (ModelAdmin, _axes_admin), {}))
