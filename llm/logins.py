"""Failed logins (django-axes): after LOGIN_FAILURE_LIMIT failures for one user name, or from one
address, the dashboard login and the admin login answer 429 "Too many failed logins; try again in
N minutes" for LOGIN_LOCKOUT_MINUTES after the last failure. Attempts are rows in the database
(axes' AccessAttempt), so every worker sees them; admin lists them and deleting one unlocks.
"""

from __future__ import annotations

import ipaddress

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.functional import cached_property

from llm.ingest_limits import text_problem


class LoginBackend(AxesStandaloneBackend):
    """django-axes' check before the password's. A login made in code without a request (the test
    client's login(), a shell) has no address and comes from no one over HTTP: it is not counted,
    where axes would refuse it outright."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs
    ):
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)


def client_address(request: HttpRequest) -> str | None:
    """The client's address, counting TRUSTED_PROXY_COUNT proxies in front (each appends the address
    it saw to X-Forwarded-For, as docs/nginx.conf.example does). The entries left of those are the
    client's own to write, so they are never trusted: a forged header cannot dodge the lockout."""
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies:
        forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",") if part.strip()]
        if len(forwarded) >= proxies and is_address(forwarded[-proxies]):
            return forwarded[-proxies]
    # None when unknown (a request built in code, as the test client's login() makes): stored as NULL.
    return request.META.get("REMOTE_ADDR") or None


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


def login_input_problem(request: HttpRequest) -> str | None:
    """Why a login request cannot be recorded as an attempt, naming the field; None when it can.

    django-axes stores every failed login's user name, User-Agent and form fields: a NUL or a lone
    surrogate in any of them, or a user name longer than any user's (the login form does not check
    its length), would fail in the database (a 500 on PostgreSQL) instead of being refused."""
    fields = [("User-Agent header", request.headers.get("User-Agent", ""))]
    for query in (request.GET, request.POST):
        fields += [(f"field name {key!r}", key) for key in query]
        fields += [(key, value) for key, values in query.lists() for value in values]
    for name, value in fields:
        if problem := text_problem(value):
            return f"{name}: {problem}"
    limit = User._meta.get_field("username").max_length
    if len(request.POST.get("username", "")) > limit:
        return f"username: at most {limit} characters."
    return None


class LoginInputMiddleware:
    """Before django-axes: a login request it could not record answers 400 naming the field."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    @cached_property
    def login_paths(self) -> frozenset[str]:
        # Resolved once, on first use (every prompt and ingest POST passes here).
        return frozenset({reverse("login"), reverse("admin:login")})

    def __call__(self, request: HttpRequest) -> HttpResponse:
        is_login = request.method == "POST" and request.path in self.login_paths
        if is_login and (problem := login_input_problem(request)):
            # templates/400.html shows it (llm.middleware renders every page's 400 from that template).
            request.bad_request_problem = problem
            return render(request, "400.html", status=400)
        return self.get_response(request)
