"""The audit log (llm/audit.py, django-auditlog): who created, changed or deleted alert rules, API
keys, prices, users, roles and dashboard settings, through the API or admin, with before and after."""

from __future__ import annotations

from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import Group, User
from django.contrib.contenttypes.models import ContentType
from rest_framework.test import APIClient

from llm.audit import HIDDEN, actor_label
from llm.models import AlertRule, APIKey, DashboardSettings, ModelPrice
from tests.factories import make_api_key

pytestmark = pytest.mark.django_db

RULES = "/api/alerts/rules/"
RULE = {
    "name": "Error rate above 5%",
    "metric_type": "error_rate",
    "threshold": 5,
    "time_window_minutes": 15,
    "cooldown_minutes": 60,
    "model_name": "",
    "email_recipients": "oncall@example.com",
}
CREATE, UPDATE, DELETE = LogEntry.Action.CREATE, LogEntry.Action.UPDATE, LogEntry.Action.DELETE


def entries_for(model) -> list[LogEntry]:
    content_type = ContentType.objects.get_for_model(model)
    return list(LogEntry.objects.filter(content_type=content_type).order_by("id"))


def test_an_api_key_creating_changing_and_deleting_a_rule_is_named_with_before_and_after():
    _, raw_key = make_api_key("ops-automation")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    created = client.post(RULES, RULE, format="json")
    assert created.status_code == 201, created.content
    rule_url = f"{RULES}{created.json()['id']}/"
    assert client.patch(rule_url, {"threshold": 9, "is_active": False}, format="json").status_code == 200
    assert client.delete(rule_url).status_code == 204

    create, update, delete = entries_for(AlertRule)
    assert [entry.action for entry in (create, update, delete)] == [CREATE, UPDATE, DELETE]
    for entry in (create, update, delete):
        assert entry.actor is None
        assert entry.additional_data == {"api_key": "ops-automation"}
        assert actor_label(entry) == 'API key "ops-automation"'
        assert entry.object_repr == "Error rate above 5%"
    assert create.changes["name"] == [None, "Error rate above 5%"]
    assert create.changes["threshold"] == [None, 5.0]
    # Only what changed, each as [before, after]; state written by alert checks is not audited.
    assert update.changes == {"threshold": [5.0, 9.0], "is_active": [True, False]}
    assert delete.changes["threshold"] == [9.0, None]
    assert delete.changes["email_recipients"] == ["oncall@example.com", None]
    # The correlation id is the request's X-Request-ID, as in the request log.
    assert len({entry.cid for entry in (create, update, delete)}) == 3


def test_the_correlation_id_is_the_answers_request_id(api_client):
    response = api_client.post(RULES, RULE, format="json")
    assert entries_for(AlertRule)[0].cid == response["X-Request-ID"]


def test_a_logged_in_user_through_the_api_is_the_actor(logged_in_client, staff_user):
    assert logged_in_client.post(RULES, RULE, format="json").status_code == 201
    (entry,) = entries_for(AlertRule)
    assert entry.actor == staff_user and entry.additional_data is None
    assert actor_label(entry) == "alice"


PRICE_FORM = {"provider": "groq", "effective_from_0": "2026-01-01", "effective_from_1": "00:00:00"}


def test_a_price_through_admin_is_audited_with_the_admin_user(admin_client, admin_user):
    add = admin_client.post(
        "/admin/llm/modelprice/add/",
        {**PRICE_FORM, "model_name": "new/model", "input_per_million": "0.25", "output_per_million": "1.5"},
    )
    assert add.status_code == 302, add.content.decode()[:2000]
    price = ModelPrice.objects.get(model_name="new/model")
    change = admin_client.post(
        f"/admin/llm/modelprice/{price.pk}/change/",
        {**PRICE_FORM, "model_name": "new/model", "input_per_million": "0.30", "output_per_million": "1.5"},
    )
    assert change.status_code == 302
    assert admin_client.post(f"/admin/llm/modelprice/{price.pk}/delete/", {"post": "yes"}).status_code == 302

    create, update, delete = entries_for(ModelPrice)
    assert [entry.action for entry in (create, update, delete)] == [CREATE, UPDATE, DELETE]
    assert {entry.actor for entry in (create, update, delete)} == {admin_user}
    assert create.changes["input_per_million"][0] is None
    assert Decimal(create.changes["input_per_million"][1]) == Decimal("0.25")
    assert list(update.changes) == ["input_per_million"]
    assert [Decimal(value) for value in update.changes["input_per_million"]] == [Decimal("0.25"), Decimal("0.30")]
    assert delete.changes["model_name"] == ["new/model", None]
    assert create.remote_addr == "127.0.0.1"


def test_dashboard_settings_through_admin(admin_client, admin_user):
    settings_row = DashboardSettings.load()
    form = {
        "error_rate_amber": "2",
        "error_rate_red": "7.5",
        "p95_latency_amber_ms": "3000",
        "p95_latency_red_ms": "8000",
        "cost_per_day_amber_usd": str(settings_row.cost_per_day_amber_usd),
        "cost_per_day_red_usd": "50",
    }
    response = admin_client.post(f"/admin/llm/dashboardsettings/{settings_row.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    update = entries_for(DashboardSettings)[-1]
    assert update.action == UPDATE and update.actor == admin_user
    assert update.changes == {"error_rate_red": [5.0, 7.5]}


def test_api_key_hashes_and_passwords_are_recorded_as_changed_never_as_values(admin_client, admin_user):
    api_key, raw_key = APIKey.generate("billing")
    api_key.revoke()
    create, revoke = entries_for(APIKey)
    assert create.changes["key_hash"] == ["", HIDDEN]
    assert create.changes["name"] == [None, "billing"]
    assert list(revoke.changes) == ["revoked_at"]
    user = User.objects.create_user("bob", password="first-password")
    user.set_password("second-password")
    user.save()
    user_entries = entries_for(User)
    assert user_entries[-1].changes == {"password": [HIDDEN, HIDDEN]}
    stored = " ".join(str(entry.changes) for entry in LogEntry.objects.all())
    assert api_key.key_hash not in stored and raw_key not in stored and "pbkdf2" not in stored and "md5" not in stored


def test_roles_created_and_given_through_admin(admin_client, admin_user):
    # The four roles exist already (migration 0012): a team's own group.
    assert admin_client.post("/admin/auth/group/add/", {"name": "On-call"}).status_code == 302
    group = Group.objects.get(name="On-call")
    (group_created,) = entries_for(Group)
    assert group_created.action == CREATE and group_created.actor == admin_user
    assert group_created.changes["name"] == [None, "On-call"]

    bob = User.objects.create_user("bob", password="pw")
    form = {
        "username": "bob",
        "is_active": "on",
        "groups": [str(group.pk)],
        "last_login_0": "",
        "last_login_1": "",
        "date_joined_0": bob.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": bob.date_joined.strftime("%H:%M:%S"),
    }
    response = admin_client.post(f"/admin/auth/user/{bob.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert list(bob.groups.all()) == [group]
    given = [entry for entry in entries_for(User) if entry.object_id == bob.pk and "groups" in entry.changes]
    assert len(given) == 1
    assert given[0].actor == admin_user
    assert given[0].changes["groups"] == {"type": "m2m", "operation": "add", "objects": ["On-call"]}


def test_the_audit_log_is_listed_read_only_in_admin(admin_client, api_client):
    api_client.post(RULES, RULE, format="json")
    listing = admin_client.get("/admin/auditlog/logentry/")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "Error rate above 5%" in page
    assert "API key &quot;tests&quot;" in page
    assert admin_client.get("/admin/auditlog/logentry/add/").status_code == 403
    (entry,) = entries_for(AlertRule)
    detail = admin_client.post(f"/admin/auditlog/logentry/{entry.pk}/change/", {"object_repr": "rewritten"})
    assert detail.status_code == 403
    entry.refresh_from_db()
    assert entry.object_repr == "Error rate above 5%"
    # Hostile lookups are sent back to the list, as on every admin list.
    assert admin_client.get("/admin/auditlog/logentry/", {"object_repr": "a\x00b"}).status_code in (200, 302)
