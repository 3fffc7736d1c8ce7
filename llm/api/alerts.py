"""Alert rules (CRUD, test notification, check now) and triggered alerts (list, acknowledge).

Rules are validated by the model's own validators (the same ones the admin form uses), so a
bad value gets the same message in both places; the 400 body names the field.
"""

from __future__ import annotations

import copy

import django_filters
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llm import alert_preview, alerts, notifiers
from llm.api.params import DeclaredParameters
from llm.filters import DateBoundFilter, IdFilter
from llm.models import AlertLog, AlertRule, APIKey
from llm.serializers import (
    AlertLogSerializer,
    AlertPreviewAnswerSerializer,
    AlertPreviewSerializer,
    AlertRuleSerializer,
    AlertSilenceSerializer,
    CheckResultSerializer,
    SilenceRequestSerializer,
    TestNotificationSerializer,
    UnsilenceSerializer,
)


class AlertRuleList(DeclaredParameters, generics.ListCreateAPIView):
    """All rules with their current state, channels and silence (there are few: not paginated)."""

    required_right = {"GET": "read", "POST": "manage"}
    queryset = AlertRule.objects.order_by("id")
    serializer_class = AlertRuleSerializer
    pagination_class = None

    def get_queryset(self):
        return super().get_queryset().with_channels_and_silences()


class AlertRuleDetail(DeclaredParameters, generics.RetrieveUpdateDestroyAPIView):
    required_right = {"GET": "read", "PUT": "manage", "PATCH": "manage", "DELETE": "manage"}
    queryset = AlertRule.objects.all()
    serializer_class = AlertRuleSerializer


class AlertRuleSilence(APIView):
    """Mute a rule (POST: `until` or `minutes`, and `reason`) or unmute it (DELETE).

    A muted rule is still evaluated and its state recorded and shown; its notices are settled as
    "muted" instead of being sent. Who muted it is the user, or "API key <name>"."""

    required_right = {"POST": "manage", "DELETE": "manage"}

    @extend_schema(request=SilenceRequestSerializer, responses={201: AlertSilenceSerializer})
    def post(self, request: Request, pk: int) -> Response:
        rule = get_object_or_404(AlertRule, pk=pk)
        data = SilenceRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        silence = rule.silence(
            data.validated_data["until"], data.validated_data["reason"], request.user, caller_name(request)
        )
        return Response(AlertSilenceSerializer(silence).data, status=201)

    @extend_schema(request=None, responses={200: UnsilenceSerializer})
    def delete(self, request: Request, pk: int) -> Response:
        rule = get_object_or_404(AlertRule, pk=pk)
        ended = rule.unsilence(request.user, caller_name(request))
        return Response(UnsilenceSerializer({"rule_id": rule.pk, "unmuted": ended}).data)


def caller_name(request: Request) -> str:
    """ "API key <name>" for a machine client; blank for a user (the model takes the user's name)."""
    return f"API key {request.auth.name}" if isinstance(request.auth, APIKey) else ""


# Test notices are never stored: filtering on them would always answer nothing.
STORED_KINDS = [(kind, label) for kind, label in AlertLog.Kind.choices if kind != AlertLog.Kind.TEST]


class AlertLogFilter(django_filters.FilterSet):
    rule = IdFilter(field_name="alert_rule_id")
    acknowledged = django_filters.BooleanFilter()
    kind = django_filters.ChoiceFilter(choices=STORED_KINDS)
    # ISO 8601, between the years every page and database can show (llm.filters.DateBoundFilter).
    since = DateBoundFilter(field_name="triggered_at", lookup_expr="gte")
    until = DateBoundFilter(field_name="triggered_at", lookup_expr="lt")

    class Meta:
        model = AlertLog
        fields = ["rule", "acknowledged", "kind", "since", "until"]


class AlertLogList(DeclaredParameters, generics.ListAPIView):
    """Triggered alerts, newest first; filters: rule, acknowledged, kind, since, until."""

    required_right = "read"
    queryset = AlertLog.objects.select_related("alert_rule", "acknowledged_by").order_by("-triggered_at", "-id")
    serializer_class = AlertLogSerializer
    filter_backends = [DjangoFilterBackend]
    filterset_class = AlertLogFilter


class AlertLogAcknowledge(APIView):
    """Acknowledge a triggered alert: records who and when. Acknowledging twice keeps the first."""

    required_right = "manage"

    @extend_schema(request=None, responses={200: AlertLogSerializer})
    def post(self, request: Request, pk: int) -> Response:
        alert = get_object_or_404(AlertLog.objects.select_related("alert_rule"), pk=pk)
        alert.acknowledge(request.user, caller_name(request))
        return Response(AlertLogSerializer(alert).data)


class AlertRuleTest(APIView):
    """Send a test notification through the rule's channels now and answer what happened to each.

    The notice says it is a test; nothing is stored (no triggered alert, no state, no cooldown).
    400 when the rule has no channel.
    """

    required_right = "manage"

    @extend_schema(
        request=None,
        responses={200: TestNotificationSerializer, 400: OpenApiResponse(description="The rule has no channel.")},
    )
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

    required_right = "manage"

    @extend_schema(
        request=None,
        responses={
            200: CheckResultSerializer,
            400: OpenApiResponse(description="The rule is inactive, or could not be evaluated."),
        },
    )
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


class AlertRulePreview(APIView):
    """Replay a rule (saved or not) over the last `days` days as check_alerts would have run it
    every `step_minutes`: the metric's series, each fire and resolve, and how many notices the
    cooldown lets through. Writes nothing. With `rule_id`, the fields not given are the saved rule's.
    """

    required_right = "read"

    @extend_schema(request=AlertPreviewSerializer, responses={200: AlertPreviewAnswerSerializer})
    def post(self, request: Request) -> Response:
        rule = AlertRule()
        rule_id = request.data.get("rule_id") if isinstance(request.data, dict) else None
        if rule_id is not None:
            checked = AlertPreviewSerializer(data={"rule_id": rule_id}, partial=True)
            checked.is_valid(raise_exception=True)
            saved = AlertRule.objects.filter(pk=checked.validated_data["rule_id"]).first()
            if saved is None:
                raise serializers.ValidationError({"rule_id": [f"No alert rule with id {rule_id}."]})
            rule = copy.copy(saved)
        serializer = AlertPreviewSerializer(rule if rule.pk else None, data=request.data, partial=bool(rule.pk))
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        days, step_minutes = fields.pop("days"), fields.pop("step_minutes")
        fields.pop("rule_id", None)
        for name, value in fields.items():
            setattr(rule, name, value)
        result = alert_preview.replay(rule, timezone.now(), days, step_minutes)
        # The answer is plain JSON already (AlertPreviewAnswerSerializer documents it): passing
        # 8,640 points through serializer fields would take longer than the replay.
        return Response(alert_preview.answer(result, days, step_minutes))
