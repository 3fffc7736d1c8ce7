"""GET /metrics: Prometheus text format, from the database (see llm/prometheus.py)."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from llm import prometheus
from llm.auth import api_key_from


def bearer_credential(request: HttpRequest) -> str:
    """What follows `Bearer` in the Authorization header ("" when absent). The scheme is matched
    case-insensitively, as RFC 9110 (section 11.1) says of every authentication scheme."""
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


def authorised(request: HttpRequest) -> bool:
    """Open when no METRICS_TOKEN is set in development; otherwise the token or a valid API key.
    With DEBUG=False (METRICS_REQUIRE_AUTH) a credential is always needed: the figures name every
    model and alert rule."""
    token = settings.METRICS_TOKEN
    if not token and not settings.METRICS_REQUIRE_AUTH:
        return True
    credential = bearer_credential(request)
    if not credential:
        return False
    # Constant-time comparison: the token must not leak through response timing.
    if token and hmac.compare_digest(credential.encode(), token.encode()):
        return True
    # Or an API key allowed to read figures (a key that may only ingest or prompt may not).
    api_key = api_key_from(request)
    return api_key is not None and api_key.has_scope("read")


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Plain Django view, not DRF: Prometheus sends `Authorization: Bearer <METRICS_TOKEN>`."""
    if not authorised(request):
        response = JsonResponse({"error": "Missing or wrong bearer token (METRICS_TOKEN or an API key)."}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # The classic text format 0.0.4, which every Prometheus version (Debian's 2.x included) reads.
    return HttpResponse(generate_latest(prometheus.REGISTRY), content_type=CONTENT_TYPE_PLAIN_0_0_4)
