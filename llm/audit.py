"""The audit log: who created, changed or deleted alert rules, API keys, prices, users, roles
(groups) and dashboard settings, through admin or the API, with every field before and after.

django-auditlog writes the entries (its `LogEntry`, admin's "Audit log") from model signals; which models and
fields it follows is AUDITLOG_INCLUDE_TRACKING_MODELS in core/settings.py (one line per model).
`AuditMiddleware` says who acts: the logged-in user, or the API key a DRF view authenticated. The
key is read when an entry is written, after the view's authentication: the middleware itself runs
before DRF knows the key.
"""

from __future__ import annotations

from functools import partial

from auditlog.middleware import AuditlogMiddleware
from auditlog.models import LogEntry
from django.http import HttpRequest, HttpResponse

from llm.logging import request_id_var
from llm.logins import client_address
from llm.models import APIKey

HIDDEN = "(hidden)"
# Requests that cannot change an audited object: reads, and the hot paths that only store calls
# (prompts, events, OTLP spans). They skip auditlog's per-request set-up (a signal receiver connected
# and disconnected: about 80 us a request, measured, and every model's signal cache emptied).
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CALL_PATHS = ("/api/llm/prompt", "/api/events", "/v1/traces")
API_KEY = "api_key"


def api_key_data(request: HttpRequest) -> dict | None:
    """An entry's `additional_data`: the API key that acted, by name (a key is not a user, so it
    cannot be the entry's `actor`). DRF sets the authenticated key on the Django request too."""
    api_key = getattr(request, "auth", None)
    return {API_KEY: api_key.name} if isinstance(api_key, APIKey) else None


def actor_label(entry: LogEntry) -> str:
    """Who acted, in words: the user, the API key, or "system" (a command, a migration)."""
    if entry.actor_id is not None:
        return str(entry.actor)
    if isinstance(entry.additional_data, dict) and API_KEY in entry.additional_data:
        return f'API key "{entry.additional_data[API_KEY]}"'
    return "system"


def request_id() -> str | None:
    """AUDITLOG_CID_GETTER: an entry's correlation id is the request's X-Request-ID, as in the request log."""
    return request_id_var.get() or None


def hide(value: str) -> str:
    """The mask of secret fields (password and key hashes): that they changed is recorded, not to what.
    auditlog hands over str(value), so a field that was empty or null (on create) arrives as "" or "None"."""
    return "" if value in ("", "None") else HIDDEN


class AuditMiddleware(AuditlogMiddleware):
    """auditlog's middleware, with the API key as actor where there is no user, and the client's
    address read as the login lockout reads it (only trusted proxies' X-Forwarded-For)."""

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method in READ_METHODS or request.path.startswith(CALL_PATHS):
            return self.get_response(request)
        return super().__call__(request)

    @staticmethod
    def _get_remote_addr(request: HttpRequest) -> str | None:
        return client_address(request)

    def get_extra_data(self, request: HttpRequest) -> dict:
        data = super().get_extra_data(request)
        # A callable: auditlog calls it as it writes an entry, by then DRF has authenticated the key.
        data["additional_data"] = partial(api_key_data, request)
        return data
