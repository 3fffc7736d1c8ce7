"""Every serializer of the API in one place: what requests carry (validated here) and what each
answer holds (so the OpenAPI document describes every field).

API view modules (llm/api/*) and the events receiver (llm/events.py) import from here; this
module imports models, the ingest limits and llm/metrics.py's names only.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from llm import forecast as spend_forecast
from llm import metrics
from llm.ingest_limits import (
    EARLIEST_TIMESTAMP,
    EARLIEST_TIMESTAMP_TEXT,
    ERROR_MESSAGE_MAX_CHARS,
    FINISH_REASON_MAX_CHARS,
    FUTURE_TOLERANCE,
    FUTURE_TOLERANCE_TEXT,
    HEX_SPAN_ID,
    HEX_TRACE_ID,
    MAX_COST_USD,
    MAX_COUNT,
    MAX_LATENCY_MS,
    MAX_ROW_ID,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    MODEL_MAX_CHARS,
    PROVIDER_MAX_CHARS,
    SESSION_ID_MAX_CHARS,
    TAG_KEY_MAX_CHARS,
    TAG_VALUE_MAX_CHARS,
    TAGS_MAX_COUNT,
    USER_ID_MAX_CHARS,
    JSONError,
    finite_problem,
    parse_json,
    text_problem,
)
from llm.models import (
    BUDGET_AMOUNT_DIGITS,
    BUDGET_AMOUNT_PLACES,
    BUDGET_MAX_WARNINGS,
    BUDGET_MIN_AMOUNT,
    BUDGET_PERCENT_MAX,
    BUDGET_PERCENT_MIN,
    RULE_DEFINITION_FIELDS,
    AlertLog,
    AlertRule,
    AlertSilence,
    Budget,
    LLMRequestLog,
    ModelPrice,
    NotificationChannel,
    TraceSpan,
    UserFeedback,
    split_email_list,
    webhook_url_validator,
)
from llm.outbound import validate_outbound_url
from llm.providers import UnknownModel, route
from llm.traces import TRACE_CALL_FIELDS, TRACE_SPAN_FIELDS

# Long enough for a large context window, short enough that one request cannot fill the disk.
PROMPT_MAX_CHARS = 100_000
MAX_TOKENS_LIMIT = 32_768
COMMENT_MAX_CHARS = 5_000
RATER_MAX_CHARS = 200


def validate_tags(value: object) -> dict[str, str]:
    """Tags are a flat JSON object of strings, small enough to index and display, that both
    databases can store (no NUL character, no lone surrogate)."""
    if not isinstance(value, dict):
        raise serializers.ValidationError("Must be a JSON object of strings.")
    if len(value) > TAGS_MAX_COUNT:
        raise serializers.ValidationError(f"At most {TAGS_MAX_COUNT} tags.")
    for key, tag_value in value.items():
        if not isinstance(key, str) or not isinstance(tag_value, str):
            raise serializers.ValidationError("Every key and value must be a string.")
        if not key or len(key) > TAG_KEY_MAX_CHARS:
            raise serializers.ValidationError(f"Keys must be 1 to {TAG_KEY_MAX_CHARS} characters.")
        if len(tag_value) > TAG_VALUE_MAX_CHARS:
            raise serializers.ValidationError(f"Values must be at most {TAG_VALUE_MAX_CHARS} characters.")
        if problem := text_problem(key) or text_problem(tag_value):
            raise serializers.ValidationError(f"Keys and values: {problem}")
    return value


TAGS_HELP = (
    f"A flat JSON object of strings: at most {TAGS_MAX_COUNT} tags, keys of 1 to {TAG_KEY_MAX_CHARS} "
    f"characters, values of at most {TAG_VALUE_MAX_CHARS}; no NUL character or lone surrogate."
)


class TagsField(serializers.JSONField):
    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", TAGS_HELP)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if getattr(data, "is_json_string", False):  # a form field: JSON text, read with our limits
            try:
                data = parse_json(data)
            except JSONError:
                self.fail("invalid")
        return validate_tags(super().to_internal_value(data))


# The characters of a model name a prompt may ask for (also the fast path's own check: llm/api/prompt.py).
MODEL_NAME_CHARACTERS = "A-Za-z0-9._:/-"


class PromptRequestSerializer(serializers.Serializer):
    prompt = serializers.CharField(max_length=PROMPT_MAX_CHARS, trim_whitespace=False)
    model = serializers.RegexField(rf"^[{MODEL_NAME_CHARACTERS}]+$", max_length=200, required=False)
    system_prompt = serializers.CharField(
        max_length=PROMPT_MAX_CHARS, required=False, allow_blank=True, trim_whitespace=False
    )
    user_id = serializers.CharField(max_length=200, required=False, allow_blank=True)
    session_id = serializers.CharField(max_length=200, required=False, allow_blank=True)
    max_tokens = serializers.IntegerField(min_value=1, max_value=MAX_TOKENS_LIMIT, required=False)
    temperature = serializers.FloatField(min_value=MIN_TEMPERATURE, max_value=MAX_TEMPERATURE, required=False)
    tags = TagsField(required=False)
    stream = serializers.BooleanField(required=False, default=False)
    provider = serializers.ChoiceField(
        choices=ModelPrice.Provider.choices,
        required=False,
        help_text="Who serves the model. Default: the provider the price table gives the model; name one "
        "to call a model the table does not list (it then costs 0).",
    )

    def validate_prompt(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("This field may not be blank.")
        return value

    def validate(self, attrs: dict) -> dict:
        attrs.setdefault("model", settings.GROQ_DEFAULT_MODEL)
        attrs.setdefault("tags", {})
        try:
            attrs["provider"] = route(attrs["model"], attrs.get("provider"))
        except UnknownModel as unknown:
            raise serializers.ValidationError({"model": [str(unknown)]}) from None
        return attrs


TOKENS_ESTIMATED_HELP = (
    "True when the provider reported no usage: the token counts are estimated (ceil(characters / 4)) "
    "and the cost with them."
)


class PromptResponseSerializer(serializers.Serializer):
    request_id = serializers.UUIDField()
    model = serializers.CharField()
    response = serializers.CharField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    latency_ms = serializers.FloatField()
    ttft_ms = serializers.FloatField(allow_null=True, help_text="Time to the first token; null unless streamed.")
    cost_estimate = serializers.FloatField()
    status = serializers.CharField()
    provider = serializers.CharField(help_text="Who served the call: groq, cerebras or openai.")
    cached_tokens = serializers.IntegerField(help_text="Prompt tokens served from the provider's cache.")
    tokens_estimated = serializers.BooleanField(help_text=TOKENS_ESTIMATED_HELP)
    output_tokens_per_second = serializers.FloatField(
        allow_null=True, help_text="completion_tokens / (latency - ttft), in seconds; null unless streamed."
    )


class ErrorSerializer(serializers.Serializer):
    """Every error answer of the API but an upstream failure of the prompt endpoint (llm/api/errors.py)."""

    error = serializers.CharField(help_text="What went wrong, in plain words.")
    missing = serializers.CharField(
        required=False,
        help_text="Only on a 403 for a missing right: the API key's missing scope (read_text), or the user's "
        "missing permission (llm.view_prompt_text).",
    )
    role = serializers.CharField(required=False, help_text="Only on a 403 to a user: the role that has the right.")
    fields = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        help_text="Only on a 400 for bad input: per field, its messages (a list of strings). A batch of events "
        'names each bad event by its index: {"events": {"3": {"model": ["..."]}}}.',
    )


class PromptErrorSerializer(serializers.Serializer):
    """An upstream failure (also the `error` event of a stream); the call is logged all the same."""

    request_id = serializers.UUIDField(help_text="The logged call: GET /api/logs/<request_id>/ or /logs/<request_id>/.")
    error_type = serializers.ChoiceField(choices=LLMRequestLog.ErrorType.choices)
    error_message = serializers.CharField(help_text="What happened and what to do, in plain words.")
    upstream_message = serializers.CharField(
        allow_null=True, help_text="The provider's own error text, or null when it said nothing (timeout, no key)."
    )
    retry_after_seconds = serializers.FloatField(
        allow_null=True,
        help_text="How long the provider asked to wait before retrying (its Retry-After), or null. "
        "A 429 answer also carries it, rounded up, as a Retry-After header.",
    )
    status = serializers.CharField()


class PromptStreamEventSerializer(serializers.Serializer):
    """One Server-Sent Event of a streamed prompt (`stream: true`): `start`, then `chunk`s, then `done` or `error`."""

    event = serializers.ChoiceField(choices=["start", "chunk", "done", "error"])
    data = serializers.CharField(
        help_text='JSON text. start: {"request_id", "model"}; chunk: {"text"}; done: the answer of a call that '
        "did not stream (PromptResponse); error: an upstream error answer (PromptError)."
    )


class FeedbackCreateSerializer(serializers.Serializer):
    """One rating of a logged call. A rater has one rating per call: rating again replaces it."""

    request_id = serializers.UUIDField()
    rating = serializers.ChoiceField(choices=UserFeedback.Rating.choices)
    comment = serializers.CharField(required=False, allow_blank=True, max_length=COMMENT_MAX_CHARS, default="")
    rater = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=RATER_MAX_CHARS,
        default="",
        help_text="Who rated, for an app that collects feedback from its own users (their id). "
        "Default: the logged-in user's name, or key:<API key name>.",
    )

    def validate_request_id(self, value):
        log = LLMRequestLog.objects.filter(request_id=value).first()
        if log is None:
            raise serializers.ValidationError("No logged call has this request_id.")
        self.context["log"] = log
        return value


# Logs and feedback

LOG_FIELDS = [
    "request_id",
    "timestamp",
    "source",
    "provider",
    "model_name",
    "user_id",
    "session_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "prompt_text",
    "response_text",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "latency_ms",
    "ttft_ms",
    "cost_estimate",
    "status",
    "error_type",
    "error_message",
    "finish_reason",
    "temperature",
    "max_tokens",
    "tags",
    "cached_tokens",
    "tokens_estimated",
    "queue_time_ms",
    "prompt_time_ms",
    "completion_time_ms",
    "output_tokens_per_second",
]


ERROR_TYPE_HELP = "Empty for a success."
HIDDEN_TEXT_HELP = 'null for a caller without the read_text right (scope, or Analyst role); "" when not stored.'


class LogSerializer(serializers.ModelSerializer):
    # A JSON number, like every cost in the API (a ModelSerializer would make the Decimal a string).
    cost_estimate = serializers.DecimalField(max_digits=20, decimal_places=10, coerce_to_string=False, read_only=True)
    # Read-only model fields lose allow_blank: declared, so that the document says "" is an answer.
    error_type = serializers.ChoiceField(
        choices=LLMRequestLog.ErrorType.choices, allow_blank=True, read_only=True, help_text=ERROR_TYPE_HELP
    )
    prompt_text = serializers.CharField(read_only=True, allow_null=True, help_text=HIDDEN_TEXT_HELP)
    response_text = serializers.CharField(read_only=True, allow_null=True, help_text=HIDDEN_TEXT_HELP)

    class Meta:
        model = LLMRequestLog
        fields = LOG_FIELDS
        read_only_fields = LOG_FIELDS

    def to_representation(self, instance: LLMRequestLog) -> dict:
        data = super().to_representation(instance)
        # Hidden unless the view says the caller may see it (llm/api/logs.py): a use that forgets wins nothing.
        if not self.context.get("show_text"):
            data["prompt_text"] = data["response_text"] = None
        return data


class FeedbackSerializer(serializers.ModelSerializer):
    request_id = serializers.UUIDField(source="request.request_id")

    class Meta:
        model = UserFeedback
        fields = ["id", "request_id", "rating", "comment", "rater", "created_at"]
        read_only_fields = ["id", "created_at"]


class LogDetailSerializer(LogSerializer):
    feedback = FeedbackSerializer(many=True, read_only=True)

    class Meta(LogSerializer.Meta):
        fields = [*LOG_FIELDS, "feedback"]
        read_only_fields = fields


# Alerts

STATE_FIELDS = ["is_firing", "level", "last_value", "last_checked_at", "last_notified_at"]
DEFINITION_FIELDS = RULE_DEFINITION_FIELDS


class AlertSilenceSerializer(serializers.ModelSerializer):
    rule_id = serializers.IntegerField(source="alert_rule_id", read_only=True)
    created_by = serializers.CharField(source="created_by_name", read_only=True)
    ended_by = serializers.CharField(source="ended_by_name", read_only=True)

    class Meta:
        model = AlertSilence
        fields = ["id", "rule_id", "starts_at", "ends_at", "reason", "created_by", "ended_at", "ended_by"]
        read_only_fields = fields


# A silence lasts at most a year: longer is switching the rule off (is_active), and says so.
SILENCE_MAX_MINUTES = 366 * 24 * 60
SILENCE_REASON_MAX_CHARS = 500


class SilenceRequestSerializer(serializers.Serializer):
    """Mute a rule: until a time, or for a number of minutes; with why."""

    until = serializers.DateTimeField(required=False, help_text="When the silence ends (ISO 8601, in the future).")
    minutes = serializers.IntegerField(
        required=False, min_value=1, max_value=SILENCE_MAX_MINUTES, help_text="Or: how long, from now."
    )
    reason = serializers.CharField(max_length=SILENCE_REASON_MAX_CHARS, help_text="Why (shown on the alerts page).")

    def validate_reason(self, value: str) -> str:
        if problem := text_problem(value):
            raise serializers.ValidationError(problem)
        return value

    def validate_until(self, value: datetime) -> datetime:
        now = timezone.now()
        if value <= now:
            raise serializers.ValidationError("Must be in the future.")
        if value > now + timedelta(minutes=SILENCE_MAX_MINUTES):
            raise serializers.ValidationError("At most a year ahead: to stop a rule for longer, deactivate it.")
        return value

    def validate(self, attrs: dict) -> dict:
        if ("until" in attrs) == ("minutes" in attrs):
            raise serializers.ValidationError({"until": ["Give either `until` or `minutes`, not both or neither."]})
        if "minutes" in attrs:
            attrs["until"] = timezone.now() + timedelta(minutes=attrs.pop("minutes"))
        return attrs


class UnsilenceSerializer(serializers.Serializer):
    rule_id = serializers.IntegerField()
    unmuted = serializers.IntegerField(help_text="How many silences ended (0: the rule was not muted).")


class ChannelIdField(serializers.PrimaryKeyRelatedField):
    """A channel id: a whole number a database id can be (a bigger one would overflow the lookup)."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("incorrect_type", data_type=type(data).__name__)
        if not 1 <= data <= MAX_ROW_ID:
            self.fail("does_not_exist", pk_value=data)
        return super().to_internal_value(data)


class AlertRuleSerializer(serializers.ModelSerializer):
    channels = ChannelIdField(
        many=True,
        required=False,
        queryset=NotificationChannel.objects.all(),
        help_text="Ids of named channels (admin: Notification channels), besides email_recipients and webhook_url.",
    )
    silence = serializers.SerializerMethodField(help_text="The silence muting the rule now, or null.")

    class Meta:
        model = AlertRule
        fields = [
            "id",
            "name",
            "description",
            *DEFINITION_FIELDS,
            "is_active",
            "notify_email",
            "email_recipients",
            "webhook_url",
            "channels",
            "silence",
            *STATE_FIELDS,
            "created_at",
            "updated_at",
        ]
        read_only_fields = [*STATE_FIELDS, "created_at", "updated_at"]
        # DRF drops a model URLField's URLValidator (keeping its own, which also allows ftp): put ours back.
        extra_kwargs = {"webhook_url": {"validators": [webhook_url_validator, validate_outbound_url]}}

    @extend_schema_field(AlertSilenceSerializer(allow_null=True))
    def get_silence(self, rule: AlertRule) -> dict | None:
        # The list prefetches the active silences (`active_silences`); one rule asks.
        if hasattr(rule, "active_silences"):
            silence = max(rule.active_silences, key=lambda item: item.ends_at, default=None)
        else:
            silence = rule.active_silence()
        return None if silence is None else AlertSilenceSerializer(silence).data

    def validate_email_recipients(self, value: str) -> str:
        # Stored in one canonical form whatever separators the caller used.
        return ", ".join(split_email_list(value))

    def validate(self, attrs: dict) -> dict:
        return validate_rule_definition(attrs, self.instance)


class AlertPreviewSerializer(AlertRuleSerializer):
    """A rule's definition (saved or not) and the period to replay it over."""

    rule_id = serializers.IntegerField(
        required=False, min_value=1, max_value=2**31 - 1, help_text="A saved rule: the fields not given are its own."
    )
    days = serializers.IntegerField(default=7, min_value=1, max_value=30, help_text="1 to 30 days back from now.")
    step_minutes = serializers.IntegerField(
        default=5,
        min_value=1,
        max_value=1440,
        help_text="Evaluate every this many minutes, like a cron of check_alerts.",
    )

    class Meta(AlertRuleSerializer.Meta):
        fields = ["rule_id", *DEFINITION_FIELDS, "days", "step_minutes"]
        read_only_fields = []

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        # A saved rule's preview is partial, and DRF applies no default then.
        attrs.setdefault("days", 7)
        attrs.setdefault("step_minutes", 5)
        evaluations = attrs["days"] * 24 * 60 // attrs["step_minutes"]
        if evaluations > PREVIEW_MAX_EVALUATIONS:
            raise serializers.ValidationError(
                {"step_minutes": [f"At most {PREVIEW_MAX_EVALUATIONS:,} evaluations: {evaluations:,} asked; raise it."]}
            )
        return attrs


PREVIEW_MAX_EVALUATIONS = 30 * 24 * 60 // 5


class PreviewPointSerializer(serializers.Serializer):
    time = serializers.DateTimeField()
    value = serializers.FloatField(allow_null=True)


class PreviewGroupSerializer(serializers.Serializer):
    group = serializers.CharField()
    series = PreviewPointSerializer(many=True)


class PreviewEventSerializer(serializers.Serializer):
    time = serializers.DateTimeField()
    kind = serializers.ChoiceField(choices=["fire", "resolve"])
    level = serializers.CharField(help_text="critical or warning on a fire; blank on a resolve.")
    group = serializers.CharField(allow_null=True, help_text="The group of a grouped rule; null otherwise.")
    value = serializers.FloatField(allow_null=True)


class AlertPreviewAnswerSerializer(serializers.Serializer):
    days = serializers.IntegerField()
    step_minutes = serializers.IntegerField()
    start = serializers.DateTimeField(allow_null=True, help_text="The first instant evaluated (on the step's grid).")
    end = serializers.DateTimeField(allow_null=True, help_text="The last instant evaluated.")
    evaluations = serializers.IntegerField()
    metric_type = serializers.CharField()
    fires_below = serializers.BooleanField()
    threshold = serializers.FloatField(help_text="The critical threshold.")
    warning_threshold = serializers.FloatField(allow_null=True)
    group_by = serializers.CharField()
    series = PreviewPointSerializer(many=True, help_text="The value at each instant (grouped: the worst group's).")
    groups = PreviewGroupSerializer(
        many=True, help_text="Grouped rules: the series of the groups with notices, the most first (at most 20)."
    )
    events = PreviewEventSerializer(
        many=True, help_text="Every notice the replay writes: fires (reminders too) and resolves."
    )
    breaches = serializers.IntegerField(help_text="Instants at which the rule (some group) was over a threshold.")
    notifications = serializers.IntegerField(help_text="The notices the cooldown let through (len(events)).")
    groups_left_out = serializers.IntegerField(
        help_text="The most groups ALERT_MAX_GROUPS left out at one instant (0: none; see check_alerts' output)."
    )


def validate_rule_definition(attrs: dict, instance: AlertRule | None = None) -> dict:
    """The checks between a rule's fields (AlertRule.validate_definition), over the stored values
    for the fields a PATCH leaves out."""
    names = ("metric_type", "threshold", "warning_threshold", "error_type")
    merged = {name: attrs.get(name, getattr(instance, name, None)) for name in names}
    try:
        AlertRule.validate_definition(merged)
    except DjangoValidationError as error:
        raise serializers.ValidationError(error.message_dict) from None
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
            "level",
            "group_key",
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


# Events

# JSON has types; a number where text is expected (or text where a number is) is a bug in the
# sender, so these fields refuse it rather than converting as DRF's fields do.


class TextField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class WholeNumberField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class NumberField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        value = super().to_internal_value(data)
        if problem := finite_problem(value):
            raise serializers.ValidationError(problem)
        return value


COUNT_HELP = f"0 to {MAX_COUNT:,} (a 32-bit column)."
LATENCY_HELP = f"Milliseconds, 0 to {MAX_LATENCY_MS:,.0f} (one day)."
TEXT_HELP = "No NUL character or lone surrogate (neither database can store them)."


class EventSerializer(serializers.Serializer):
    """One call reported by another application (the body of POST /api/events/).

    Every bound is what the storage can hold (llm/ingest_limits.py); text may not carry a NUL
    character or a lone surrogate. A value outside answers 400 naming the field.
    """

    request_id = serializers.UUIDField(required=False, help_text="Send the same id on a retry; it is stored once.")
    timestamp = serializers.DateTimeField(
        required=False,
        help_text="ISO 8601, when the call started; default now. From 1970-01-01T00:00:00Z to 5 minutes ahead of now.",
    )
    model = TextField(max_length=MODEL_MAX_CHARS, help_text=TEXT_HELP)
    provider = TextField(max_length=PROVIDER_MAX_CHARS, required=False, default="unknown", help_text=TEXT_HELP)
    prompt_tokens = WholeNumberField(min_value=0, max_value=MAX_COUNT, required=False, help_text=COUNT_HELP)
    completion_tokens = WholeNumberField(min_value=0, max_value=MAX_COUNT, required=False, help_text=COUNT_HELP)
    total_tokens = WholeNumberField(
        min_value=0,
        max_value=MAX_COUNT,
        required=False,
        help_text=f"Default prompt + completion, which must then be at most {MAX_COUNT:,}.",
    )
    cached_tokens = WholeNumberField(
        min_value=0,
        max_value=MAX_COUNT,
        required=False,
        help_text="Prompt tokens served from the provider's cache (OpenAI's prompt_tokens_details.cached_tokens), "
        "part of prompt_tokens: priced at the model's cached-input rate when it has one.",
    )
    latency_ms = NumberField(min_value=0, max_value=MAX_LATENCY_MS, required=False, help_text=LATENCY_HELP)
    ttft_ms = NumberField(
        min_value=0, max_value=MAX_LATENCY_MS, required=False, allow_null=True, help_text=LATENCY_HELP
    )
    status = serializers.ChoiceField(LLMRequestLog.Status.choices, required=False)
    error_type = serializers.ChoiceField(LLMRequestLog.ErrorType.choices, required=False, allow_blank=True)
    error_message = TextField(
        max_length=ERROR_MESSAGE_MAX_CHARS, required=False, allow_blank=True, trim_whitespace=False
    )
    cost_usd = serializers.DecimalField(
        max_digits=20,
        decimal_places=10,
        coerce_to_string=False,  # a number in the API document, like every cost
        min_value=0,
        max_value=MAX_COST_USD,
        required=False,
        allow_null=True,
        help_text=f"USD, 0 to {MAX_COST_USD:,}; computed from the model's price when absent.",
    )
    user_id = TextField(max_length=USER_ID_MAX_CHARS, required=False, allow_blank=True)
    session_id = TextField(max_length=SESSION_ID_MAX_CHARS, required=False, allow_blank=True)
    prompt = TextField(max_length=PROMPT_MAX_CHARS, required=False, allow_blank=True, trim_whitespace=False)
    response = TextField(max_length=PROMPT_MAX_CHARS, required=False, allow_blank=True, trim_whitespace=False)
    finish_reason = TextField(max_length=FINISH_REASON_MAX_CHARS, required=False, allow_blank=True)
    temperature = NumberField(min_value=MIN_TEMPERATURE, max_value=MAX_TEMPERATURE, required=False, allow_null=True)
    max_tokens = WholeNumberField(min_value=1, max_value=MAX_COUNT, required=False, allow_null=True)
    trace_id = serializers.RegexField(HEX_TRACE_ID, required=False, allow_blank=True)
    span_id = serializers.RegexField(HEX_SPAN_ID, required=False, allow_blank=True)
    parent_span_id = serializers.RegexField(HEX_SPAN_ID, required=False, allow_blank=True)
    tags = TagsField(required=False)

    def validate_timestamp(self, value: datetime) -> datetime:
        if value > timezone.now() + FUTURE_TOLERANCE:
            raise serializers.ValidationError(f"Must not be {FUTURE_TOLERANCE_TEXT}.")
        if value < EARLIEST_TIMESTAMP:
            raise serializers.ValidationError(f"Must not be {EARLIEST_TIMESTAMP_TEXT}.")
        return value

    @staticmethod
    def total_tokens_error(attrs: dict) -> str | None:
        prompt_tokens, completion_tokens = attrs.get("prompt_tokens", 0), attrs.get("completion_tokens", 0)
        total = attrs.get("total_tokens")
        if prompt_tokens + completion_tokens > MAX_COUNT:  # the total is stored in a 32-bit column too
            return f"prompt_tokens + completion_tokens must be at most {MAX_COUNT:,}."
        # Only a total may be known (some providers report nothing else); with parts it must add up.
        counts_given = "prompt_tokens" in attrs or "completion_tokens" in attrs
        if total is not None and counts_given and total != prompt_tokens + completion_tokens:
            return f"Must equal prompt_tokens + completion_tokens ({prompt_tokens + completion_tokens})."
        return None

    @staticmethod
    def cached_tokens_error(attrs: dict) -> str | None:
        if attrs.get("cached_tokens", 0) > attrs.get("prompt_tokens", 0):
            return "Must not exceed prompt_tokens (cached tokens are part of them)."
        return None

    def validate(self, attrs: dict) -> dict:
        errors: dict[str, str] = {}
        if total_error := self.total_tokens_error(attrs):
            errors["total_tokens"] = total_error
        ttft = attrs.get("ttft_ms")
        if ttft is not None and "latency_ms" in attrs and ttft > attrs["latency_ms"]:
            errors["ttft_ms"] = "Must not exceed latency_ms."
        if cached_error := self.cached_tokens_error(attrs):
            errors["cached_tokens"] = cached_error
        error_type = attrs.get("error_type", "")
        status = attrs.get("status") or (LLMRequestLog.Status.ERROR if error_type else LLMRequestLog.Status.SUCCESS)
        if status == LLMRequestLog.Status.SUCCESS and error_type:
            errors["error_type"] = "Must be empty when status is success."
        if errors:
            raise serializers.ValidationError(errors)
        attrs["status"] = status
        attrs.setdefault("prompt_tokens", 0)
        attrs.setdefault("completion_tokens", 0)
        attrs.setdefault("latency_ms", 0.0)
        attrs["error_type"] = error_type or (LLMRequestLog.ErrorType.OTHER if status == "error" else "")
        return attrs


# llm/events.py refuses a longer batch (its MAX_EVENTS_PER_BATCH; tests/test_schema.py checks they agree).
EVENTS_PER_BATCH = 1_000


class EventBatchSerializer(serializers.Serializer):
    """Several calls in one request: stored all together, or none when any is bad."""

    events = serializers.ListField(child=EventSerializer(), min_length=1, max_length=EVENTS_PER_BATCH)


class EventsAnswerSerializer(serializers.Serializer):
    created = serializers.IntegerField(help_text="Events stored by this request.")
    duplicates = serializers.IntegerField(help_text="Events whose request_id was already stored.")
    request_ids = serializers.ListField(child=serializers.UUIDField(), help_text="Every event's id, in order.")


# Answers of the metrics, feedback analytics and trace endpoints. The figures are computed by
# llm/metrics.py as plain data; these describe them in the OpenAPI document (tests/test_api_schema.py
# compares each answer's keys with them).

ERROR_RATE_HELP = "Percent of requests that failed."
PERIOD_HELP = "Start of the period, in TIME_ZONE."
PERCENTILE_NULL = "null when there is no call, or for a period below the 20-call percentile minimum."


class WindowSerializer(serializers.Serializer):
    """The window a filtered answer covers (llm.filters.WINDOW_RULE)."""

    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    window_defaulted = serializers.BooleanField(help_text="True when no date was given: the default window.")


class MetricsWindowSerializer(WindowSerializer):
    """A metrics answer: its window, and how its latency percentiles were computed."""

    percentiles = serializers.ChoiceField(
        choices=[metrics.PERCENTILES_EXACT, metrics.PERCENTILES_APPROXIMATE],
        help_text=(
            "exact: from the calls themselves; approximate (<=1 %): from the roll-ups' latency histograms, "
            "within 1 % of the exact value. Windows of up to 2 hours, a user_id filter and per-minute "
            "periods are exact. Counts, tokens and cost are always exact."
        ),
    )


class LatencyFields(serializers.Serializer):
    avg_latency_ms = serializers.FloatField(allow_null=True, help_text="null when there is no call.")
    p50_latency_ms = serializers.FloatField(allow_null=True, help_text=PERCENTILE_NULL)
    p95_latency_ms = serializers.FloatField(allow_null=True, help_text=PERCENTILE_NULL)
    p99_latency_ms = serializers.FloatField(allow_null=True, help_text=PERCENTILE_NULL)


class TokenFields(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class TrafficFields(TokenFields):
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    error_rate = serializers.FloatField(help_text=ERROR_RATE_HELP)
    cost = serializers.FloatField(help_text="USD.")


class OverviewSerializer(MetricsWindowSerializer, TokenFields, LatencyFields):
    total_requests = serializers.IntegerField()
    successful_requests = serializers.IntegerField()
    failed_requests = serializers.IntegerField()
    error_rate = serializers.FloatField(help_text=ERROR_RATE_HELP)
    total_cost = serializers.FloatField(help_text="USD.")
    unique_users = serializers.IntegerField(help_text="Distinct non-empty user_id values.")


class TokenUsageRowSerializer(TokenFields):
    period = serializers.DateTimeField(help_text=PERIOD_HELP)
    requests = serializers.IntegerField()


class GroupedSerializer(MetricsWindowSerializer):
    group_by = serializers.ChoiceField(choices=list(metrics.GROUP_BY), help_text="The period length used.")


class TokenUsageSerializer(GroupedSerializer):
    results = TokenUsageRowSerializer(many=True)


class LatencyRowSerializer(LatencyFields):
    model = serializers.CharField()
    requests = serializers.IntegerField()


class LatencySerializer(MetricsWindowSerializer):
    results = LatencyRowSerializer(many=True)


class ErrorRowSerializer(serializers.Serializer):
    error_type = serializers.ChoiceField(choices=LLMRequestLog.ErrorType.choices)
    count = serializers.IntegerField()
    share = serializers.FloatField(help_text="Percent of all errors.")
    latest_message = serializers.CharField()
    last_seen = serializers.DateTimeField(help_text="When the latest message was logged.")


class ErrorsSerializer(MetricsWindowSerializer):
    total_errors = serializers.IntegerField()
    total_requests = serializers.IntegerField()
    error_rate = serializers.FloatField(help_text=ERROR_RATE_HELP)
    errors = ErrorRowSerializer(many=True)


class ModelUsageRowSerializer(TrafficFields, LatencyFields):
    model = serializers.CharField()
    priced = serializers.BooleanField(help_text="False: the model has no price; its cost counts as 0.")


class ModelUsageSerializer(MetricsWindowSerializer):
    results = ModelUsageRowSerializer(many=True)


class PeriodRowSerializer(TrafficFields, LatencyFields):
    period = serializers.DateTimeField(help_text=PERIOD_HELP)
    partial = serializers.BooleanField(help_text="The window covers only part of the period, or it is still running.")


class DailyRowSerializer(PeriodRowSerializer):
    date = serializers.DateField(help_text="The day, in TIME_ZONE.")
    # A day's row carries fewer figures than a timeseries period's (DRF drops a field set to None).
    period = None
    prompt_tokens = None
    completion_tokens = None
    p50_latency_ms = None


class DailyStatsSerializer(MetricsWindowSerializer):
    results = DailyRowSerializer(many=True)


class TimeseriesSerializer(GroupedSerializer):
    min_calls_for_percentile = serializers.IntegerField(help_text="Periods with fewer calls have null percentiles.")
    results = PeriodRowSerializer(many=True)


class RatingsFields(serializers.Serializer):
    thumbs_up = serializers.IntegerField()
    thumbs_down = serializers.IntegerField()
    total = serializers.IntegerField()
    satisfaction_rate = serializers.FloatField(allow_null=True, help_text="Percent thumbs up; null with no rating.")


class FeedbackModelRowSerializer(RatingsFields):
    model = serializers.CharField(help_text="The rated call's model.")


class FeedbackAnalyticsSerializer(WindowSerializer, RatingsFields):
    by_model = FeedbackModelRowSerializer(many=True)


class TraceCallSerializer(serializers.ModelSerializer):
    cost_estimate = serializers.FloatField()
    error_type = serializers.ChoiceField(
        choices=LLMRequestLog.ErrorType.choices, allow_blank=True, read_only=True, help_text=ERROR_TYPE_HELP
    )
    parent_request_id = serializers.UUIDField(allow_null=True, help_text="The nearest ancestor that is a stored call.")
    depth = serializers.IntegerField(help_text="0 for a root call.")

    class Meta:
        model = LLMRequestLog
        fields = [*TRACE_CALL_FIELDS, "parent_request_id", "depth"]
        read_only_fields = fields


class TraceSpanSerializer(serializers.ModelSerializer):
    """A span of the trace that is not an LLM call, kept as context (llm/otlp.py `context_span`)."""

    attributes = serializers.DictField(
        help_text=(
            "At most 32 attributes, in key order: numbers, booleans, or text of at most 256 characters "
            "(lists and maps as JSON text). Attributes carrying prompt or response text are never kept."
        )
    )
    dropped_attributes = serializers.IntegerField(
        help_text="Attributes not kept: over the limit, carrying text, unstorable, or dropped by the sender."
    )
    duration_ms = serializers.FloatField()
    # Text rather than a choice field: a second enum named "status" beside the calls' would make
    # drf-spectacular rename both (a deploy-check warning).
    status = serializers.CharField(help_text="The span's OTLP status: `unset`, `ok` or `error`.")

    class Meta:
        model = TraceSpan
        fields = [*TRACE_SPAN_FIELDS, "duration_ms"]
        read_only_fields = fields


class TraceSerializer(serializers.Serializer):
    trace_id = serializers.RegexField(HEX_TRACE_ID)
    calls = TraceCallSerializer(many=True, help_text="In time order.")
    spans = TraceSpanSerializer(
        many=True, help_text="The spans that are not LLM calls (HTTP handlers, queries, agent steps), in time order."
    )
    truncated = serializers.BooleanField(
        help_text="True when the trace has more calls, or more spans, than the answer holds (2,000 each)."
    )


# Budgets and the spend forecast (llm/budgets.py, llm/forecast.py).


class BudgetStatusFields(serializers.Serializer):
    """The current period of a budget, computed when answered (llm.budgets.statuses)."""

    period_start = serializers.DateTimeField(read_only=True)
    period_end = serializers.DateTimeField(read_only=True)
    spent_usd = serializers.FloatField(read_only=True, help_text="Spent in the current period so far.")
    percent_used = serializers.FloatField(read_only=True, help_text="spent_usd as a percent of amount_usd.")
    forecast_usd = serializers.FloatField(
        read_only=True, help_text="Projected spend at the period's end (GET /api/metrics/forecast/ gives the method)."
    )
    forecast_low_usd = serializers.FloatField(read_only=True)
    forecast_high_usd = serializers.FloatField(read_only=True)


BUDGET_STATUS_FIELDS = list(BudgetStatusFields().fields)


class PercentField(WholeNumberField):
    def __init__(self, **kwargs):
        super().__init__(min_value=BUDGET_PERCENT_MIN, max_value=BUDGET_PERCENT_MAX, **kwargs)


class BudgetSerializer(BudgetStatusFields, serializers.ModelSerializer):
    amount_usd = serializers.DecimalField(
        max_digits=BUDGET_AMOUNT_DIGITS,
        decimal_places=BUDGET_AMOUNT_PLACES,
        min_value=BUDGET_MIN_AMOUNT,
        coerce_to_string=False,
        help_text=f"USD per period, at least {BUDGET_MIN_AMOUNT}, with up to {BUDGET_AMOUNT_PLACES} decimal places.",
    )
    warn_at_percent = serializers.ListField(
        child=PercentField(),
        max_length=BUDGET_MAX_WARNINGS,
        required=False,
        help_text=f"Whole percentages of the amount ({BUDGET_PERCENT_MIN} to {BUDGET_PERCENT_MAX}), each notified "
        "once per period by check_alerts; default [80, 100].",
    )

    channels = ChannelIdField(
        many=True,
        required=False,
        queryset=NotificationChannel.objects.all(),
        help_text="Ids of named channels (as alert rules), besides email_recipients and webhook_url.",
    )

    class Meta:
        model = Budget
        fields = [
            "id",
            "name",
            "scope",
            "scope_value",
            "period",
            "amount_usd",
            "warn_at_percent",
            "hard_limit",
            "email_recipients",
            "webhook_url",
            "channels",
            "created_at",
            "updated_at",
            *BUDGET_STATUS_FIELDS,
        ]
        read_only_fields = ["created_at", "updated_at"]
        extra_kwargs = {"webhook_url": {"validators": [webhook_url_validator, validate_outbound_url]}}

    def validate_name(self, value: str) -> str:
        if problem := text_problem(value):
            raise serializers.ValidationError(problem)
        return value

    def validate_scope_value(self, value: str) -> str:
        if problem := text_problem(value):
            raise serializers.ValidationError(problem)
        return value

    def validate_warn_at_percent(self, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("Each percentage once.")
        return sorted(value)

    def validate_email_recipients(self, value: str) -> str:
        return ", ".join(split_email_list(value))

    def validate(self, attrs: dict) -> dict:
        scope = attrs.get("scope", getattr(self.instance, "scope", Budget.Scope.ALL))
        value = attrs.get("scope_value", getattr(self.instance, "scope_value", ""))
        problem = Budget.scope_problem(scope, value)
        if problem is None and scope == Budget.Scope.TAG:
            key, _, tag_value = value.partition(":")
            if len(key) > TAG_KEY_MAX_CHARS or len(tag_value) > TAG_VALUE_MAX_CHARS:
                problem = f"A tag key has at most {TAG_KEY_MAX_CHARS} characters, a value {TAG_VALUE_MAX_CHARS}."
        if problem is not None:
            raise serializers.ValidationError({"scope_value": [problem]})
        return attrs

    def to_representation(self, instance: Budget) -> dict:
        answer = super().to_representation(instance)
        # The view computes the statuses (llm.budgets.statuses), all budgets of a list at once.
        status = self.context["status_of"](instance)
        answer.update(
            period_start=status.period_start.isoformat(),
            period_end=status.period_end.isoformat(),
            spent_usd=float(status.spent_usd),
            percent_used=status.percent_used,
            forecast_usd=status.forecast.forecast,
            forecast_low_usd=status.forecast.low,
            forecast_high_usd=status.forecast.high,
        )
        return answer


class ForecastSerializer(serializers.Serializer):
    period = serializers.ChoiceField(choices=list(spend_forecast.PERIODS))
    model = serializers.CharField(allow_null=True, help_text="The model forecast; null: all calls.")
    start = serializers.DateTimeField(help_text="Start of the current period (local midnight in TIME_ZONE).")
    end = serializers.DateTimeField(help_text="End of the current period.")
    spent_so_far = serializers.FloatField(help_text="USD spent from start to now (exact).")
    forecast = serializers.FloatField(help_text="Projected USD at the period's end.")
    low = serializers.FloatField(help_text="The lowest of the scenarios (one per previous week).")
    high = serializers.FloatField(help_text="The highest of the scenarios.")
    method = serializers.ChoiceField(
        choices=[spend_forecast.METHOD_RHYTHM, spend_forecast.METHOD_LINEAR],
        help_text="hour_of_week: the same hours of previous weeks, scaled by this period so far; linear: no "
        "history yet, a straight line from the period's start.",
    )
    weeks = serializers.IntegerField(help_text="Previous weeks used (0 with the linear method).")
    scale = serializers.FloatField(
        allow_null=True, help_text="This period so far over the same hours of previous weeks; null when linear."
    )


# Breakdowns, sessions and users (issue 18).


class BreakdownRowSerializer(TokenFields):
    key = serializers.CharField(
        allow_null=True,
        help_text='The group: a model, user id, session id, source, error type or tag value; "" for calls '
        "without one (no user id, no such tag, no error). null in `other`.",
    )
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    error_rate = serializers.FloatField(help_text=ERROR_RATE_HELP)
    cost = serializers.FloatField(help_text="USD.")
    cost_per_1k_tokens = serializers.FloatField(allow_null=True, help_text="USD per 1,000 tokens; null without tokens.")
    avg_latency_ms = serializers.FloatField(allow_null=True)
    p50_latency_ms = serializers.FloatField(allow_null=True)
    p95_latency_ms = serializers.FloatField(allow_null=True)


class BreakdownOtherSerializer(BreakdownRowSerializer):
    groups = serializers.IntegerField(help_text="How many groups are summed here.")


class BreakdownSerializer(MetricsWindowSerializer):
    by = serializers.CharField(help_text="model, user, session, source, error_type or tag:<key>.")
    order_by = serializers.ChoiceField(choices=list(metrics.BREAKDOWN_ORDERS))
    limit = serializers.IntegerField()
    groups = BreakdownRowSerializer(many=True, help_text="The `limit` largest groups by `order_by`, largest first.")
    other = BreakdownOtherSerializer(
        allow_null=True,
        help_text="The remaining groups summed as one row; its percentiles are computed over its own calls, "
        "like a group's (sorted, exact, over a window of up to 2 hours; else from latency histograms within "
        "1 %, as `percentiles` says), never from the groups' percentiles. null when every group is shown.",
    )


class UsageFields(TokenFields):
    requests = serializers.IntegerField(help_text="Calls.")
    errors = serializers.IntegerField()
    cost = serializers.FloatField(help_text="USD.")


class SessionRowSerializer(UsageFields):
    session_id = serializers.CharField()
    first_call = serializers.DateTimeField()
    last_call = serializers.DateTimeField()
    users = serializers.IntegerField(help_text="Distinct non-empty user ids.")
    user_id = serializers.CharField(source="shown_user", help_text='One of its users ("" if none): the usual one.')
    models = serializers.IntegerField(help_text="Distinct models.")
    model = serializers.CharField(source="shown_model", help_text="One of its models.")


class UserRowSerializer(UsageFields):
    user_id = serializers.CharField()
    sessions = serializers.IntegerField(help_text="Distinct non-empty session ids.")
    first_seen = serializers.DateTimeField()
    last_seen = serializers.DateTimeField()


# A turn of a session's conversation: the log's fields (one list, LOG_FIELDS) but these, which the
# conversation does not show (its session id is the page's; the timing details are on the call's own page),
# with the session's running cost after the call's cost, and the call's ratings.
SESSION_CALL_OMITTED = frozenset(
    {
        "source",
        "provider",
        "session_id",
        "ttft_ms",
        "finish_reason",
        "temperature",
        "max_tokens",
        "cached_tokens",
        "tokens_estimated",
        "queue_time_ms",
        "prompt_time_ms",
        "completion_time_ms",
        "output_tokens_per_second",
    }
)
_SESSION_CALL_LOG_FIELDS = [name for name in LOG_FIELDS if name not in SESSION_CALL_OMITTED]
_AFTER_COST = _SESSION_CALL_LOG_FIELDS.index("cost_estimate") + 1
SESSION_CALL_FIELDS = [
    *_SESSION_CALL_LOG_FIELDS[:_AFTER_COST],
    "running_cost",
    *_SESSION_CALL_LOG_FIELDS[_AFTER_COST:],
    "thumbs_up",
    "thumbs_down",
]


class SessionCallSerializer(serializers.ModelSerializer):
    """A turn of the conversation. Holds the prompt and the answer (the `read_text` right)."""

    cost_estimate = serializers.FloatField(allow_null=True)
    running_cost = serializers.FloatField(allow_null=True, help_text="The session's cost up to and with this call.")
    error_type = serializers.ChoiceField(
        choices=LLMRequestLog.ErrorType.choices, allow_blank=True, read_only=True, help_text=ERROR_TYPE_HELP
    )
    thumbs_up = serializers.SerializerMethodField()
    thumbs_down = serializers.SerializerMethodField()

    class Meta:
        model = LLMRequestLog
        fields = SESSION_CALL_FIELDS
        read_only_fields = fields

    def _ratings(self, log: LLMRequestLog, rating: str) -> int:
        return sum(feedback.rating == rating for feedback in log.feedback.all())  # prefetched

    def get_thumbs_up(self, log: LLMRequestLog) -> int:
        return self._ratings(log, UserFeedback.Rating.THUMBS_UP)

    def get_thumbs_down(self, log: LLMRequestLog) -> int:
        return self._ratings(log, UserFeedback.Rating.THUMBS_DOWN)


class SessionDetailSerializer(serializers.Serializer):
    session_id = serializers.CharField()
    calls = SessionCallSerializer(many=True, help_text="In time order.")
    truncated = serializers.BooleanField(
        help_text=f"True when the session has more than {metrics.SESSION_MAX_CALLS} calls (the first are given)."
    )


class UserSessionSerializer(SessionRowSerializer):
    user_id = None


class UserTotalsSerializer(TokenFields, LatencyFields):
    total_requests = serializers.IntegerField()
    failed_requests = serializers.IntegerField()
    error_rate = serializers.FloatField(help_text=ERROR_RATE_HELP)
    total_cost = serializers.FloatField(help_text="USD.")


class FeedbackSummarySerializer(RatingsFields):
    by_model = FeedbackModelRowSerializer(many=True)


class UserDetailSerializer(GroupedSerializer):
    user_id = serializers.CharField()
    totals = UserTotalsSerializer()
    series = PeriodRowSerializer(many=True, help_text="Usage over time, per period with traffic.")
    models = ModelUsageRowSerializer(many=True)
    sessions = UserSessionSerializer(many=True, help_text="The user's 20 latest sessions in the window.")
    feedback = FeedbackSummarySerializer(help_text="Ratings of the user's calls.")
