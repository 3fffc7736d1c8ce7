"""API key authentication for DRF: `Authorization: Bearer <key>`."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest
from rest_framework import authentication, exceptions, permissions

from llm.models import APIKey


class APIKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw_key = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            return None
        raw_key = raw_key.strip()
        if not raw_key:
            raise exceptions.AuthenticationFailed("Empty API key.")
        api_key = APIKey.authenticate(raw_key)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
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


class HasSessionOrAPIKey(permissions.BasePermission):
    """A logged-in dashboard user, or a machine client with a valid API key."""

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated) or isinstance(request.auth, APIKey)
