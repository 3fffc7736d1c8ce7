"""Who may do what: every URL of llm/urls.py x every role x every API-key scope, from one table.

A row says which right a URL needs and what a caller holding it gets; a caller without it gets
403 naming what is missing (API), a plain 403 page naming the role (pages), 401 or the login page
when anonymous. Rows marked `text` show prompt and response text: the literal strings must be in
the body for a caller with `read_text`, and absent for everyone else. The expectations come from
this file's own tables of roles and scopes, not from llm/permissions.py.

A URL added to llm/urls.py without a row here fails test_every_url_has_a_row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory, force_authenticate
from rest_framework.views import APIView

from llm import urls
from llm.models import APIKey, Budget
from llm.permissions import HasRight, MissingRight
from tests.factories import make_alert, make_api_key, make_feedback, make_log, make_rule, make_user

pytestmark = pytest.mark.django_db

PROMPT = "PROMPT-SECRET-7781"
RESPONSE = "RESPONSE-SECRET-3355"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SESSION_ID = "session-matrix"
USER_ID = "user-matrix"

# What each role may do (the list), and what each key scope grants.
TEXT_RIGHTS = {"read_text", "export", "feedback"}
ROLE_RIGHTS = {
    "Viewer": {"read"},
    "Analyst": {"read", *TEXT_RIGHTS},
    "Operator": {"read", *TEXT_RIGHTS, "prompt", "manage"},
    "Admin": {"read", *TEXT_RIGHTS, "prompt", "manage", "ingest"},
}
SCOPE_RIGHTS = {
    "ingest": {"ingest"},
    "prompt": {"prompt"},
    "read": {"read"},
    "read_text": {"read", *TEXT_RIGHTS},  # the text is read on its logs
    "manage": {"manage"},
}
ALL_RIGHTS = set().union(*ROLE_RIGHTS.values())
# Callers: (kind, name); kind is anonymous, user, superuser or key.
CALLERS = [
    ("anonymous", ""),
    *[("user", role) for role in ROLE_RIGHTS],
    ("superuser", "root"),
    *[("key", scope) for scope in SCOPE_RIGHTS],
    ("key", "all"),
]

ANYONE_LOGGED_IN = "any"  # schema and docs: any user or key, as before roles existed
PUBLIC = "public"  # no credentials at all


@dataclass(frozen=True)
class Row:
    name: str
    method: str
    right: str
    ok: int  # the status for a caller with the right
    body: dict | str | None = None
    query: dict = field(default_factory=dict)
    text: bool = False  # shows prompt and response text to a caller with read_text
    page: bool = False  # a dashboard page (login, 403 page) rather than the API
    keys_only: bool = False  # /v1/traces: an API key or nothing
    callers: tuple[tuple[str, str], ...] | None = None  # a subset, where every caller is alike (and slow)

    @property
    def label(self) -> str:
        return f"{self.method} {self.name}{'?' + '&'.join(self.query) if self.query else ''}"


BUDGET = {"name": "budget from the matrix", "scope": "all", "period": "month", "amount_usd": 25}
RULE = {"name": "rule from the matrix", "metric_type": "error_rate", "threshold": 10}
EVENT = {"model": "llama-3.1-8b-instant", "prompt_tokens": 3, "completion_tokens": 2, "latency_ms": 10}
WINDOW = {"hours": "48"}

TABLE = [
    Row("api-prompt", "POST", "prompt", 503, {"prompt": "hi"}),  # no provider key in tests: 503, and logged
    *[
        Row(name, "GET", "read", 200)
        for name in [
            "api-metrics-overview",
            "api-metrics-token-usage",
            "api-metrics-latency",
            "api-metrics-errors",
            "api-metrics-model-usage",
            "api-metrics-daily-stats",
            "api-metrics-timeseries",
            "api-feedback-analytics",
            "api-alert-rules",
            "api-alert-rule",
            "api-alert-logs",
            "api-trace",
        ]
    ],
    Row("api-logs", "GET", "read", 200, text=True),
    Row("api-logs", "GET", "read_text", 200, query={"search": "SECRET"}, text=True),
    Row("api-logs-errors", "GET", "read", 200, text=True),
    Row("api-log", "GET", "read", 200, text=True),
    Row("api-feedback", "GET", "read", 200),
    Row("api-feedback", "POST", "feedback", 201, "feedback"),
    Row("api-export-csv", "GET", "export", 200, text=True),
    Row("api-export-json", "GET", "export", 200, text=True),
    # Building the document is slow, and roles do not change it: one caller of each kind.
    Row("api-schema", "GET", ANYONE_LOGGED_IN, 200, callers=(("anonymous", ""), ("user", "Viewer"), ("key", "ingest"))),
    Row("api-docs", "GET", ANYONE_LOGGED_IN, 200),
    Row("api-alert-rules", "POST", "manage", 201, RULE),
    Row("api-alert-rule", "PUT", "manage", 200, RULE),
    Row("api-alert-rule", "PATCH", "manage", 200, {"threshold": 20}),
    Row("api-alert-rule", "DELETE", "manage", 204),
    Row("api-alert-rule-test", "POST", "manage", 400),  # the rule has no channel
    Row("api-alert-rule-check", "POST", "manage", 200),
    Row("api-alert-rule-preview", "POST", "read", 200, {**RULE, "days": 1, "step_minutes": 60}),
    Row("api-alert-acknowledge", "POST", "manage", 200),
    Row("api-alert-rule-silence", "POST", "manage", 201, {"minutes": 30, "reason": "deploy"}),
    Row("api-alert-rule-silence", "DELETE", "manage", 200),
    Row("api-events", "POST", "ingest", 201, EVENT),
    Row("api-metrics-forecast", "GET", "read", 200),
    Row("api-metrics-breakdown", "GET", "read", 200),
    Row("api-sessions", "GET", "read", 200),
    Row("api-session", "GET", "read_text", 200, text=True),
    Row("api-users", "GET", "read", 200),
    Row("api-user", "GET", "read", 200),
    Row("api-budgets", "GET", "read", 200),
    Row("api-budgets", "POST", "manage", 201, BUDGET),
    Row("api-budget", "GET", "read", 200),
    Row("api-budget", "PUT", "manage", 200, BUDGET),
    Row("api-budget", "PATCH", "manage", 200, {"amount_usd": 20}),
    Row("api-budget", "DELETE", "manage", 204),
    Row("otlp-traces", "POST", "ingest", 200, "{}", keys_only=True),
    Row("metrics", "GET", PUBLIC, 200),
    Row("health", "GET", PUBLIC, 200),
    # Pages
    Row("overview", "GET", "read", 200, text=True, page=True),
    Row("analytics", "GET", "read", 200, page=True),
    Row("logs", "GET", "read", 200, query=WINDOW, text=True, page=True),
    # Without read_text the search is not run (the page says why) and no text shows.
    Row("logs", "GET", "read", 200, query={**WINDOW, "search": "SECRET"}, text=True, page=True),
    Row("log-detail", "GET", "read", 200, text=True, page=True),
    Row("log-detail", "POST", "feedback", 302, {"rating": "thumbs_up", "comment": ""}, page=True),
    Row("trace", "GET", "read", 200, page=True),
    Row("feedback", "GET", "read", 200, page=True),
    Row("alerts", "GET", "read", 200, page=True),
    Row("alert-acknowledge", "POST", "manage", 302, {}, page=True),
    Row("alert-rule-test", "POST", "manage", 302, {}, page=True),
    Row("alert-rule-check", "POST", "manage", 302, {}, page=True),
    Row("alert-history", "GET", "read", 200, page=True),
    Row("alert-rule-new", "GET", "manage", 200, page=True),
    Row("alert-rule-edit", "GET", "manage", 200, page=True),
    Row("alert-rule-silence", "POST", "manage", 302, {"minutes": 60, "reason": "deploy"}, page=True),
    Row("alert-rule-unsilence", "POST", "manage", 302, {}, page=True),
    Row("playground", "GET", "prompt", 200, page=True),
    Row("sessions", "GET", "read", 200, page=True),
    Row("session", "GET", "read", 200, text=True, page=True),
    Row("user", "GET", "read", 200, page=True),
]


@pytest.fixture
def world(db):
    """One small data set: two calls with secret text (one failed, in a trace), a rating, a rule
    that fired; a user per role, a superuser, a key per scope and one with all."""
    now = timezone.now()
    secret = {
        "prompt_text": PROMPT,
        "response_text": RESPONSE,
        "prompt_tokens": 5,
        "completion_tokens": 7,
        "session_id": SESSION_ID,
        "user_id": USER_ID,
    }
    make_log(timestamp=now - timedelta(minutes=5), **secret)
    failed = make_log(
        timestamp=now - timedelta(minutes=3), status="error", trace_id=TRACE_ID, span_id="a" * 16, **secret
    )
    make_feedback(failed, comment="useful", rater="someone")
    rule = make_rule(name="errors over 5%")
    alert = make_alert(rule)
    callers = {}
    for kind, name in CALLERS:
        if kind == "user":
            callers[(kind, name)] = make_user(name.lower(), name)
        elif kind == "superuser":
            callers[(kind, name)] = make_user(name, is_staff=True, is_superuser=True)
        elif kind == "key":
            callers[(kind, name)] = make_api_key(name, APIKey.ALL_SCOPES if name == "all" else name)[1]
    kwargs = {
        "request_id": failed.request_id,
        "trace_id": TRACE_ID,
        "pk": rule.pk,
        "session_id": SESSION_ID,
        "user_id": USER_ID,
    }
    budget = Budget.objects.create(name="all spend", amount_usd=10)
    return {
        "callers": callers,
        "kwargs": kwargs,
        "alert": alert,
        "budget": budget,
        "request_id": str(failed.request_id),
    }


def rights_of(kind: str, name: str) -> set[str]:
    if kind == "user":
        return ROLE_RIGHTS[name]
    if kind == "superuser":
        return ALL_RIGHTS
    if kind == "key":
        return set().union(*SCOPE_RIGHTS.values()) if name == "all" else SCOPE_RIGHTS[name]
    return set()


def expected_status(row: Row, kind: str, name: str) -> int:
    if row.right == PUBLIC:
        return row.ok
    as_user = kind in ("user", "superuser")
    if row.page:
        return (row.ok if row.right in rights_of(kind, name) else 403) if as_user else 302
    if kind == "anonymous" or (row.keys_only and as_user):
        return 302 if row.name == "api-docs" else 401
    if row.right == ANYONE_LOGGED_IN or row.right in rights_of(kind, name):
        return row.ok
    return 403


def client_for(world: dict, kind: str, name: str) -> APIClient:
    client = APIClient()
    if kind in ("user", "superuser"):
        client.force_login(world["callers"][(kind, name)])
    elif kind == "key":
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {world['callers'][(kind, name)]}")
    return client


def send(client: APIClient, row: Row, world: dict):
    pattern = next(pattern for pattern in urls.urlpatterns if pattern.name == row.name)
    kwargs = {key: world["kwargs"][key] for key in pattern.pattern.converters}
    if row.name == "alert-acknowledge" or row.name == "api-alert-acknowledge":
        kwargs = {"pk": world["alert"].pk}
    if row.name == "api-budget":
        kwargs = {"pk": world["budget"].pk}
    path = reverse(row.name, kwargs=kwargs)
    body = {"request_id": world["request_id"], "rating": "thumbs_up"} if row.body == "feedback" else row.body
    if row.method == "GET":
        return client.get(path, row.query)
    if isinstance(body, str):
        return client.generic(row.method, path, body, content_type="application/json")
    if row.page:
        return client.post(path, body or {})
    return client.generic(row.method, path, json.dumps(body or {}), content_type="application/json")


def body_of(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode()
    return response.content.decode()


def check(row: Row, world: dict, kind: str, name: str) -> list[str]:
    """What is wrong with this caller's answer (nothing: [])."""
    with transaction.atomic():  # each caller sees the same data: a DELETE or acknowledge is undone
        response = send(client_for(world, kind, name), row, world)
        transaction.set_rollback(True)
    who = f"{kind} {name}".strip()
    want = expected_status(row, kind, name)
    text = body_of(response)
    problems = []
    if response.status_code != want:
        problems.append(f"{row.label} as {who}: {response.status_code}, expected {want}: {text[:200]}")
        return problems
    if want == 403 and row.keys_only:  # an OTLP google.rpc.Status
        if "“ingest”" not in json.loads(text)["message"]:
            problems.append(f"{row.label} as {who}: 403 names no scope: {text}")
    elif want == 403 and not row.page:
        answer = json.loads(text)
        missing = answer.get("missing", "")
        if kind == "key" and missing not in SCOPE_RIGHTS:
            problems.append(f"{row.label} as {who}: 403 names no scope: {answer}")
        if kind == "user" and not (missing.startswith("llm.") and answer.get("role") in ROLE_RIGHTS):
            problems.append(f"{row.label} as {who}: 403 names no permission and role: {answer}")
    if want == 403 and row.page and not re.search(r"the (Viewer|Analyst|Operator|Admin) role", text):
        problems.append(f"{row.label} as {who}: the 403 page names no role")
    if not row.text and (PROMPT in text or RESPONSE in text):
        problems.append(f"{row.label} as {who}: text in an answer that never shows it")
    if row.text and want == 200:
        shown = PROMPT in text and RESPONSE in text if not row.page or row.name == "log-detail" else PROMPT in text
        hidden = PROMPT not in text and RESPONSE not in text
        if "read_text" in rights_of(kind, name) and not shown:
            problems.append(f"{row.label} as {who}: the text is missing")
        if "read_text" not in rights_of(kind, name) and not hidden:
            problems.append(f"{row.label} as {who}: the text shows")
    return problems


@pytest.mark.parametrize("row", TABLE, ids=lambda row: row.label)
def test_each_url_answers_each_caller_as_documented(world, row):
    problems = [problem for kind, name in row.callers or CALLERS for problem in check(row, world, kind, name)]
    assert problems == []


def test_every_url_has_a_row():
    named = {pattern.name for pattern in urls.urlpatterns if pattern.name}
    assert named - {row.name for row in TABLE} == set()
    # Every method a DRF view serves (HEAD and OPTIONS follow GET).
    for pattern in urls.urlpatterns:
        view = getattr(pattern.callback, "cls", None)
        if pattern.name and view is not None:
            served = {method.upper() for method in view.http_method_names if hasattr(view, method)}
            served -= {"HEAD", "OPTIONS"}
            assert served <= {row.method for row in TABLE if row.name == pattern.name}, pattern.name


def test_every_api_view_declares_its_right():
    """A view without `required_right` is refused to all but superusers: none may ship like that."""
    for pattern in urls.urlpatterns:
        view = getattr(pattern.callback, "cls", None)
        # The slash twins serve the same classes; the schema and docs have the schema's own permission.
        if view is None or pattern.name in (None, "api-schema", "api-docs"):
            continue
        declared = getattr(view, "required_right", None)
        assert declared, pattern.name
        rights = declared.values() if isinstance(declared, dict) else [declared]
        assert set(rights) <= ALL_RIGHTS, pattern.name


def test_an_undeclared_view_is_refused_to_all_but_superusers(world):
    class Undeclared(APIView):
        def get(self, request):
            raise AssertionError("not reached")

    def asked_by(user) -> Request:
        request = APIRequestFactory().get("/")
        force_authenticate(request, user=user)
        return Undeclared().initialize_request(request)

    with pytest.raises(MissingRight) as refused:
        HasRight().has_permission(asked_by(world["callers"][("user", "Admin")]), Undeclared())
    assert refused.value.detail["missing"] == "superuser"
    assert HasRight().has_permission(asked_by(world["callers"][("superuser", "root")]), Undeclared()) is True
