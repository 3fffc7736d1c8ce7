"""Who may read GET /metrics (llm/api/prometheus.py): open in development without METRICS_TOKEN;
with DEBUG=False (METRICS_REQUIRE_AUTH) always the token or an API key; the token compared in
constant time; the `Bearer` scheme in any case (RFC 9110); a start-up warning when production has
no token."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.core.checks import run_checks

from llm import checks
from llm.api import prometheus as prometheus_view
from tests.factories import make_api_key
from tests.test_settings import PRODUCTION, build_settings

pytestmark = pytest.mark.django_db

URL = "/metrics"
TOKEN = "s3cret-metrics-token"


def scrape(client, authorization: str | None):
    extra = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    return client.get(URL, **extra)


def assert_refused(response) -> None:
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert "METRICS_TOKEN" in response.json()["error"]
    assert b"llm_requests" not in response.content


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (f"Bearer {TOKEN}", 200),
        (f"bearer {TOKEN}", 200),
        (f"BEARER {TOKEN}", 200),
        (f"bEaReR   {TOKEN}  ", 200),
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        (TOKEN, 401),
        (f"Basic {TOKEN}", 401),
        (f"Bearer {TOKEN}x", 401),
        (f"Bearer {TOKEN[:-1]}", 401),
        ("Bearer wrong", 401),
        ("Bearer caf\u00e9", 401),
    ],
)
def test_the_token_in_any_case_of_the_scheme_and_nothing_else(client, settings, authorization, status):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_REQUIRE_AUTH = False
    response = scrape(client, authorization)
    if status == 200:
        assert response.status_code == 200
        assert b"# TYPE llm_requests" in response.content
    else:
        assert_refused(response)


@pytest.mark.parametrize("token", ["", TOKEN])
def test_production_needs_a_credential_and_takes_an_api_key(client, settings, token):
    settings.METRICS_TOKEN = token
    settings.METRICS_REQUIRE_AUTH = True
    api_key, raw_key = make_api_key("prometheus")
    assert_refused(scrape(client, None))
    assert_refused(scrape(client, "Bearer llmo_not_a_key"))
    assert scrape(client, f"Bearer {raw_key}").status_code == 200
    assert scrape(client, f"bearer {raw_key}").status_code == 200
    api_key.revoke()
    assert_refused(scrape(client, f"Bearer {raw_key}"))


def test_production_with_a_token_takes_the_token(client, settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_REQUIRE_AUTH = True
    assert scrape(client, f"Bearer {TOKEN}").status_code == 200
    assert_refused(scrape(client, "Bearer "))


def test_development_without_a_token_is_open(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_REQUIRE_AUTH = False
    assert scrape(client, None).status_code == 200
    # A stray header changes nothing where nothing is asked.
    assert scrape(client, "Bearer anything").status_code == 200


def test_the_token_is_compared_in_constant_time():
    """Read from the view's source: the token meets the request only inside hmac.compare_digest, never
    in an `==` that stops at the first differing character (timing cannot be measured reliably here)."""
    tree = ast.parse(Path(prometheus_view.__file__).read_text())
    function = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "authorised")
    compare_digest_calls = [
        node
        for node in ast.walk(function)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "hmac.compare_digest"
    ]
    assert len(compare_digest_calls) == 1
    assert "token" in ast.unparse(compare_digest_calls[0])
    for node in ast.walk(function):
        if isinstance(node, ast.Compare):
            assert "token" not in ast.unparse(node), ast.unparse(node)


@pytest.mark.parametrize(
    ("require_auth", "token", "warned"),
    [(True, "", True), (True, TOKEN, False), (False, "", False), (False, TOKEN, False)],
)
def test_start_up_warns_when_production_has_no_token(settings, require_auth, token, warned):
    settings.METRICS_REQUIRE_AUTH = require_auth
    settings.METRICS_TOKEN = token
    found = [message for message in run_checks() if message.id == "llm.W017"]
    assert found == checks.metrics_token_configured(None)
    assert bool(found) is warned
    if warned:
        assert "METRICS_TOKEN is not set" in found[0].msg and "DEBUG=False" in found[0].msg


def test_debug_false_as_configured_requires_auth():
    """METRICS_REQUIRE_AUTH follows DEBUG as the environment sets it (read in a fresh process)."""
    answers = build_settings({"development": {}, "production": PRODUCTION}, ["METRICS_REQUIRE_AUTH"])
    assert answers["development"]["settings"] == {"METRICS_REQUIRE_AUTH": "False"}
    assert answers["production"]["settings"] == {"METRICS_REQUIRE_AUTH": "True"}
