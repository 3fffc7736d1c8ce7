from __future__ import annotations

from django import forms

from llm.models import UserFeedback
from llm.serializers import COMMENT_MAX_CHARS


class FeedbackForm(forms.Form):
    """Thumbs up or down, and a comment, on one logged call (the log detail page)."""

    rating = forms.ChoiceField(choices=UserFeedback.Rating.choices, widget=forms.RadioSelect)
    comment = forms.CharField(required=False, max_length=COMMENT_MAX_CHARS, widget=forms.Textarea(attrs={"rows": 3}))
