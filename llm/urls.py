from django.urls import URLPattern, path

from llm import health, views
from llm.api import alerts, budgets, docs, export, feedback, ingest, logs, metrics, prometheus, prompt, sessions, traces


def with_and_without_slash(patterns: list[URLPattern]) -> list[URLPattern]:
    """Each pattern, then a twin that differs only by the trailing slash.

    API clients drop or add the slash freely, and CommonMiddleware's APPEND_SLASH cannot redirect a
    POST (with DEBUG it raises). The twin serves the same view with no name, so reverse() keeps
    giving the canonical form of SPEC, and stays out of the OpenAPI document (one path each).
    """
    twins = []
    for pattern in patterns:
        route = str(pattern.pattern)
        twin = route[:-1] if route.endswith("/") else f"{route}/"
        view = pattern.callback
        if hasattr(view, "cls"):  # a DRF view: the same class, left out of the schema
            view = view.cls.as_view(**{**view.initkwargs, "schema": None})
        twins.append(path(twin, view, pattern.default_args))
    return [*patterns, *twins]


# Everything under /api/, plus /v1/traces and /metrics.
api_urlpatterns = [
    # Proxy
    path("api/llm/prompt/", prompt.PromptView.as_view(), name="api-prompt"),
    # Metrics, logs, feedback, export
    path("api/metrics/overview/", metrics.OverviewView.as_view(), name="api-metrics-overview"),
    path("api/metrics/token-usage/", metrics.TokenUsageView.as_view(), name="api-metrics-token-usage"),
    path("api/metrics/latency/", metrics.LatencyView.as_view(), name="api-metrics-latency"),
    path("api/metrics/errors/", metrics.ErrorsView.as_view(), name="api-metrics-errors"),
    path("api/metrics/model-usage/", metrics.ModelUsageView.as_view(), name="api-metrics-model-usage"),
    path("api/metrics/daily-stats/", metrics.DailyStatsView.as_view(), name="api-metrics-daily-stats"),
    path("api/metrics/timeseries/", metrics.TimeseriesView.as_view(), name="api-metrics-timeseries"),
    path("api/metrics/forecast/", budgets.ForecastView.as_view(), name="api-metrics-forecast"),
    path("api/metrics/breakdown/", metrics.BreakdownView.as_view(), name="api-metrics-breakdown"),
    path("api/logs/", logs.LogList.as_view(), name="api-logs"),
    path("api/logs/errors/", logs.ErrorLogList.as_view(), name="api-logs-errors"),
    path("api/logs/<uuid:request_id>/", logs.LogDetail.as_view(), name="api-log"),
    path("api/sessions/", sessions.SessionList.as_view(), name="api-sessions"),
    # <path:>: a session or user id may hold "/" (ids come from clients).
    path("api/sessions/<path:session_id>/", sessions.SessionDetail.as_view(), name="api-session"),
    path("api/users/", sessions.UserList.as_view(), name="api-users"),
    path("api/users/<path:user_id>/", sessions.UserDetail.as_view(), name="api-user"),
    path("api/feedback/", feedback.FeedbackListCreate.as_view(), name="api-feedback"),
    path("api/feedback/analytics/", feedback.FeedbackAnalytics.as_view(), name="api-feedback-analytics"),
    path("api/export/csv/", export.CSVExport.as_view(), name="api-export-csv"),
    path("api/export/json/", export.JSONExport.as_view(), name="api-export-json"),
    path("api/schema/", docs.SchemaView.as_view(), name="api-schema"),
    path("api/docs/", docs.SwaggerView.as_view(), name="api-docs"),
    # Alerts
    path("api/alerts/rules/", alerts.AlertRuleList.as_view(), name="api-alert-rules"),
    path("api/alerts/rules/preview/", alerts.AlertRulePreview.as_view(), name="api-alert-rule-preview"),
    path("api/alerts/rules/<int:pk>/", alerts.AlertRuleDetail.as_view(), name="api-alert-rule"),
    path("api/alerts/rules/<int:pk>/test/", alerts.AlertRuleTest.as_view(), name="api-alert-rule-test"),
    path("api/alerts/rules/<int:pk>/check/", alerts.AlertRuleCheck.as_view(), name="api-alert-rule-check"),
    path("api/alerts/rules/<int:pk>/silence/", alerts.AlertRuleSilence.as_view(), name="api-alert-rule-silence"),
    path("api/alerts/logs/", alerts.AlertLogList.as_view(), name="api-alert-logs"),
    path("api/alerts/logs/<int:pk>/acknowledge/", alerts.AlertLogAcknowledge.as_view(), name="api-alert-acknowledge"),
    # Budgets
    path("api/budgets/", budgets.BudgetList.as_view(), name="api-budgets"),
    path("api/budgets/<int:pk>/", budgets.BudgetDetail.as_view(), name="api-budget"),
    # Ingest: events API and OTLP; reading a trace
    path("api/events/", ingest.EventsView.as_view(), name="api-events"),
    path("v1/traces", ingest.otlp_traces, name="otlp-traces"),
    path("api/traces/<str:trace_id>/", traces.TraceView.as_view(), name="api-trace"),
    # Prometheus
    path("metrics", prometheus.metrics, name="metrics"),
]

urlpatterns = [
    *with_and_without_slash(api_urlpatterns),
    # For load balancers: no auth, no data (llm/health.py).
    *with_and_without_slash([path("health/", health.health, name="health")]),
    # Dashboard pages
    path("", views.overview, name="overview"),
    path("analytics/", views.analytics, name="analytics"),
    path("logs/", views.logs, name="logs"),
    path("logs/<uuid:request_id>/", views.log_detail, name="log-detail"),
    path("traces/<str:trace_id>/", views.trace, name="trace"),
    path("sessions/", views.sessions, name="sessions"),
    path("sessions/<path:session_id>/", views.session, name="session"),
    path("users/<path:user_id>/", views.user, name="user"),
    path("feedback/", views.feedback, name="feedback"),
    path("alerts/", views.alerts_page, name="alerts"),
    path("alerts/<int:pk>/", views.alert_history, name="alert-history"),
    path("alerts/<int:pk>/acknowledge/", views.acknowledge_alert, name="alert-acknowledge"),
    path("alerts/rules/<int:pk>/silence/", views.alert_rule_silence, name="alert-rule-silence"),
    path("alerts/rules/<int:pk>/unsilence/", views.alert_rule_unsilence, name="alert-rule-unsilence"),
    path("alerts/rules/new/", views.alert_rule_form, name="alert-rule-new"),
    path("alerts/rules/<int:pk>/edit/", views.alert_rule_form, name="alert-rule-edit"),
    path("alerts/rules/<int:pk>/test/", views.alert_rule_test, name="alert-rule-test"),
    path("alerts/rules/<int:pk>/check/", views.alert_rule_check, name="alert-rule-check"),
    path("playground/", views.playground, name="playground"),
]
