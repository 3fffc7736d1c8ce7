"""GET /metrics: Prometheus text format, from the database (see llm/prometheus.py)."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from llm import prometheus


def _authorised(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True
    given = request.headers.get("Authorization", "")
    # Constant-time comparison: the token must not leak through response timing.
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Plain Django view, not DRF: Prometheus authenticates with METRICS_TOKEN only."""
    if not _authorised(request):
        response = JsonResponse({"error": "Missing or wrong bearer token (METRICS_TOKEN)."}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # The classic text format 0.0.4, which every Prometheus version (Debian's 2.x included) reads.
    return HttpResponse(generate_latest(prometheus.REGISTRY), content_type=CONTENT_TYPE_PLAIN_0_0_4)
