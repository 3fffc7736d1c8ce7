"""Alert rules (CRUD, test notification, check now) and triggered alerts (list, acknowledge).

Rules are validated by the model's own validators (the same ones the admin form uses), so a
bad value gets the same message in both places; the 400 body names the field.
"""

from __future__ import annotations

import django_filters
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llm import alerts, notifiers
from llm.api.params import DeclaredParameters
from llm.models import AlertLog, AlertRule, APIKey, split_email_list, webhook_url_validator

STATE_FIELDS = ["is_firing", "last_value", "last_checked_at", "last_notified_at"]


class AlertRuleSerializer(serializers.ModelSerializer):
    class Meta:
        model = AlertRule
        fields = [
            "id",
            "name",
            "description",
            "metric_type",
            "threshold",
            "time_window_minutes",
            "model_name",
            "cooldown_minutes",
            "is_active",
            "notify_email",
            "email_recipients",
            "webhook_url",
            *STATE_FIELDS,
            "created_at",
            "updated_at",
        ]
        read_only_fields = [*STATE_FIELDS, "created_at", "updated_at"]
        # DRF drops a model URLField's URLValidator (keeping its own, which also allows ftp): put ours back.
        extra_kwargs = {"webhook_url": {"validators": [webhook_url_validator]}}

    def validate_email_recipients(self, value: str) -> str:
        # Stored in one canonical form whatever separators the caller used.
        return ", ".join(split_email_list(value))

    def validate(self, attrs: dict) -> dict:
        metric_type = attrs.get("metric_type", getattr(self.instance, "metric_type", None))
        threshold = attrs.get("threshold", getattr(self.instance, "threshold", None))
        if metric_type == AlertRule.MetricType.ERROR_RATE and threshold is not None and threshold > 100:
            raise serializers.ValidationError({"threshold": ["An error rate is a percentage: at most 100."]})
        return attrs


class AlertLogSerializer(serializers.ModelSerializer):
    rule_name = serializers.CharField(source="alert_rule.name", read_only=True)
    metric_type = serializers.CharField(source="alert_rule.metric_type", read_only=True)
    acknowledged_by = serializers.SerializerMethodField()

    class Meta:
        model = AlertLog
        fields = [
            "id",
            "alert_rule",
            "rule_name",
            "metric_type",
            "kind",
            "triggered_at",
            "message",
            "metric_value",
            "threshold",
            "window_start",
            "window_end",
            "acknowledged",
            "acknowledged_at",
            "acknowledged_by",
            "delivered_at",
            "notifications",
            "delivery_note",
        ]
        read_only_fields = fields

    def get_acknowledged_by(self, alert: AlertLog) -> str | None:
        if not alert.acknowledged:
            return None
        return alert.acknowledged_by_name or (alert.acknowledged_by.get_username() if alert.acknowledged_by else None)


class AlertRuleList(DeclaredParameters, generics.ListCreateAPIView):
    """All rules with their current state (there are few: not paginated)."""

    queryset = AlertRule.objects.order_by("id")
    serializer_class = AlertRuleSerializer


class AlertRuleDetail(DeclaredParameters, generics.RetrieveUpdateDestroyAPIView):
    queryset = AlertRule.objects.all()
    serializer_class = AlertRuleSerializer


# Test notices are never stored: filtering on them would always answer nothing.
STORED_KINDS = [(kind, label) for kind, label in AlertLog.Kind.choices if kind != AlertLog.Kind.TEST]


class AlertLogFilter(django_filters.FilterSet):
    rule = django_filters.NumberFilter(field_name="alert_rule_id")
    acknowledged = django_filters.BooleanFilter()
    kind = django_filters.ChoiceFilter(choices=STORED_KINDS)
    since = django_filters.IsoDateTimeFilter(field_name="triggered_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="triggered_at", lookup_expr="lt")

    class Meta:
        model = AlertLog
        fields = ["rule", "acknowledged", "kind", "since", "until"]


class AlertLogPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class AlertLogList(DeclaredParameters, generics.ListAPIView):
    """Triggered alerts, newest first; filters: rule, acknowledged, kind, since, until."""

    queryset = AlertLog.objects.select_related("alert_rule", "acknowledged_by").order_by("-triggered_at", "-id")
    serializer_class = AlertLogSerializer
    filter_backends = [DjangoFilterBackend]
    filterset_class = AlertLogFilter
    pagination_class = AlertLogPagination


class AlertLogAcknowledge(APIView):
    """Acknowledge a triggered alert: records who and when. Acknowledging twice keeps the first."""

    @extend_schema(request=None, responses={200: AlertLogSerializer})
    def post(self, request: Request, pk: int) -> Response:
        alert = get_object_or_404(AlertLog.objects.select_related("alert_rule"), pk=pk)
        by_name = f"API key {request.auth.name}" if isinstance(request.auth, APIKey) else ""
        alert.acknowledge(request.user, by_name)
        return Response(AlertLogSerializer(alert).data)


class TestNotificationSerializer(serializers.Serializer):
    rule_id = serializers.IntegerField()
    sent = serializers.BooleanField(help_text="True when every channel took the notice.")
    summary = serializers.CharField(help_text='For people: "email sent, webhook error (HTTP 500: …)".')
    notifications = serializers.DictField(child=serializers.DictField(), help_text="Per channel: sent, or the error.")


class DeliverySerializer(serializers.Serializer):
    alert_id = serializers.IntegerField(source="pk")
    kind = serializers.CharField()
    delivery = serializers.CharField(source="delivery_summary")
    notifications = serializers.DictField(child=serializers.DictField())


class CheckResultSerializer(serializers.Serializer):
    rule_id = serializers.IntegerField(source="evaluation.rule.pk")
    state = serializers.ChoiceField(choices=["firing", "ok", "no verdict"], source="evaluation.state")
    value = serializers.FloatField(source="evaluation.value", allow_null=True)
    threshold = serializers.FloatField(source="evaluation.rule.threshold")
    requests = serializers.IntegerField(source="evaluation.requests")
    window_start = serializers.DateTimeField(source="evaluation.window_start")
    window_end = serializers.DateTimeField(source="evaluation.window_end")
    note = serializers.CharField(source="evaluation.note")
    summary = serializers.CharField(help_text="The line check_alerts prints for the rule.")
    notice = serializers.CharField(allow_null=True, help_text="fired, resolved, or null: nothing to notify.")
    alert_id = serializers.IntegerField(source="alert.pk", allow_null=True, default=None)
    deliveries = DeliverySerializer(many=True, help_text="Notices of the rule sent by this check.")


class AlertRuleTest(APIView):
    """Send a test notification through the rule's channels now and answer what happened to each.

    The notice says it is a test; nothing is stored (no triggered alert, no state, no cooldown).
    400 when the rule has no channel.
    """

    @extend_schema(request=None, responses={200: TestNotificationSerializer})
    def post(self, request: Request, pk: int) -> Response:
        rule = get_object_or_404(AlertRule, pk=pk)
        base = notifiers.base_url(notifiers.request_origin(request))
        try:
            result = alerts.send_test_notification(rule, timezone.now(), base)
        except alerts.NoChannel as exc:
            raise serializers.ValidationError({"channels": [f"Rule “{rule.name}” (#{rule.pk}): {exc}."]}) from None
        answer = {
            "rule_id": rule.pk,
            "sent": result.all_sent,
            "summary": result.summary,
            "notifications": result.notifications,
        }
        return Response(TestNotificationSerializer(answer).data)


class AlertRuleCheck(APIView):
    """Evaluate one active rule now, exactly as `check_alerts --rule ID`: record its state and
    send its notice if one is due (the cooldown applies)."""

    @extend_schema(request=None, responses={200: CheckResultSerializer})
    def post(self, request: Request, pk: int) -> Response:
        rule = get_object_or_404(AlertRule, pk=pk)
        if not rule.is_active:
            raise serializers.ValidationError({"is_active": [f"Rule #{rule.pk} is inactive: activate it to check it."]})
        base = notifiers.base_url(notifiers.request_origin(request))
        # Sent in this request since the caller asked for the check; notifier timeouts and tries bound it.
        run = alerts.check_rules([rule], timezone.now(), base=base)
        if run.failures:
            raise serializers.ValidationError({"rule": [f"Could not evaluate: {run.failures[0][1]}"]})
        outcome = run.outcomes[0]
        answer = {
            "evaluation": outcome.evaluation,
            "summary": outcome.summary(),
            "notice": outcome.notice,
            "alert": outcome.alert,
            "deliveries": run.deliveries,
        }
        return Response(CheckResultSerializer(answer).data)
