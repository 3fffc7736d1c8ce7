"""What of a prompt, a response or an error message is stored: the STORE_PROMPTS,
REDACT_PII and MAX_STORED_TEXT_CHARS settings, applied before anything is written (and text the
databases cannot hold replaced)."""

from __future__ import annotations

from django.conf import settings

from llm.ingest_limits import storable_text

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
    # The doors refuse NUL and lone surrogates (llm/ingest_limits.py); what a provider answered
    # through the proxy cannot be refused, so it is kept with them replaced.
    return truncate(storable_text(text), settings.MAX_STORED_TEXT_CHARS)
