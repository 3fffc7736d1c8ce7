from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from llm.models import LLMRequestLog, UserFeedback

# Long enough for a large context window, short enough that one request cannot fill the disk.
PROMPT_MAX_CHARS = 100_000
MAX_TOKENS_LIMIT = 32_768
TAGS_MAX_COUNT = 50
TAG_KEY_MAX_CHARS = 100
TAG_VALUE_MAX_CHARS = 500
COMMENT_MAX_CHARS = 5_000
RATER_MAX_CHARS = 200


def validate_tags(value: object) -> dict[str, str]:
    """Tags are a flat JSON object of strings, small enough to index and display."""
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
    return value


class TagsField(serializers.JSONField):
    def to_internal_value(self, data):
        return validate_tags(super().to_internal_value(data))


class PromptRequestSerializer(serializers.Serializer):
    prompt = serializers.CharField(max_length=PROMPT_MAX_CHARS, trim_whitespace=False)
    model = serializers.RegexField(r"^[A-Za-z0-9._:/-]+$", max_length=200, required=False)
    system_prompt = serializers.CharField(
        max_length=PROMPT_MAX_CHARS, required=False, allow_blank=True, trim_whitespace=False
    )
    user_id = serializers.CharField(max_length=200, required=False, allow_blank=True)
    session_id = serializers.CharField(max_length=200, required=False, allow_blank=True)
    max_tokens = serializers.IntegerField(min_value=1, max_value=MAX_TOKENS_LIMIT, required=False)
    temperature = serializers.FloatField(min_value=0.0, max_value=2.0, required=False)
    tags = TagsField(required=False)
    stream = serializers.BooleanField(required=False, default=False)

    def validate_prompt(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("This field may not be blank.")
        return value

    def validate(self, attrs: dict) -> dict:
        attrs.setdefault("model", settings.GROQ_DEFAULT_MODEL)
        attrs.setdefault("tags", {})
        return attrs


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
