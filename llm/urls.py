from django.urls import path

from llm.api import prompt

urlpatterns = [
    # Proxy
    path("api/llm/prompt/", prompt.PromptView.as_view(), name="api-prompt"),
    # Metrics, logs, feedback, export (issue 3)
    # Alerts (issue 4)
    # Ingest: events API and OTLP (issue 6)
    # Prometheus (issue 7)
    # Dashboard pages (issue 5)
]
