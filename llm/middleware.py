"""No request of any shape gets Django's technical pages, DEBUG or not.

Django turns an unknown URL, a view's exception or a middleware's exception into a response deep
inside the handler (the technical 404/500 pages with DEBUG=True, HTML templates otherwise), before
any outer middleware sees it. So this middleware looks at the finished response instead:

- under /api/, /v1/ and /metrics an HTML error answer becomes `{"error": "..."}` with the same
  status (the shape of llm/api/errors.py); DRF's own answers, JSON or the browsable API, pass;
- on dashboard pages a 400, 404 or 500 becomes templates/400.html, 404.html or 500.html.

The traceback of a 500 is still logged: Django logs it (logger `django.request`) when it builds
the response we replace.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from rest_framework.response import Response as DRFResponse

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


def is_html(response: HttpResponse) -> bool:
    return response.get("Content-Type", "").startswith("text/html")
