"""The project's URLs plus two views that fail, so tests can see what a real unhandled exception answers."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

from core.urls import urlpatterns as project_urlpatterns


class Boom(Exception):
    pass


def failing_view(request: HttpRequest) -> HttpResponse:
    raise Boom("the view failed on purpose")


urlpatterns = [
    path("api/failing/", failing_view),
    path("failing/", failing_view),
    *project_urlpatterns,
]
