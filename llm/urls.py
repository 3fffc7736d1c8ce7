from django.urls import path

from llm.api import alerts, ingest, prometheus, prompt

urlpatterns = [
    # Proxy
    path("api/llm/prompt/", prompt.PromptView.as_view(), name="api-prompt"),
    # Metrics, logs, feedback, export (issue 3)
    # Alerts (issue 4)
    path("api/alerts/rules/", alerts.AlertRuleList.as_view(), name="api-alert-rules"),
    path("api/alerts/rules/<int:pk>/", alerts.AlertRuleDetail.as_view(), name="api-alert-rule"),
    path("api/alerts/logs/", alerts.AlertLogList.as_view(), name="api-alert-logs"),
    path("api/alerts/logs/<int:pk>/acknowledge/", alerts.AlertLogAcknowledge.as_view(), name="api-alert-acknowledge"),
    # Ingest: events API and OTLP (issue 6)
    path("api/events/", ingest.EventsView.as_view(), name="api-events"),
    path("v1/traces", ingest.otlp_traces, name="otlp-traces"),
    path("api/traces/<str:trace_id>/", ingest.TraceView.as_view(), name="api-trace"),
    # Prometheus (issue 7)
    path("metrics", prometheus.metrics, name="metrics"),
    # Dashboard pages (issue 5)
]
