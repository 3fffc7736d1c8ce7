"""What of a prompt, a response or an error message is stored: the STORE_PROMPTS,
REDACT_PII and MAX_STORED_TEXT_CHARS settings, applied before anything is written."""

from __future__ import annotations

from django.conf import settings

TRUNCATION_MARKER = "…[truncated]"


def truncate(text: str, limit: int) -> str:
    if limit <= 0 or len(text) <= limit:
        return text
    return text[: max(limit - len(TRUNCATION_MARKER), 0)] + TRUNCATION_MARKER


def stored_text(text: str | None, *, always_store: bool = False) -> str:
    """The form of `text` that may be written to the database.

    `always_store` is for error messages, which operators need even when prompts are not kept.
    """
    if not text:
        return ""
    if not settings.STORE_PROMPTS and not always_store:
        return ""
    if settings.REDACT_PII:
        from llm.redaction import redact

        text = redact(text)
    return truncate(text, settings.MAX_STORED_TEXT_CHARS)
