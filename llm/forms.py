from __future__ import annotations

from django import forms

from llm.ingest_limits import text_problem
from llm.models import UserFeedback
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
