"""GET /api/schema/ (OpenAPI 3) and /api/docs/ (Swagger UI from drf-spectacular-sidecar: no CDN)."""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.exceptions import NotAuthenticated
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


class SwaggerView(SpectacularSwaggerSplitView):
    """Swagger UI over the schema, with the schema's permission (SPECTACULAR_SETTINGS); its files
    come from drf-spectacular-sidecar through our static files. templates/api_docs.html adds the
    way back to the dashboard."""

    template_name = "api_docs.html"
    url_name = "api-schema"

    def handle_exception(self, exc: Exception) -> Response | HttpResponse:
        # A page, not an API answer: someone not logged in is sent to the login page.
        if isinstance(exc, NotAuthenticated):
            return redirect_to_login(self.request.get_full_path())
        return super().handle_exception(exc)
