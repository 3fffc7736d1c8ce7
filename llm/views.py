"""The dashboard pages: server-rendered, behind login, reading figures through llm.dashboard.

Every logged-in user sees the dashboards (the `read` right); the rest follows llm/permissions.py:
prompt and response text, search and export need the Analyst role, rating calls too, the playground
and changing alerting the Operator role. A page shows a feature the user may not use disabled, with
the role it needs (`access` in every page's context); a direct request answers a plain 403 page."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from rest_framework.exceptions import ValidationError

from llm import alert_history as alert_history_module
from llm import alerts, dashboard, formatting, metrics, notifiers, providers, traces
from llm.alert_preview import DAYS_MAX
from llm.filters import search_logs
from llm.forms import AlertRuleForm, FeedbackForm, SilenceForm
from llm.ingest_limits import SESSION_ID_MAX_CHARS, USER_ID_MAX_CHARS, text_problem
from llm.models import AlertLog, AlertRule, DashboardSettings, LLMRequestLog, NotificationChannel, UserFeedback
from llm.paging import EstimatingPaginator
from llm.permissions import access_for, refused_page, requires_right
from llm.traces import normal_trace_id

LOGS_PER_PAGE = 50
LOG_FILTERS = ("status", "user_id", "search", "session_id", "source", "error_type", "tag")


def page(
    request: HttpRequest,
    template: str,
    window: dashboard.TimeRange | None,
    *,
    settings_row: DashboardSettings | None = None,
    **context,
) -> HttpResponse:
    """Render with what every page's filter bar needs. `settings_row`: DashboardSettings as the
    page already read it (the overview's thresholds), so an unchanged origin costs no query."""
    # Alert notices link to where the dashboard is really served when SITE_URL is empty.
    origin = notifiers.request_origin(request)
    if settings_row is None or settings_row.served_origin != origin:
        DashboardSettings.remember_origin(origin)
    context.setdefault("access", access_for(request.user))
    if window is not None:
        context |= {
            "window": window,
            "ranges": dashboard.RANGE_LABELS,
            "model_names": dashboard.model_choices(),
            "auto_refresh_seconds": dashboard.AUTO_REFRESH_SECONDS,
            "refresh_seconds": dashboard.AUTO_REFRESH_SECONDS if request.GET.get("refresh") else None,
            "sources": LLMRequestLog.Source.values,
            "error_types": LLMRequestLog.ErrorType.values,
        }
    return render(request, template, context)


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    window = dashboard.time_range(request.GET)
    with metrics.aggregate_queries():
        data = dashboard.overview(window)
    series = data["series"]
    charts = {
        # One set of columns over time for the traffic, tokens and latency charts and the cards'
        # sparklines (each names its column): labels, calls and partial flags sent once, not per chart.
        "periods": dashboard.chart_series(series, *dashboard.PERIOD_COLUMNS),
        "cost_by_model": dashboard.chart_series(data["cost_by_model"], "cost"),
        "sparks": {spec.key: spec.series for spec in dashboard.CARDS},
    }
    has_any_logs = data["figures"]["total_requests"] > 0 or LLMRequestLog.objects.exists()
    settings_row = data.pop("dashboard_settings")
    context = {**data, "charts": charts, "has_any_logs": has_any_logs}
    return page(request, "dashboard/overview.html", window, settings_row=settings_row, **context)


@login_required
def analytics(request: HttpRequest) -> HttpResponse:
    window = dashboard.time_range(request.GET, extra_keys=dashboard.PAGE_FILTERS)
    by, order_by = dashboard.breakdown_choice(request.GET, window)
    with metrics.aggregate_queries():
        chosen = dashboard.analytics_shared(window)
        data = dashboard.analytics(window, chosen) | dashboard.breakdown(window, by, order_by, chosen)
    charts = {
        "models": dashboard.chart_series(
            data["models"],
            "requests",
            "cost",
            "error_rate",
            "p50_latency_ms",
            "p95_latency_ms",
            "p99_latency_ms",
            "total_tokens",
        ),
        "daily": dashboard.chart_series(data["daily"], "requests", "errors", "cost"),
        "breakdown": data["breakdown_chart"],
    }
    return page(request, "dashboard/analytics.html", window, **data, charts=charts, more_filters=True)


@login_required
def logs(request: HttpRequest) -> HttpResponse:
    window = dashboard.time_range(request.GET, extra_keys=LOG_FILTERS)
    sort = request.GET.get("sort") or "newest"
    if sort not in dashboard.LOG_SORTS:
        window.errors["sort"] = [f"Choose one of {', '.join(dashboard.LOG_SORTS)}."]
        sort = "newest"
    if sort != "newest":
        window.options["sort"] = sort
    access = access_for(request.user)
    query = request.GET
    if query.get("search") and not access.read_text:
        # Which calls match a word tells what their text holds: not searched, and said why.
        window.errors["search"] = [f"Searching the text: {access.reason['read_text']}"]
        query = query.copy()
        query.pop("search")
    try:
        rows = search_logs(window.logs(), query).order_by(*dashboard.LOG_SORTS[sort][1])
        page_obj = EstimatingPaginator(rows, LOGS_PER_PAGE).get_page(request.GET.get("page"))
    except ValidationError as error:
        # A bad status or search, or a search that did not finish in time (llm.paging.SearchTooLong):
        # said above an empty table, not a 500.
        window.errors |= {name: [str(message) for message in problems] for name, problems in error.detail.items()}
        page_obj = EstimatingPaginator(LLMRequestLog.objects.none(), LOGS_PER_PAGE).get_page(1)
    return page(
        request,
        "dashboard/logs.html",
        window,
        page_obj=page_obj,
        statuses=LLMRequestLog.Status.choices,
        sorts={key: label for key, (label, _) in dashboard.LOG_SORTS.items()},
        sort=sort,
        has_any_logs=LLMRequestLog.objects.exists(),
        access=access,
    )


@login_required
def log_detail(request: HttpRequest, request_id) -> HttpResponse:
    access = access_for(request.user)
    if request.method == "POST" and not access.feedback:
        return refused_page(request, "feedback")
    logs = LLMRequestLog.objects.all()
    if not access.read_text:  # not even read: the template has nothing it could show by mistake
        logs = logs.defer("prompt_text", "response_text")
    log = get_object_or_404(logs, request_id=request_id)
    rater = request.user.get_username()
    mine = log.feedback.filter(rater=rater).first()
    initial = {"rating": mine.rating, "comment": mine.comment} if mine else None
    form = FeedbackForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        _, created = UserFeedback.objects.rate(log, rater, **form.cleaned_data)
        messages.success(request, "Thanks: your feedback is saved." if created else "Thanks: your rating is updated.")
        return redirect("log-detail", request_id=log.request_id)
    feedback = log.feedback.order_by("-created_at", "-id")
    return page(
        request, "dashboard/log_detail.html", None, log=log, form=form, feedback=feedback, mine=mine, access=access
    )


@login_required
def trace(request: HttpRequest, trace_id: str) -> HttpResponse:
    trace_id = normal_trace_id(trace_id)
    if trace_id is None:
        raise Http404("Not a trace id.")
    found = LLMRequestLog.objects.trace(trace_id)
    if not found:
        raise Http404("No call and no span with this trace id.")
    return page(
        request,
        "dashboard/trace.html",
        None,
        trace_id=trace_id,
        calls=found.calls,
        spans=found.spans,
        truncated=found.truncated,
        waterfall=traces.waterfall(found),
        width=traces.WATERFALL_WIDTH,
    )


@login_required
def feedback(request: HttpRequest) -> HttpResponse:
    window = dashboard.time_range(request.GET)
    figures = dashboard.feedback(window)
    summary, by_day, comments = figures["summary"], figures["by_day"], figures["comments"]
    charts = {
        "by_day": {
            "labels": [row["day"] for row in by_day],
            "satisfaction_rate": [row["satisfaction_rate"] for row in by_day],
            "thumbs_up": [row["thumbs_up"] for row in by_day],
            "thumbs_down": [row["thumbs_down"] for row in by_day],
            "ratings": [row["total"] for row in by_day],
        },
        "by_model": dashboard.chart_series(summary["by_model"], "satisfaction_rate"),
    }
    return page(
        request, "dashboard/feedback.html", window, summary=summary, by_day=by_day, charts=charts, comments=comments
    )


@login_required
def alerts_page(request: HttpRequest) -> HttpResponse:
    # Each rule measured now, as check_alerts would, without writing anything: one query for all.
    now = timezone.now()
    evaluations = alerts.evaluate_rules(AlertRule.objects.order_by("name").with_channels_and_silences(now), now)
    links = RuleLinks()
    rules = [rule_row(evaluation, links) for evaluation in evaluations]
    triggered = AlertLog.objects.select_related("alert_rule", "acknowledged_by").order_by("-triggered_at", "-id")
    return page(
        request,
        "dashboard/alerts.html",
        None,
        rules=rules,
        triggered=triggered[:50],
        unacknowledged=triggered.filter(acknowledged=False).count(),
        failing_channels=NotificationChannel.objects.filter(is_active=True).failing(),
        silence_form=SilenceForm(),
    )


class RuleLinks:
    """A rule's links (its history, form, actions and admin page), each name reversed once per
    page with a placeholder id that each rule's id then replaces: a reverse() costs 50-250 µs, and
    the alerts page links each rule up to seven times (25 rules: 144 reverses, 10-35 ms)."""

    NAMES = {
        "history": "alert-history",
        "edit": "alert-rule-edit",
        "check": "alert-rule-check",
        "test": "alert-rule-test",
        "silence": "alert-rule-silence",
        "unsilence": "alert-rule-unsilence",
        "admin": "admin:llm_alertrule_change",
    }
    # An id no rule has (the largest of a 32-bit key); none of these paths holds its digits otherwise.
    PLACEHOLDER = str(2**31 - 1)

    def __init__(self) -> None:
        self.patterns = {key: reverse(name, args=[self.PLACEHOLDER]) for key, name in self.NAMES.items()}

    def of(self, pk: int) -> dict[str, str]:
        return {key: pattern.replace(self.PLACEHOLDER, str(pk)) for key, pattern in self.patterns.items()}


def rule_row(evaluation: alerts.Evaluation, links: RuleLinks | None = None) -> dict:
    """What the alerts page and a rule's history page show of a rule (its silences prefetched)."""
    rule = evaluation.rule
    silences = getattr(rule, "active_silences", None)
    silence = silences[0] if silences else (None if silences is not None else rule.active_silence())
    return {
        "rule": rule,
        "evaluation": evaluation,
        "value": formatting.rule_value(rule.metric_type, evaluation.value),
        "threshold": formatting.rule_value(rule.metric_type, rule.threshold),
        "warning": formatting.rule_value(rule.metric_type, rule.warning_threshold)
        if rule.warning_threshold is not None
        else "",
        "channels": notifiers.channel_states(rule),
        "silence": silence,
        "links": (links or RuleLinks()).of(rule.pk),
    }


@login_required
def alert_history(request: HttpRequest, pk: int) -> HttpResponse:
    """One rule's timeline: fired, resolved, acknowledged, muted and unmuted, each notice's delivery."""
    now = timezone.now()
    rule = get_object_or_404(AlertRule.objects.with_channels_and_silences(now), pk=pk)
    (evaluation,) = alerts.evaluate_rules([rule], now)
    return page(
        request,
        "dashboard/alert_history.html",
        None,
        item=rule_row(evaluation),
        events=alert_history_module.timeline(rule, now),
        notices_shown=alert_history_module.HISTORY_NOTICES,
        silence_form=SilenceForm(),
    )


@requires_right("manage")
@require_POST
def alert_rule_silence(request: HttpRequest, pk: int) -> HttpResponse:
    """Mute a rule for a while, with why (the alerts page's and history page's form)."""
    rule = get_object_or_404(AlertRule, pk=pk)
    form = SilenceForm(request.POST)
    if form.is_valid():
        until = timezone.now() + timedelta(minutes=form.cleaned_data["minutes"])
        rule.silence(until, form.cleaned_data["reason"], request.user)
        messages.success(request, f"Muted {rule.name} until {timezone.localtime(until):%Y-%m-%d %H:%M}.")
    else:
        problems = "; ".join(f"{name}: {' '.join(errors)}" for name, errors in form.errors.items())
        messages.error(request, f"{rule.name} not muted: {problems}")
    return redirect(back_to(request, rule))


@requires_right("manage")
@require_POST
def alert_rule_unsilence(request: HttpRequest, pk: int) -> HttpResponse:
    rule = get_object_or_404(AlertRule, pk=pk)
    if rule.unsilence(request.user):
        messages.success(request, f"Unmuted {rule.name}: its notices are sent again.")
    return redirect(back_to(request, rule))


def back_to(request: HttpRequest, rule: AlertRule) -> str:
    # The form says where it was: the history page, or the alerts page (the default).
    return reverse("alert-history", args=[rule.pk]) if request.POST.get("next") == "history" else reverse("alerts")


@requires_right("manage")
@require_POST
def acknowledge_alert(request: HttpRequest, pk: int) -> HttpResponse:
    alert = get_object_or_404(AlertLog, pk=pk)
    if alert.acknowledge(request.user):
        messages.success(request, f"Acknowledged: {alert.alert_rule.name}.")
    return redirect("alerts")


@requires_right("manage")
@require_POST
def alert_rule_test(request: HttpRequest, pk: int) -> HttpResponse:
    """Send a test notification through the rule's channels; the result comes back as a message."""
    rule = get_object_or_404(AlertRule, pk=pk)
    base = notifiers.base_url(notifiers.request_origin(request))
    try:
        result = alerts.send_test_notification(rule, timezone.now(), base)
    except alerts.NoChannel as exc:
        messages.error(request, f"{rule.name}: {exc}.")
        return redirect("alerts")
    level = messages.SUCCESS if result.all_sent else messages.ERROR
    messages.add_message(request, level, f"Test notification for {rule.name}: {result.summary}.")
    return redirect("alerts")


@requires_right("manage")
@require_POST
def alert_rule_check(request: HttpRequest, pk: int) -> HttpResponse:
    """Evaluate one rule now, as `check_alerts --rule ID` does (state, notice, cooldown)."""
    rule = get_object_or_404(AlertRule, pk=pk)
    if not rule.is_active:
        messages.error(request, f"{rule.name} is inactive: activate it to check it.")
        return redirect("alerts")
    # A notice this check writes is sent in this request, because the user asked for the check;
    # the SMTP timeout and the webhook's timeout and bounded tries keep the wait short.
    run = alerts.check_rules([rule], timezone.now(), base=notifiers.base_url(notifiers.request_origin(request)))
    for _, error in run.failures:
        messages.error(request, f"{rule.name}: could not evaluate: {error}")
    for outcome in run.outcomes:
        level = {True: messages.WARNING, False: messages.SUCCESS}.get(outcome.evaluation.breached, messages.INFO)
        messages.add_message(request, level, f"Checked now: {outcome.summary()}")
    for alert in run.deliveries:
        messages.info(request, f"Sent {alerts.delivery_summary(alert)}")
    return redirect("alerts")


@requires_right("manage")
def alert_rule_form(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    """Create or edit a rule, with its preview on past days drawn as it is edited (the JS of the
    page asks POST /api/alerts/rules/preview/ with the form's fields)."""
    rule = get_object_or_404(AlertRule, pk=pk) if pk is not None else None
    form = AlertRuleForm(request.POST or None, instance=rule)
    if request.method == "POST" and form.is_valid():
        saved = form.save()
        messages.success(request, f"Saved rule {saved.name}.")
        return redirect("alerts")
    return page(
        request,
        "dashboard/alert_rule_form.html",
        None,
        form=form,
        rule=rule,
        preview_days=[1, 7, DAYS_MAX],
        charts={},
    )


@requires_right("prompt")
def playground(request: HttpRequest) -> HttpResponse:
    return page(
        request,
        "dashboard/playground.html",
        None,
        # What can be called (each provider's priced models), not what was seen in the logs.
        providers=providers.playground_providers(),
        default_model=settings.GROQ_DEFAULT_MODEL,
    )


@login_required
def sessions(request: HttpRequest) -> HttpResponse:
    window = dashboard.time_range(request.GET, extra_keys=dashboard.PAGE_FILTERS)
    order_by = request.GET.get("order_by") or "last_call"
    if order_by not in metrics.SESSION_ORDERS:
        window.errors["order_by"] = [f"Choose one of {', '.join(metrics.SESSION_ORDERS)}."]
        order_by = "last_call"
    if order_by != "last_call":
        window.options["order_by"] = order_by
    with metrics.aggregate_queries():
        page_obj = dashboard.sessions_page(window, order_by, request.GET.get("page"))
        page_obj.object_list = list(page_obj.object_list)  # read within: the rows are summed now
    return page(
        request,
        "dashboard/sessions.html",
        window,
        page_obj=page_obj,
        order_by=order_by,
        orders=dashboard.SESSION_ORDER_LABELS,
        more_filters=True,
    )


def storable_id(value: str, max_chars: int) -> str:
    """A session or user id from the path, or a 404: none longer than the column, or holding what
    the database cannot compare (NUL, a lone surrogate), was ever stored."""
    if len(value) > max_chars or text_problem(value):
        raise Http404("No such id.")
    return value


@login_required
def session(request: HttpRequest, session_id: str) -> HttpResponse:
    storable_id(session_id, SESSION_ID_MAX_CHARS)
    found = dashboard.session(session_id, with_text=access_for(request.user).read_text)
    if not found["calls"]:
        raise Http404("No call with this session id.")
    return page(request, "dashboard/session.html", None, session_id=session_id, **found)


@login_required
def user(request: HttpRequest, user_id: str) -> HttpResponse:
    storable_id(user_id, USER_ID_MAX_CHARS)
    window = dashboard.time_range(request.GET)
    window.extra["user_id"] = user_id
    with metrics.aggregate_queries():
        data = dashboard.user_page(window)
    charts = data.pop("charts")
    return page(request, "dashboard/user.html", window, user_id=user_id, **data, charts=charts)
