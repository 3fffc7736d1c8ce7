from __future__ import annotations

from auditlog.admin import LogEntryAdmin
from auditlog.models import LogEntry
from axes.admin import AccessAttemptAdmin, AccessFailureLogAdmin, AccessLogAdmin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.db import models
from django.utils import timezone

from llm import alerts, audit, formatting, notifiers
from llm.ingest_limits import text_problem
from llm.models import (
    ALERT_COOLDOWN_MINUTES_MAX,
    ALERT_WINDOW_MINUTES_MAX,
    AlertLog,
    AlertRule,
    APIKey,
    DashboardSettings,
    LLMRequestLog,
    ModelPrice,
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
    list_display = ["name", "condition", "channels", "is_active", "state", "checked"]
    list_filter = ["metric_type", "is_active", "is_firing"]
    search_fields = ["name", "description", "model_name"]
    # A webhook typed without a scheme is meant as https (Django 6's default; silences its warning).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    readonly_fields = ["is_firing", "last_value", "last_checked_at", "last_notified_at", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "description", "is_active"]}),
        (
            "Condition",
            {
                "fields": ["metric_type", "threshold", "time_window_minutes", "model_name", "cooldown_minutes"],
                "description": "error_rate (%), latency_p95 (ms), token_spike (ratio), cost (USD) fire above "
                f"the threshold; no_traffic fires below it. Window 1 to {ALERT_WINDOW_MINUTES_MAX} minutes; "
                f"cooldown 0 to {ALERT_COOLDOWN_MINUTES_MAX}.",
            },
        ),
        ("Notify", {"fields": ["notify_email", "email_recipients", "webhook_url"]}),
        ("State (written by check_alerts)", {"fields": readonly_fields}),
    ]
    actions = ["send_test_notification"]

    @admin.display(description="condition")
    def condition(self, rule: AlertRule) -> str:
        comparison = "<" if rule.metric_type == AlertRule.MetricType.NO_TRAFFIC else ">"
        threshold = formatting.rule_value(rule.metric_type, rule.threshold)
        scope = f", {rule.model_name}" if rule.model_name else ""
        return f"{rule.metric_type} {comparison} {threshold} / {rule.time_window_minutes} min{scope}"

    @admin.display(description="channels")
    def channels(self, rule: AlertRule) -> str:
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


@admin.register(ModelPrice)
class ModelPriceAdmin(ModelAdmin):
    list_display = ["model_name", "input_per_million", "output_per_million", "updated_at"]
    search_fields = ["model_name"]


@admin.register(APIKey)
class APIKeyAdmin(ModelAdmin):
    list_display = ["name", "key_prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "key_prefix"]
    fields = ["name", "key_prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["key_prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        api_key, raw_key = APIKey.generate(obj.name)
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
