"""GET /health/ for load balancers and orchestrators: 200 when the app and its database answer,
503 otherwise. No authentication and no data: it runs one `SELECT 1` and says only whether it worked."""

from __future__ import annotations

import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from llm.outage import RETRY_AFTER_SECONDS, UNAVAILABLE_ERRORS, describe

logger = logging.getLogger("llm.outage")


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except UNAVAILABLE_ERRORS as error:
        # The error's class only: its text names hosts and ports, and this answer is public.
        request.database_unavailable = error  # Django's own "Service Unavailable" line is left out
        logger.warning("Health check: database unavailable (%s)", describe(error))
        response = JsonResponse({"status": "unavailable", "database": type(error).__name__}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    return JsonResponse({"status": "ok"})
