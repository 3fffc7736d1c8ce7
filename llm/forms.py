from __future__ import annotations

from django import forms

from llm.models import AlertRule, UserFeedback
from llm.serializers import COMMENT_MAX_CHARS


class FeedbackForm(forms.Form):
    """Thumbs up or down, and a comment, on one logged call (the log detail page)."""

    rating = forms.ChoiceField(choices=UserFeedback.Rating.choices, widget=forms.RadioSelect)
    comment = forms.CharField(required=False, max_length=COMMENT_MAX_CHARS, widget=forms.Textarea(attrs={"rows": 3}))


class AlertRuleForm(forms.ModelForm):
    """A rule, as the dashboard's rule form edits it (the model's validators and clean, the same as
    admin and the API)."""

    # A webhook typed without a scheme is meant as https (as in admin; Django 6's default). The
    # model's validators (http and https only) still run.
    webhook_url = forms.URLField(
        required=False, assume_scheme="https", help_text=AlertRule._meta.get_field("webhook_url").help_text
    )

    class Meta:
        model = AlertRule
        fields = [
            "name",
            "description",
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
            "is_active",
            "notify_email",
            "email_recipients",
            "webhook_url",
        ]
        widgets = {
            "description": forms.Textarea(attrs={"rows": 2}),
            "email_recipients": forms.TextInput(),
            "threshold": forms.NumberInput(attrs={"step": "any"}),
            "warning_threshold": forms.NumberInput(attrs={"step": "any"}),
        }
        help_texts = {
            "threshold": "The critical level: fires above it (below it for no_traffic and feedback).",
        }
