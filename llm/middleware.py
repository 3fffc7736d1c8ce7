"""No request of any shape gets Django's technical pages, DEBUG or not.

Django turns an unknown URL, a view's exception or a middleware's exception into a response deep
inside the handler (the technical 404/500 pages with DEBUG=True, HTML templates otherwise), before
any outer middleware sees it. So this middleware looks at the finished response instead:

- under /api/, /v1/ and /metrics an HTML error answer becomes `{"error": "..."}` with the same
  status (the shape of llm/api/errors.py); DRF's own answers, JSON or the browsable API, pass;
- on dashboard pages a 400, 404 or 500 becomes templates/400.html, 404.html or 500.html.

The traceback of a 500 is still logged: Django logs it (logger `django.request`) when it builds
the response we replace.

While the database is down (or refuses connections) nothing is a 500: the API, /v1/traces and
/metrics answer 503 with Retry-After and `{"error": "..."}` (OTLP exporters and Prometheus retry a
503), pages answer templates/503.html, and the log gets one line per request instead of a
traceback. A view's failure arrives in process_exception; one raised by another middleware (a
session saved on the way out) has already become a 500 by then, so a signal receiver marks its
request and the finished response is replaced. Nothing is kept between requests: the next one
connects again (CONN_HEALTH_CHECKS), so the site recovers by itself as soon as the database answers.

SecurityHeadersMiddleware adds the Content-Security-Policy of settings.CONTENT_SECURITY_POLICY
(Django 5.2 has none of its own).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from django.conf import settings
from django.core.signals import got_request_exception
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from rest_framework.response import Response as DRFResponse

from llm.outage import RETRY_AFTER_SECONDS, describe, is_database_unavailable

logger = logging.getLogger("llm.outage")

UNAVAILABLE_MESSAGE = "The database is temporarily unavailable. Try again in a few seconds."

API_PREFIXES = ("/api/", "/v1/", "/metrics")
# With DEBUG, a bad request (SuspiciousOperation, BadRequest) gets the technical page with status 400.
PAGE_TEMPLATES = {400: "400.html", 404: "404.html"}


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in ("/api", "/v1")


def api_error_message(request: HttpRequest, response: HttpResponse) -> str:
    if response.status_code == 404:
        return f"No API endpoint at {request.path}. The endpoints are listed at /api/schema/."
    if response.status_code == 405:
        allowed = response.get("Allow", "")
        return f'Method "{request.method}" not allowed.' + (f" Allowed: {allowed}." if allowed else "")
    if response.status_code >= 500:
        return "Internal server error. The traceback is in the server log."
    return response.reason_phrase + "."


class FriendlyErrorsMiddleware:
    """JSON errors for the API, plain friendly 404/500 pages for people. See the module docstring."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        answer = self.answer_for(request, response)
        if answer is not response and getattr(response, "_has_been_logged", False):
            answer._has_been_logged = True  # Django logged this error once: not again for our answer
        return answer

    def answer_for(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if getattr(request, "database_unavailable", None) is not None and response.status_code >= 500:
            # process_exception's 503 as it is; a middleware's error, already a 500, becomes one.
            return response if response.status_code == 503 else unavailable_response(request)
        if response.status_code < 400 or isinstance(response, DRFResponse) or not is_html(response):
            return response
        if is_api_path(request.path):
            answer = JsonResponse({"error": api_error_message(request, response)}, status=response.status_code)
            if response.has_header("Allow"):
                answer["Allow"] = response["Allow"]
            return answer
        if response.status_code in PAGE_TEMPLATES:
            template = PAGE_TEMPLATES[response.status_code]
            return HttpResponse(loader.render_to_string(template, request=request), status=response.status_code)
        if response.status_code >= 500:
            # No request context: rendering must not depend on what may have just failed (the database).
            return HttpResponse(loader.render_to_string("500.html"), status=response.status_code)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_database_unavailable(exception):
            return None
        note_outage(request, exception)
        return unavailable_response(request)


def note_outage(request: HttpRequest, exception: BaseException) -> None:
    """One log line per request, no traceback: an outage is not a bug, and a traceback per request
    would bury the log."""
    request.database_unavailable = exception
    logger.warning(
        "Database unavailable: %s %s answered 503 (%s)",
        request.method,
        request.path,
        describe(exception),
        extra={"database_error": type(exception).__name__},
    )


@receiver(got_request_exception)
def mark_outage(sender, request: HttpRequest | None = None, **kwargs) -> None:
    """A middleware's exception (not a view's) is turned into a 500 before FriendlyErrorsMiddleware
    sees it; this marks its request so that the 500 becomes a 503."""
    exception = sys.exc_info()[1]
    if request is not None and is_database_unavailable(exception):
        note_outage(request, exception)


def unavailable_response(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        response = JsonResponse({"error": UNAVAILABLE_MESSAGE}, status=503)
    else:
        # No request context: the context processors would ask the database for the user.
        response = HttpResponse(loader.render_to_string("503.html"), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class SecurityHeadersMiddleware:
    """Content-Security-Policy on every answer that has none (settings.CONTENT_SECURITY_POLICY)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if settings.CONTENT_SECURITY_POLICY:
            response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response


def is_html(response: HttpResponse) -> bool:
    return response.get("Content-Type", "").startswith("text/html")
