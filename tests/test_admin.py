import re
from datetime import UTC, datetime

import pytest
from django.core.management import call_command

from llm.models import APIKey
from tests.factories import build_span

pytestmark = pytest.mark.django_db

CHANGELISTS = ["llmrequestlog", "userfeedback", "alertrule", "alertlog", "modelprice", "apikey"]


@pytest.mark.parametrize("model", CHANGELISTS)
def test_admin_changelist_loads_with_data(admin_client, model):
    call_command("generate_sample_data", "--count", "30", "--seed", "3", "--days", "1", stdout=None)
    response = admin_client.get(f"/admin/llm/{model}/")
    assert response.status_code == 200


def test_log_rows_are_read_only_in_admin(admin_client):
    call_command("generate_sample_data", "--count", "5", "--seed", "3", "--days", "1")
    assert admin_client.get("/admin/llm/llmrequestlog/add/").status_code == 403


def test_api_key_created_in_admin_is_shown_once_and_works(admin_client):
    form = admin_client.get("/admin/llm/apikey/add/").content.decode()
    # The form offers every scope and ticks only `ingest`, as a browser would submit it.
    ticked = re.findall(r'<input type="checkbox" name="scope_choices" value="(\w+)"[^>]*checked', form)
    offered = re.findall(r'<input type="checkbox" name="scope_choices" value="(\w+)"', form)
    assert (ticked, offered) == (["ingest"], APIKey.Scope.values)
    data = {"name": "from-admin", "scope_choices": "ingest"}
    response = admin_client.post("/admin/llm/apikey/add/", data, follow=True)
    assert response.status_code == 200
    message = next(str(m) for m in response.context["messages"] if "llmo_" in str(m))
    raw_key = next(word for word in message.split() if word.startswith("llmo_"))
    assert APIKey.authenticate(raw_key).name == "from-admin"
    assert APIKey.objects.get().scope_list == ["ingest"]


def test_trace_spans_are_listed_read_only_with_a_link_to_their_trace(admin_client):
    span = build_span("a" * 32, "b" * 16, datetime(2026, 5, 1, 12, tzinfo=UTC), 1234.0, name="SELECT calls")
    span.save()
    page = admin_client.get("/admin/llm/tracespan/").content.decode()
    assert "SELECT calls" in page
    assert f'href="/traces/{"a" * 32}/"' in page
    assert "1,234 ms" in page
    assert admin_client.get("/admin/llm/tracespan/add/").status_code == 403
    found = admin_client.get("/admin/llm/tracespan/", {"q": "a" * 32}).content.decode()
    assert "SELECT calls" in found
