"""Failed logins (django-axes): after LOGIN_FAILURE_LIMIT failures for one user name, or from one
address, the dashboard login and the admin login answer 429 "Too many failed logins; try again in
N minutes" for LOGIN_LOCKOUT_MINUTES after the last failure. Attempts are rows in the database
(axes' AccessAttempt), so every worker sees them; admin lists them and deleting one unlocks.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse


def client_address(request: HttpRequest) -> str:
    """The client's address, counting TRUSTED_PROXY_COUNT proxies in front (each appends the address
    it saw to X-Forwarded-For, as docs/nginx.conf.example does). The entries left of those are the
    client's own to write, so they are never trusted: a forged header cannot dodge the lockout."""
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies:
        forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",") if part.strip()]
        if len(forwarded) >= proxies and is_address(forwarded[-proxies]):
            return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR", "")


def is_address(text: str) -> bool:
    """An IPv4 or IPv6 address: what the attempt and audit tables' address columns (inet in
    PostgreSQL) can store."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def lockout_message() -> str:
    minutes = settings.LOGIN_LOCKOUT_MINUTES
    return f"Too many failed logins; try again in {minutes} minute{'s' if minutes != 1 else ''}."


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict | None = None
) -> HttpResponse:
    """axes' AXES_LOCKOUT_CALLABLE: the login form again, with the lockout message, 429 and Retry-After
    (axes restarts the cool-off at each attempt made while locked out)."""
    message = lockout_message()
    if request.path.startswith(reverse("admin:login")):
        form = AdminAuthenticationForm(request)
        form.cleaned_data = {}  # an unbound form has none, and add_error looks there
        form.add_error(None, message)  # admin/login.html shows it where a wrong password's error goes
        context = {
            **admin.site.each_context(request),
            "title": "Log in",
            "form": form,
            "app_path": request.get_full_path(),
            REDIRECT_FIELD_NAME: request.POST.get(REDIRECT_FIELD_NAME, reverse("admin:index")),
        }
        response = render(request, "admin/login.html", context, status=429)
    else:
        context = {
            "form": AuthenticationForm(request),
            "lockout_message": message,
            "next": request.POST.get("next", ""),
        }
        response = render(request, "registration/login.html", context, status=429)
    response["Retry-After"] = str(settings.LOGIN_LOCKOUT_MINUTES * 60)
    return response
