"""Scrubbing personal data from stored text (REDACT_PII)."""

from __future__ import annotations

import re

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")


def redact(text: str) -> str:
    """Replace personal data with typed placeholders such as [EMAIL]."""
    return EMAIL.sub("[EMAIL]", text)
