"""API key authentication for DRF: `Authorization: Bearer <key>`."""

from __future__ import annotations

import time

from django.contrib.auth.models import AnonymousUser
from django.db.models.signals import post_delete, post_save
from django.http import HttpRequest
from rest_framework import authentication, exceptions, permissions

from llm.models import APIKey

# A valid key is remembered for this many seconds per process, so that a prompt or an ingest batch
# costs no query to authenticate. Revoking or deleting a key takes effect at once in the process
# that does it (the cache is emptied on every APIKey save or delete) and within this bound in the
# other workers. A bad key is never remembered: it is looked up every time.
KEY_CACHE_SECONDS = 5.0
KEY_CACHE_MAX = 1_000
_valid_keys: dict[str, tuple[APIKey, float]] = {}


def authenticate_key(raw_key: str) -> APIKey | None:
    """APIKey.authenticate, remembered for KEY_CACHE_SECONDS when the key is valid."""
    remembered = cached_key(raw_key)
    if remembered is not None:
        return remembered
    key_hash = APIKey.hash_key(raw_key)
    now = time.monotonic()
    api_key = APIKey.authenticate(raw_key)
    if api_key is None:
        _valid_keys.pop(key_hash, None)
        return None
    if len(_valid_keys) >= KEY_CACHE_MAX:
        _valid_keys.clear()
    _valid_keys[key_hash] = (api_key, now + KEY_CACHE_SECONDS)
    return api_key


def cached_key(raw_key: str) -> APIKey | None:
    """The key as authenticate_key remembers it, never a query: None when it is not in this
    process's cache (or its time there is up), for the prompt's fast path (llm/api/prompt.py)."""
    cached = _valid_keys.get(APIKey.hash_key(raw_key))
    if cached is not None and cached[1] > time.monotonic():
        return cached[0]
    return None


def cached_key_gone_stale(raw_key: str) -> bool:
    """Whether this process found the key valid, unexpired, when it last looked it up, and that
    look-up's time in the cache is up: a key worth looking up again before the requests that need
    it (the prompt's fast path, llm/api/prompt.py), whichever path looked it up first. A key never
    valid here, or dropped from the cache since (a save, a failed look-up), is not."""
    cached = _valid_keys.get(APIKey.hash_key(raw_key))
    return cached is not None and cached[1] <= time.monotonic() and not cached[0].has_expired()


def bearer_key(header: str) -> str | None:
    """The key of an `Authorization: Bearer <key>` header ("" when it names none); None for no
    header or another scheme."""
    scheme, _, raw_key = header.partition(" ")
    return raw_key.strip() if scheme.lower() == "bearer" else None


def forget_keys(**kwargs) -> None:
    _valid_keys.clear()


post_save.connect(forget_keys, sender=APIKey, dispatch_uid="llm_auth_forget_keys_on_save")
post_delete.connect(forget_keys, sender=APIKey, dispatch_uid="llm_auth_forget_keys_on_delete")


class APIKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        raw_key = bearer_key(authentication.get_authorization_header(request).decode("latin-1"))
        if raw_key is None:
            return None
        if not raw_key:
            raise exceptions.AuthenticationFailed("Empty API key.")
        api_key = authenticate_key(raw_key)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        if api_key.has_expired():
            expired_at = api_key.expires_at.isoformat(timespec="seconds")
            raise exceptions.AuthenticationFailed(f"This API key expired at {expired_at}: make a new one.")
        return AnonymousUser(), api_key

    def authenticate_header(self, request) -> str:
        return self.keyword


def api_key_from(request: HttpRequest) -> APIKey | None:
    """The valid API key a plain Django view's request carries (the OTLP receiver, which is not a
    DRF view), read exactly as the API reads it; None when it carries none, or a bad one."""
    try:
        authenticated = APIKeyAuthentication().authenticate(request)
    except exceptions.AuthenticationFailed:
        return None
    return authenticated[1] if authenticated else None


SEND_A_KEY = "Send an API key: Authorization: Bearer <key>."


def key_refusal(request: HttpRequest, scope: str) -> tuple[int, str] | None:
    """Why a plain Django view (the OTLP receiver) refuses the request's API key: (401, why) for
    none, a bad or an expired one, (403, why) for a key without `scope`; None to go on."""
    try:
        authenticated = APIKeyAuthentication().authenticate(request)
    except exceptions.AuthenticationFailed as error:
        return 401, f"{error.detail} {SEND_A_KEY}"
    if not authenticated:
        return 401, SEND_A_KEY
    if not authenticated[1].has_scope(scope):
        return 403, f"This API key lacks the scope “{scope}”."
    return None


class HasSessionOrAPIKey(permissions.BasePermission):
    """A logged-in dashboard user, or a machine client with a valid API key."""

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated) or isinstance(request.auth, APIKey)
