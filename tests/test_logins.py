"""Failed logins (django-axes, llm/logins.py): LOGIN_FAILURE_LIMIT failures per user name or per
address lock the dashboard login and the admin login for LOGIN_LOCKOUT_MINUTES."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from axes.models import AccessAttempt
from django.test import Client, RequestFactory

from llm.logins import client_address
from tests.test_settings import PRODUCTION, build_settings

pytestmark = pytest.mark.django_db

DASHBOARD = "/accounts/login/"
ADMIN = "/admin/login/"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
LOCKED = "Too many failed logins; try again in 15 minutes."


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def log_in(url: str, username: str, password: str, address: str = "10.0.0.1"):
    # A fresh client each time: no session or cookie carries anything from one try to the next.
    return Client().post(url, {"username": username, "password": password}, REMOTE_ADDR=address)


def assert_locked(response) -> None:
    assert response.status_code == 429
    assert response["Retry-After"] == str(15 * 60)
    assert LOCKED in response.content.decode()


@pytest.mark.parametrize("url", [DASHBOARD, ADMIN])
def test_five_wrong_passwords_lock_the_user_name_for_fifteen_minutes(staff_user, clock, url, settings):
    assert settings.LOGIN_FAILURE_LIMIT == settings.AXES_FAILURE_LIMIT == 5
    # From five addresses: the user name alone is what locks, and the fifth failure says so.
    for attempt in range(4):
        wrong = log_in(url, "alice", "wrong", address=f"10.0.0.{attempt + 1}")
        assert wrong.status_code == 200
        assert LOCKED not in wrong.content.decode()
    assert_locked(log_in(url, "alice", "wrong", address="10.0.0.5"))
    assert sum(AccessAttempt.objects.filter(username="alice").values_list("failures_since_start", flat=True)) == 5
    # Now even the right password, from an address never seen, is refused.
    assert_locked(log_in(url, "alice", "secret-password", address="10.9.9.9"))
    clock.move_to(NOW + timedelta(minutes=14))
    assert_locked(log_in(url, "alice", "secret-password", address="10.9.9.9"))
    # Each try while locked out starts the 15 minutes again (axes' default), so the message stays true.
    clock.move_to(NOW + timedelta(minutes=14 + 15, seconds=1))
    assert log_in(url, "alice", "secret-password", address="10.9.9.9").status_code == 302


def test_one_address_trying_many_user_names_is_locked(staff_user, clock):
    statuses = [log_in(DASHBOARD, f"guess-{attempt}", "wrong", address="10.6.6.6").status_code for attempt in range(5)]
    assert statuses == [200, 200, 200, 200, 429]
    assert_locked(log_in(DASHBOARD, "alice", "secret-password", address="10.6.6.6"))
    # Alice, from her own address, is not.
    assert log_in(DASHBOARD, "alice", "secret-password", address="10.0.0.7").status_code == 302


def test_the_dashboard_lockout_page_is_the_login_form_with_the_message(staff_user, clock):
    for _ in range(5):
        log_in(DASHBOARD, "alice", "wrong")
    page = log_in(DASHBOARD, "alice", "wrong").content.decode()
    assert '<p class="error-box" role="alert">' + LOCKED + "</p>" in page
    assert "didn't match" not in page
    assert 'name="password"' in page


def test_the_admin_lockout_page_is_the_admin_login_with_the_message(staff_user, clock):
    for _ in range(5):
        log_in(ADMIN, "alice", "wrong")
    response = log_in(ADMIN, "alice", "wrong")
    page = response.content.decode()
    assert_locked(response)
    # admin's own login form, the message where a wrong password's error goes.
    assert 'id="login-form"' in page and 'action="/admin/login/"' in page
    errornote = page.index('class="errornote"')
    assert page.index(LOCKED) - errornote < 100


def test_fewer_failures_than_the_limit_then_a_success_start_the_count_again(staff_user, clock):
    for _ in range(4):
        log_in(DASHBOARD, "alice", "wrong")
    assert log_in(DASHBOARD, "alice", "secret-password").status_code == 302
    for _ in range(4):
        assert log_in(DASHBOARD, "alice", "wrong").status_code == 200
    assert log_in(DASHBOARD, "alice", "secret-password").status_code == 302


@pytest.mark.parametrize(
    ("proxies", "remote", "forwarded", "expected"),
    [
        (0, "192.0.2.1", "203.0.113.9", "192.0.2.1"),  # no proxy trusted: the header is the client's
        (1, "127.0.0.1", "203.0.113.9", "203.0.113.9"),  # nginx appended the real address
        (1, "127.0.0.1", "1.1.1.1, 203.0.113.9", "203.0.113.9"),  # a forged first entry is ignored
        (2, "127.0.0.1", "1.1.1.1, 203.0.113.9, 10.0.0.2", "203.0.113.9"),
        (1, "127.0.0.1", "", "127.0.0.1"),  # no header at all: the connection's address
    ],
)
def test_client_address_counts_only_the_trusted_proxies(settings, proxies, remote, forwarded, expected):
    settings.TRUSTED_PROXY_COUNT = proxies
    extra = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {}
    request = RequestFactory().post(DASHBOARD, REMOTE_ADDR=remote, **extra)
    assert client_address(request) == expected


def test_behind_a_proxy_each_client_address_is_counted_apart(staff_user, clock, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    for attempt in range(5):
        Client().post(
            DASHBOARD,
            {"username": f"guess-{attempt}", "password": "wrong"},
            REMOTE_ADDR="127.0.0.1",
            HTTP_X_FORWARDED_FOR="203.0.113.9",
        )
    proxied = {"REMOTE_ADDR": "127.0.0.1"}
    locked = Client().post(
        DASHBOARD, {"username": "alice", "password": "secret-password"}, HTTP_X_FORWARDED_FOR="203.0.113.9", **proxied
    )
    assert_locked(locked)
    # Another client through the same proxy is not locked out with the first.
    other = Client().post(
        DASHBOARD, {"username": "alice", "password": "secret-password"}, HTTP_X_FORWARDED_FOR="198.51.100.4", **proxied
    )
    assert other.status_code == 302


@pytest.mark.parametrize(
    ("form", "headers", "named"),
    [
        ({"username": "z" * 151, "password": "x"}, {}, "username: at most 150 characters."),
        ({"username": "alice", "password": "x", "next": "/\x00"}, {}, "next: Null characters are not allowed."),
        ({"username": "b\x00b", "password": "x"}, {}, "username: Null characters are not allowed."),
        ({"username": "alice", "password": "x\x00"}, {}, "password: Null characters are not allowed."),
        ({"username": "alice", "password": "x", "\x00": "y"}, {}, "field name '\\x00': Null characters"),
        ({"username": "alice", "password": "x"}, {"HTTP_USER_AGENT": "a\x00b"}, "User-Agent header: Null characters"),
    ],
)
@pytest.mark.parametrize("url", [DASHBOARD, ADMIN])
def test_a_login_the_attempt_table_cannot_hold_is_400_naming_the_field(staff_user, url, form, headers, named):
    response = Client().post(url, form, **headers)
    assert response.status_code == 400
    assert named in response.content.decode().replace("&#x27;", "'")
    assert not AccessAttempt.objects.exists()


def test_the_longest_user_name_is_recorded(staff_user):
    assert log_in(DASHBOARD, "z" * 150, "wrong").status_code == 200
    assert AccessAttempt.objects.get().username == "z" * 150


def test_production_trusts_one_proxy_by_default_and_development_none():
    answers = build_settings({"development": {}, "production": PRODUCTION}, ["TRUSTED_PROXY_COUNT"])
    assert answers["development"]["settings"] == {"TRUSTED_PROXY_COUNT": "0"}
    assert answers["production"]["settings"] == {"TRUSTED_PROXY_COUNT": "1"}


def test_a_login_in_code_without_a_request_is_checked_but_not_counted(staff_user):
    # Client.login() calls authenticate() without a request, as a shell or a command would.
    assert Client().login(username="alice", password="wrong") is False
    assert not AccessAttempt.objects.exists()
    assert Client().login(username="alice", password="secret-password") is True


def test_a_request_without_an_address_has_none():
    request = RequestFactory().post(DASHBOARD)
    del request.META["REMOTE_ADDR"]
    assert client_address(request) is None


@pytest.mark.parametrize("model", ["accessattempt", "accesslog", "accessfailurelog"])
def test_admin_lists_of_attempts_send_a_lookup_the_database_cannot_run_back(admin_client, model):
    log_in(DASHBOARD, "alice", "wrong")
    assert admin_client.get(f"/admin/axes/{model}/").status_code == 200
    for params in [{"ip_address": "\x00"}, {"ip_address": "not-an-address"}, {"attempt_time__year": "99999"}]:
        response = admin_client.get(f"/admin/axes/{model}/", params)
        # SQLite runs a lookup of any text (200); PostgreSQL's inet refuses it (back to the list).
        assert response.status_code in (200, 302), (model, params)
        if response.status_code == 302:
            assert response["Location"].endswith("?e=1"), (model, params)


def test_deleting_the_attempt_in_admin_lifts_the_lockout(admin_client, staff_user, clock):
    for _ in range(5):
        log_in(DASHBOARD, "alice", "wrong")
    assert_locked(log_in(DASHBOARD, "alice", "secret-password"))
    attempts = list(AccessAttempt.objects.values_list("pk", flat=True))
    response = admin_client.post(
        "/admin/axes/accessattempt/", {"action": "delete_selected", "_selected_action": attempts, "post": "yes"}
    )
    assert response.status_code == 302
    assert log_in(DASHBOARD, "alice", "secret-password").status_code == 302
