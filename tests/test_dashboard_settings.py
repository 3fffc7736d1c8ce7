"""The overview's amber and red thresholds, set by an admin in the admin site."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from llm.models import DashboardSettings
from tests.factories import make_logs

pytestmark = pytest.mark.django_db

FORM = {
    "error_rate_amber": "2",
    "error_rate_red": "5",
    "p95_latency_amber_ms": "3000",
    "p95_latency_red_ms": "8000",
    "cost_per_day_amber_usd": "10",
    "cost_per_day_red_usd": "50",
}


def error_rate_level(client) -> str:
    cards = {card["key"]: card for card in client.get("/", {"range": "24h"}).context["cards"]}
    return cards["error_rate"]["level"]


def test_admin_sets_the_thresholds_the_overview_uses(admin_client):
    now = timezone.now()
    make_logs(
        100,
        timestamp=lambda index: now - timedelta(minutes=index + 1),
        status=lambda index: "error" if index < 3 else "success",
    )  # 3 % errors: amber with the defaults
    assert error_rate_level(admin_client) == "amber"
    row = DashboardSettings.load()
    url = f"/admin/llm/dashboardsettings/{row.pk}/change/"
    assert admin_client.get("/admin/llm/dashboardsettings/").status_code == 200

    refused = admin_client.post(url, {**FORM, "error_rate_amber": "4", "error_rate_red": "1"})
    assert refused.status_code == 200
    assert "Red must be at least the amber threshold." in refused.content.decode()
    assert DashboardSettings.load().error_rate_red == 5

    assert admin_client.post(url, {**FORM, "error_rate_amber": "1", "error_rate_red": "2.5"}).status_code == 302
    assert error_rate_level(admin_client) == "red"
    assert admin_client.post(url, {**FORM, "error_rate_amber": "3.5", "error_rate_red": "9"}).status_code == 302
    assert error_rate_level(admin_client) == "ok"


def test_one_row_that_cannot_be_deleted_or_duplicated(admin_client):
    assert admin_client.get("/admin/llm/dashboardsettings/add/").status_code == 200  # none yet
    row = DashboardSettings.load()
    assert admin_client.get("/admin/llm/dashboardsettings/add/").status_code == 403
    assert admin_client.post(f"/admin/llm/dashboardsettings/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert DashboardSettings.objects.count() == 1
