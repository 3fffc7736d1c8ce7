"""A new install: every page renders with no data and tells the user what to do next."""

from __future__ import annotations

import pytest

from llm.models import ModelPrice

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("path", "hint"),
    [
        ("/", "generate_sample_data"),
        ("/analytics/", "generate_sample_data"),
        ("/logs/", "generate_sample_data"),
        ("/feedback/", "playground"),
        ("/alerts/", "check_alerts --create-defaults"),
        ("/alerts/", "Nothing has fired"),
    ],
)
def test_empty_pages_say_what_to_do(client, staff_user, path, hint):
    client.force_login(staff_user)
    response = client.get(path)
    assert response.status_code == 200
    assert hint in response.content.decode()
    assert b'id="chart-data"' not in response.content  # no empty charts


def test_playground_without_a_key_says_where_to_put_it(client, staff_user, settings):
    settings.GROQ_API_KEY = ""
    client.force_login(staff_user)
    html = client.get("/playground/").content.decode()
    assert "GROQ_API_KEY" in html
    # The model picker offers the priced models even before any traffic.
    for name in ModelPrice.objects.exclude(model_name__contains="*").values_list("model_name", flat=True):
        assert f'<option value="{name}"' in html
    assert ModelPrice.objects.exists()
