"""Roles and scoped keys outside the URL matrix (tests/test_access_matrix.py): the migration that
creates them, key expiry, create_api_key --scopes, and the admin screens by role."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from llm.models import APIKey
from llm.permissions import ROLES
from tests.factories import make_api_key, make_log, make_user

PROMPT = "PROMPT-SECRET-4410"
RESPONSE = "RESPONSE-SECRET-9021"


def bearer(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


# The roles as the database holds them.


@pytest.mark.django_db
def test_each_role_is_a_group_with_its_permissions_and_each_includes_the_one_before():
    held = {
        group.name: {
            f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")
        }
        for group in Group.objects.filter(name__in=ROLES)
    }
    assert set(held) == {"Viewer", "Analyst", "Operator", "Admin"}
    assert held["Viewer"] == set()
    assert {"llm.view_prompt_text", "llm.export_logs", "llm.give_feedback"} <= held["Analyst"]
    assert held["Analyst"] < held["Operator"] < held["Admin"]
    assert {"llm.use_playground", "llm.manage_alerting", "llm.change_alertrule"} <= held["Operator"] - held["Analyst"]
    assert {"llm.add_apikey", "llm.change_modelprice", "auth.change_user", "llm.change_dashboardsettings"} <= (
        held["Admin"] - held["Operator"]
    )


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_old_keys_every_scope_and_old_users_a_role():
    before, after = ("llm", "0011_user_totals"), ("llm", "0012_roles_and_key_scopes")
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate([before])
    try:
        old = executor.loader.project_state([before]).apps
        User, Key = old.get_model("auth", "User"), old.get_model("llm", "APIKey")
        User.objects.create(username="staff", is_staff=True)
        User.objects.create(username="reader")
        User.objects.create(username="gone", is_active=False)
        User.objects.create(username="root", is_staff=True, is_superuser=True)
        Key.objects.create(name="old", key_prefix="llmo_x", key_hash="a" * 64)
        Group.objects.filter(name__in=ROLES).delete()

        executor = MigrationExecutor(connection)
        executor.migrate([after])
        new = executor.loader.project_state([after]).apps
        roles = {
            user.username: sorted(user.groups.values_list("name", flat=True))
            for user in new.get_model("auth", "User").objects.all()
        }
        # Staff keep admin rights, other active users keep reading text; superusers need no group.
        assert roles == {"staff": ["Admin"], "reader": ["Analyst"], "gone": [], "root": []}
        assert new.get_model("llm", "APIKey").objects.get().scopes == "ingest,prompt,read,read_text,manage"
        analyst = new.get_model("auth", "Group").objects.get(name="Analyst")
        assert set(analyst.permissions.values_list("codename", flat=True)) == {
            name.split(".")[1] for name in ROLES["Analyst"]
        }
    finally:
        MigrationExecutor(connection).migrate(latest)


# Keys: scopes, expiry, the command.


@pytest.mark.django_db
def test_an_expired_key_answers_401_saying_so_and_a_live_one_works():
    api_key, raw_key = make_api_key("soon", "read", expires_at=timezone.now() + timedelta(hours=1))
    assert bearer(raw_key).get("/api/metrics/overview/").status_code == 200
    APIKey.objects.filter(pk=api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    from llm.auth import forget_keys

    forget_keys()  # the update() above bypasses the signal that empties the 5-second cache
    response = bearer(raw_key).get("/api/metrics/overview/")
    assert response.status_code == 401
    assert "expired" in response.json()["error"]
    # OTLP says it too.
    otlp = bearer(raw_key).post("/v1/traces", "{}", content_type="application/json")
    assert otlp.status_code == 401 and "expired" in otlp.json()["message"]


@pytest.mark.django_db
def test_a_key_without_a_scope_gets_403_naming_it():
    _, raw_key = make_api_key("events only", "ingest")
    response = bearer(raw_key).get("/api/logs/")
    assert response.status_code == 403
    assert response.json()["missing"] == "read"
    assert "read" in response.json()["error"]


@pytest.mark.django_db
def test_create_api_key_defaults_to_ingest_and_takes_scopes():
    out = io.StringIO()
    call_command("create_api_key", "events", stdout=out, stderr=io.StringIO())
    assert APIKey.authenticate(out.getvalue().strip()).scope_list == ["ingest"]
    out = io.StringIO()
    call_command("create_api_key", "reader", "--scopes", " read_text, read,read", stdout=out, stderr=io.StringIO())
    assert APIKey.authenticate(out.getvalue().strip()).scopes == "read,read_text"
    out = io.StringIO()
    call_command("create_api_key", "temp", "--scopes", "prompt", "--expires-in-days", "2", stdout=out, stderr=out)
    key = APIKey.objects.get(name="temp")
    assert timedelta(days=2) - (key.expires_at - timezone.now()) < timedelta(minutes=1)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("scopes", "message"),
    [("ingest,admin", "Unknown scope admin"), ("", "at least one scope"), ("read,wrtie", "Unknown scope wrtie")],
)
def test_create_api_key_refuses_a_bad_scope_and_stores_nothing(scopes, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_api_key", "x", "--scopes", scopes, stdout=io.StringIO(), stderr=io.StringIO())
    assert not APIKey.objects.exists()


# Admin screens by role.


@pytest.fixture
def logged_call(db):
    return make_log(prompt_text=PROMPT, response_text=RESPONSE, user_id="u-1")


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_viewer_has_no_admin_and_an_admin_manages_keys_and_users(logged_call):
    viewer = logged_in(make_user("viewer", "Viewer"))
    for path in ("/admin/", "/admin/llm/apikey/", "/admin/llm/llmrequestlog/", "/admin/auth/user/"):
        response = viewer.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), path
    admin = logged_in(make_user("boss", "Admin", is_staff=True))
    for path in ("/admin/llm/apikey/", "/admin/llm/modelprice/", "/admin/auth/user/", "/admin/llm/dashboardsettings/"):
        assert admin.get(path).status_code == 200, path
    assert PROMPT in admin.get(f"/admin/llm/llmrequestlog/{logged_call.pk}/change/").content.decode()
    # An Analyst on the staff reads the calls but cannot touch keys.
    analyst = logged_in(make_user("analyst", "Analyst", is_staff=True))
    assert analyst.get("/admin/llm/llmrequestlog/").status_code == 200
    assert analyst.get("/admin/llm/apikey/").status_code == 403


def test_admin_shows_and_searches_call_text_only_with_the_permission(logged_call):
    clerk = make_user("clerk", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_llmrequestlog"))
    client = logged_in(clerk)
    page = client.get(f"/admin/llm/llmrequestlog/{logged_call.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert PROMPT not in body and RESPONSE not in body and "u-1" in body
    # Searching for the text finds nothing; with the permission it finds the call.
    listing = client.get("/admin/llm/llmrequestlog/", {"q": "SECRET-4410"}).content.decode()
    assert str(logged_call.request_id) not in listing
    clerk.user_permissions.add(Permission.objects.get(codename="view_prompt_text"))
    client = logged_in(type(clerk).objects.get(pk=clerk.pk))
    listing = client.get("/admin/llm/llmrequestlog/", {"q": "SECRET-4410"}).content.decode()
    assert str(logged_call.pk) in re.findall(r"/admin/llm/llmrequestlog/(\d+)/change/", listing)
    assert RESPONSE in client.get(f"/admin/llm/llmrequestlog/{logged_call.pk}/change/").content.decode()


def test_admin_lists_which_keys_have_every_scope(admin_client):
    make_api_key("broad")
    make_api_key("narrow", "ingest")
    page = admin_client.get("/admin/llm/apikey/").content.decode()
    assert "all scopes" in page and "narrow" in page
    broad_only = admin_client.get("/admin/llm/apikey/", {"scopes": "all"}).content.decode()
    assert "broad" in broad_only and "narrow" not in broad_only
    limited = admin_client.get("/admin/llm/apikey/", {"scopes": "limited"}).content.decode()
    assert "narrow" in limited and ">broad<" not in limited


def test_a_superuser_made_by_ensure_admin_has_every_right(db, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "correct horse battery")
    call_command("ensure_admin", stdout=io.StringIO())
    client = Client()
    assert client.login(username="admin", password="correct horse battery")
    assert client.get("/playground/").status_code == 200
    assert client.get("/api/export/csv/").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_the_roles_come_back_with_their_permissions_after_a_flush():
    call_command("flush", "--noinput", verbosity=0)
    analyst = Group.objects.get(name="Analyst")
    assert set(analyst.permissions.values_list("content_type__app_label", "codename")) == {
        tuple(name.split(".")) for name in ROLES["Analyst"]
    }
