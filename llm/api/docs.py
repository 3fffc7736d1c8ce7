"""GET /api/schema/ (OpenAPI 3) and /api/docs/ (Swagger UI, vendored: no CDN)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from drf_spectacular.views import SpectacularAPIView
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from llm.api.params import DeclaredParameters


class SchemaView(DeclaredParameters, SpectacularAPIView):
    """The OpenAPI document; like the rest of the API it needs a session or an API key."""

    # ?format=json|yaml is DRF's; ?lang= translates the document.
    parameters = (OpenApiParameter("lang", OpenApiTypes.STR),)

    def handle_exception(self, exc: Exception) -> Response:
        # An error is JSON like everywhere in the API, not rendered as a YAML OpenAPI document.
        self.request.accepted_renderer, self.request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().handle_exception(exc)


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents `Authorization: Bearer <api key>` in the schema."""

    target_class = "llm.auth.APIKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API key made in admin or by create_api_key."}


@login_required
def api_docs(request: HttpRequest) -> HttpResponse:
    return render(request, "api_docs.html")
