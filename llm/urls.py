from django.urls import path

from llm.api import ingest, prompt

urlpatterns = [
    # Proxy
    path("api/llm/prompt/", prompt.PromptView.as_view(), name="api-prompt"),
    # Metrics, logs, feedback, export (issue 3)
    # Alerts (issue 4)
    # Ingest: events API and OTLP (issue 6)
    path("api/events/", ingest.EventsView.as_view(), name="api-events"),
    path("v1/traces", ingest.otlp_traces, name="otlp-traces"),
    path("api/traces/<str:trace_id>/", ingest.TraceView.as_view(), name="api-trace"),
    # Prometheus (issue 7)
    # Dashboard pages (issue 5)
]
