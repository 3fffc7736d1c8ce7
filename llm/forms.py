from __future__ import annotations

from django import forms

from llm.ingest_limits import text_problem
from llm.models import RULE_DEFINITION_FIELDS, AlertRule, UserFeedback
from llm.serializers import COMMENT_MAX_CHARS, SILENCE_REASON_MAX_CHARS


class FeedbackForm(forms.Form):
    """Thumbs up or down, and a comment, on one logged call (the log detail page)."""

    rating = forms.ChoiceField(choices=UserFeedback.Rating.choices, widget=forms.RadioSelect)
    comment = forms.CharField(required=False, max_length=COMMENT_MAX_CHARS, widget=forms.Textarea(attrs={"rows": 3}))


# How long the alerts page's "Mute" can silence a rule (the API takes any time up to a year).
SILENCE_DURATIONS = [(60, "1 hour"), (4 * 60, "4 hours"), (24 * 60, "1 day"), (7 * 24 * 60, "1 week")]


class SilenceForm(forms.Form):
    """Mute a rule from the alerts page or its history page: for how long, and why."""

    minutes = forms.TypedChoiceField(choices=SILENCE_DURATIONS, coerce=int, label="For")
    reason = forms.CharField(max_length=SILENCE_REASON_MAX_CHARS, label="Why")

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"]
        if problem := text_problem(reason):
            raise forms.ValidationError(problem)
        return reason


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
            *RULE_DEFINITION_FIELDS,
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
