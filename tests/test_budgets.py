"""Budgets: the API (validated at the door, each answer with its period's spend and forecast), the
hard limit on POST /api/llm/prompt/ (checked before the vendor is called, reset at the period's
end in TIME_ZONE) and the warnings check_alerts sends once per percentage and period."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import yaml
from django.core.management import call_command

from llm import budgets, forecast
from llm.models import Budget, BudgetWarning, LLMRequestLog
from tests.factories import make_logs
from tests.fake_groq import Behaviour
from tests.test_api_schema import documented_keys

pytestmark = pytest.mark.django_db

ZONE = "America/New_York"  # UTC-4 in June: local midnight is 04:00 UTC
NOW = datetime(2026, 6, 17, 15, 30, tzinfo=UTC)
DAY_START = datetime(2026, 6, 17, 4, 0, tzinfo=UTC)
MONTH_START = datetime(2026, 6, 1, 4, 0, tzinfo=UTC)


@pytest.fixture
def at_now(settings, time_machine):
    settings.TIME_ZONE = ZONE
    time_machine.move_to(NOW, tick=False)
    return time_machine


def make_budget(**fields) -> Budget:
    values = {"name": "Team", "scope": "all", "period": "day", "amount_usd": Decimal("1.00"), **fields}
    return Budget.objects.create(**values)


def spend(amounts: list[str], at: datetime = NOW - timedelta(hours=1), **fields) -> list[LLMRequestLog]:
    return make_logs(
        len(amounts),
        timestamp=lambda index: at + timedelta(seconds=index),
        cost_estimate=lambda index: Decimal(amounts[index]),
        **fields,
    )


# The API


def test_create_list_and_read_a_budget_with_its_spend(api_client, at_now):
    spend(["0.10", "0.25"], model_name="llama-3.1-8b-instant")
    spend(["0.40"], model_name="qwen/qwen3-32b")
    spend(["5.00"], at=DAY_START - timedelta(minutes=1), model_name="qwen/qwen3-32b")  # yesterday, local
    body = {"name": "Qwen daily", "scope": "model", "scope_value": "qwen/qwen3-32b", "period": "day", "amount_usd": 2}
    created = api_client.post("/api/budgets/", body, format="json")
    assert created.status_code == 201, created.content
    answer = created.json()
    assert answer["warn_at_percent"] == [80, 100]
    assert answer["spent_usd"] == pytest.approx(0.40)
    assert answer["percent_used"] == pytest.approx(20.0)
    assert datetime.fromisoformat(answer["period_start"]) == DAY_START
    assert datetime.fromisoformat(answer["period_end"]) == DAY_START + timedelta(days=1)
    make_budget(name="Everything", period="month", amount_usd=Decimal("10"))
    listed = api_client.get("/api/budgets/").json()
    assert [row["name"] for row in listed] == ["Qwen daily", "Everything"]
    assert listed[1]["spent_usd"] == pytest.approx(0.10 + 0.25 + 0.40 + 5.00)
    one = api_client.get(f"/api/budgets/{answer['id']}/").json()
    assert one["spent_usd"] == pytest.approx(0.40)
    assert one["forecast_low_usd"] <= one["forecast_usd"] <= one["forecast_high_usd"]
    expected = forecast.forecasts([forecast.Scope("model", "qwen/qwen3-32b")], "day", NOW)
    assert one["forecast_usd"] == pytest.approx(expected[forecast.Scope("model", "qwen/qwen3-32b")].forecast)


def test_update_and_delete(api_client, at_now):
    budget = make_budget()
    spend(["0.30"], user_id="user-007")
    patched = api_client.patch(
        f"/api/budgets/{budget.pk}/", {"scope": "user", "scope_value": "user-007"}, format="json"
    )
    assert patched.status_code == 200, patched.content
    assert patched.json()["spent_usd"] == pytest.approx(0.30)
    put = {"name": "Renamed", "scope": "all", "scope_value": "", "period": "week", "amount_usd": "3.5"}
    assert api_client.put(f"/api/budgets/{budget.pk}/", put, format="json").json()["amount_usd"] == 3.5
    assert api_client.delete(f"/api/budgets/{budget.pk}/").status_code == 204
    assert api_client.get(f"/api/budgets/{budget.pk}/").status_code == 404
    assert not Budget.objects.exists()


def test_the_list_reads_spend_in_a_few_queries_whatever_the_number_of_budgets(
    api_client, at_now, django_assert_max_num_queries
):
    spend(["0.10"], user_id="u1", tags={"feature": "chat"})
    for index in range(12):
        scope, value = [("all", ""), ("model", "m"), ("user", f"u{index}"), ("tag", f"feature:f{index}")][index % 4]
        make_budget(name=f"B{index}", scope=scope, scope_value=value, period=["day", "month"][index % 2])
    with django_assert_max_num_queries(40):
        answer = api_client.get("/api/budgets/").json()
    assert len(answer) == 12


BAD_BUDGETS = [
    ("amount_usd", {"amount_usd": "12345678901.1234"}),  # 15 digits
    ("amount_usd", {"amount_usd": "1.00001"}),
    ("amount_usd", {"amount_usd": "NaN"}),
    ("amount_usd", {"amount_usd": "Infinity"}),
    ("amount_usd", {"amount_usd": 0}),
    ("amount_usd", {"amount_usd": -5}),
    ("warn_at_percent", {"warn_at_percent": [0]}),
    ("warn_at_percent", {"warn_at_percent": [1001]}),
    ("warn_at_percent", {"warn_at_percent": [80, 80]}),
    ("warn_at_percent", {"warn_at_percent": [True]}),
    ("warn_at_percent", {"warn_at_percent": [50.5]}),
    ("warn_at_percent", {"warn_at_percent": list(range(1, 12))}),
    ("warn_at_percent", {"warn_at_percent": 80}),
    ("warn_at_percent", {"warn_at_percent": [2**40]}),
    ("scope_value", {"scope": "all", "scope_value": "gpt"}),
    ("scope_value", {"scope": "model", "scope_value": ""}),
    ("scope_value", {"scope": "tag", "scope_value": "feature"}),
    ("scope_value", {"scope": "tag", "scope_value": ":x"}),
    ("scope_value", {"scope": "tag", "scope_value": "k" * 101 + ":v"}),
    ("scope_value", {"scope": "user", "scope_value": "a\ud800"}),
    ("scope_value", {"scope": "user", "scope_value": "x" * 700}),
    ("scope", {"scope": "team"}),
    ("period", {"period": "year"}),
    ("name", {"name": "a\x00b"}),
    ("name", {"name": "two\nlines"}),
    ("name", {"name": ""}),
    ("email_recipients", {"email_recipients": "not an address"}),
    ("webhook_url", {"webhook_url": "ftp://example.com/hook"}),
    ("hard_limit", {"hard_limit": "maybe"}),
]


@pytest.mark.parametrize(("field", "change"), BAD_BUDGETS)
def test_bad_input_is_refused_naming_the_field(api_client, field, change):
    body = {"name": "B", "scope": "all", "period": "day", "amount_usd": "10", **change}
    # As JSON text: a lone surrogate travels as its \u escape.
    response = api_client.post("/api/budgets/", json.dumps(body), content_type="application/json")
    assert response.status_code == 400, response.content
    assert field in response.json()["fields"]
    assert not Budget.objects.exists()


def test_a_name_is_used_once(api_client):
    make_budget(name="Team")
    response = api_client.post("/api/budgets/", {"name": "Team", "amount_usd": 1}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()["fields"]


def test_answers_have_the_documented_fields(api_client, at_now):
    budget = make_budget()
    schema = yaml.safe_load(api_client.get("/api/schema/").content)
    for path, url in [("/api/budgets/{id}/", f"/api/budgets/{budget.pk}/"), ("/api/budgets/", "/api/budgets/")]:
        fields, _ = documented_keys(schema, path)
        answer = api_client.get(url).json()
        assert set(answer[0] if isinstance(answer, list) else answer) == fields
    fields, _ = documented_keys(schema, "/api/metrics/forecast/")
    assert set(api_client.get("/api/metrics/forecast/").json()) == fields


# The hard limit


def prompt(api_client, **fields):
    return api_client.post("/api/llm/prompt/", {"prompt": "Hello", **fields}, format="json")


def test_a_spent_hard_limit_answers_429_before_calling_the_vendor(api_client, fake_groq, at_now):
    budget = make_budget(name="Chat feature", scope="tag", scope_value="feature:chat", hard_limit=True)
    spend(["0.60", "0.40"], tags={"feature": "chat"})
    response = prompt(api_client, tags={"feature": "chat"}, user_id="user-007")
    assert response.status_code == 429, response.content
    answer = response.json()
    assert answer["error_type"] == "budget_exceeded"
    assert "Chat feature" in answer["error_message"]
    assert f"#{budget.pk}" in answer["error_message"]
    assert fake_groq.requests == []  # the vendor never saw it
    # Retry-After: until local midnight, when the day's budget starts again.
    assert int(response["Retry-After"]) == int((DAY_START + timedelta(days=1) - NOW).total_seconds())
    refused = LLMRequestLog.objects.get(request_id=answer["request_id"])
    assert refused.error_type == LLMRequestLog.ErrorType.BUDGET_EXCEEDED
    assert refused.status == LLMRequestLog.Status.ERROR
    assert refused.cost_estimate == 0
    assert refused.total_tokens == 0
    assert refused.user_id == "user-007"
    assert refused.api_key_name == "tests"


def test_a_streamed_call_is_refused_the_same_way(api_client, fake_groq, at_now):
    make_budget(name="User cap", scope="user", scope_value="user-007", hard_limit=True)
    spend(["1.00"], user_id="user-007")
    response = prompt(api_client, user_id="user-007", stream=True)
    assert response.status_code == 429
    assert response.json()["error_type"] == "budget_exceeded"
    assert "User cap" in response.json()["error_message"]
    assert fake_groq.requests == []


def test_calls_outside_the_scope_or_under_the_amount_go_through(api_client, fake_groq, at_now):
    make_budget(scope="tag", scope_value="feature:chat", hard_limit=True)
    make_budget(name="Warn only", amount_usd=Decimal("0.01"))  # spent, but no hard limit
    spend(["1.00"], tags={"feature": "chat"})
    fake_groq.will(Behaviour(text="ok"), Behaviour(text="ok"))
    assert prompt(api_client, tags={"feature": "search"}).status_code == 200
    assert prompt(api_client).status_code == 200
    assert len(fake_groq.requests) == 2


def test_an_api_key_budget_counts_the_calls_made_with_that_key(api_client, fake_groq, at_now, model_prices):
    make_budget(scope="api_key", scope_value="tests", hard_limit=True, amount_usd=Decimal("0.0001"))
    fake_groq.will(Behaviour(text="ok", prompt_tokens=1000, completion_tokens=1000))
    first = prompt(api_client, model="llama-3.3-70b-versatile")
    assert first.status_code == 200, first.content
    assert LLMRequestLog.objects.get(request_id=first.json()["request_id"]).api_key_name == "tests"
    second = prompt(api_client)
    assert second.status_code == 429
    assert len(fake_groq.requests) == 1


def test_the_hard_limit_resets_at_the_period_boundary_in_time_zone(api_client, fake_groq, at_now):
    make_budget(hard_limit=True, amount_usd=Decimal("0.50"))
    spend(["0.50"], at=NOW - timedelta(hours=2))
    assert prompt(api_client).status_code == 429
    at_now.move_to(DAY_START + timedelta(days=1) - timedelta(seconds=1), tick=False)  # 23:59:59 local
    assert prompt(api_client).status_code == 429
    at_now.move_to(DAY_START + timedelta(days=1), tick=False)  # local midnight, 04:00 UTC
    fake_groq.will(Behaviour(text="a new day"))
    assert prompt(api_client).status_code == 200
    assert len(fake_groq.requests) == 1


def test_outside_a_transaction_the_spent_list_is_cached_and_forgotten_on_save(transactional_db, settings, time_machine):
    settings.TIME_ZONE = ZONE
    time_machine.move_to(NOW, tick=False)
    budgets.forget_spent()
    budget = make_budget(hard_limit=True, amount_usd=Decimal("0.50"))
    assert budgets.spent_hard_limits(NOW) == []
    spend(["0.75"])
    # Within HARD_LIMIT_CACHE_SECONDS the list read before the spend answers: the stated bound.
    assert budgets.spent_hard_limits(NOW) == []
    budget.save()  # any save forgets the list in this process
    assert [entry.budget.pk for entry in budgets.spent_hard_limits(NOW)] == [budget.pk]
    # Past the period's end the listed budget's list is read again, whatever its age.
    tomorrow = DAY_START + timedelta(days=1, minutes=1)
    assert budgets.spent_hard_limits(tomorrow) == []
    budgets.forget_spent()


# Warnings


def test_each_warning_percentage_is_sent_once_per_period(at_now, smtp_server, webhook_receiver):
    make_budget(
        name="Team",
        amount_usd=Decimal("1.00"),
        warn_at_percent=[50, 80, 100],
        email_recipients="ops@example.com",
        webhook_url=webhook_receiver.url,
    )
    spend(["0.85"])
    call_command("check_alerts")
    assert sorted(BudgetWarning.objects.values_list("percent", flat=True)) == [50, 80]
    assert len(smtp_server.messages) == 2
    assert "Team" in smtp_server.messages[0]["Subject"]
    assert {request.json()["percent"] for request in webhook_receiver.requests} == {50, 80}
    call_command("check_alerts")  # nothing new: nothing sent again
    assert len(smtp_server.messages) == 2
    assert len(webhook_receiver.requests) == 2
    spend(["0.15"])
    call_command("check_alerts")
    assert len(smtp_server.messages) == 3
    assert webhook_receiver.requests[-1].json()["percent"] == 100
    warning = BudgetWarning.objects.get(percent=100)
    assert warning.spent_usd == Decimal("1.00")
    assert warning.notifications["email"]["status"] == "sent"
    assert warning.notifications["webhook"]["status"] == "sent"
    # The next day is a new period: the same spend again warns again.
    at_now.move_to(DAY_START + timedelta(days=1, hours=1), tick=False)
    spend(["0.90"], at=DAY_START + timedelta(days=1, minutes=5))
    call_command("check_alerts")
    assert len(smtp_server.messages) == 5
    assert BudgetWarning.objects.count() == 5


def test_a_claimed_percentage_is_not_sent_by_a_second_run(at_now):
    budget = make_budget()
    first = budgets.claim_warning(budget, DAY_START, 80, Decimal("0.8"), NOW)
    assert first is not None
    assert budgets.claim_warning(budget, DAY_START, 80, Decimal("0.8"), NOW) is None
    assert BudgetWarning.objects.count() == 1


def test_a_failing_channel_does_not_stop_the_other(at_now, smtp_server, webhook_receiver):
    webhook_receiver.status = 500
    make_budget(warn_at_percent=[10], email_recipients="ops@example.com", webhook_url=webhook_receiver.url)
    spend(["0.20"])
    call_command("check_alerts")
    warning = BudgetWarning.objects.get()
    assert warning.notifications["webhook"]["status"] == "error"
    assert warning.notifications["email"]["status"] == "sent"
    assert len(smtp_server.messages) == 1


def test_dry_run_sends_and_records_nothing(at_now, smtp_server, capsys):
    make_budget(warn_at_percent=[10], email_recipients="ops@example.com")
    spend(["0.20"])
    call_command("check_alerts", "--dry-run")
    assert "would warn at 10%" in capsys.readouterr().out
    assert not BudgetWarning.objects.exists()
    assert smtp_server.messages == []


# Pages and admin


def test_the_overview_shows_each_budget_and_the_month_forecast(logged_in_client, at_now, smtp_server):
    make_budget(name="Chat feature", scope="tag", scope_value="feature:chat", hard_limit=True, amount_usd=Decimal("2"))
    make_budget(name="Everything", period="month", amount_usd=Decimal("100"), email_recipients="ops@example.com")
    spend(["0.50", "1.00"], tags={"feature": "chat"})
    spend(["3.00"], at=MONTH_START + timedelta(days=1))
    call_command("check_alerts")  # nothing reached for Everything; Chat feature is at 75 %: no warning either
    page = logged_in_client.get("/").content.decode()
    assert "Budget: Chat feature" in page
    assert "$1.5000" in page and "of $2.0000 this day" in page
    assert "75.00% of $2.0000" in page
    assert "hard limit" in page
    assert "Budget: Everything" in page
    assert "$4.5000" in page  # the month so far: 0.50 + 1.00 + 3.00
    assert "Forecast for June 2026" in page
    spend(["0.10"], tags={"feature": "chat"})
    Budget.objects.filter(name="Everything").update(warn_at_percent=[4])
    call_command("check_alerts")
    page = logged_in_client.get("/").content.decode()
    assert "Warned at 4%" in page


def test_the_overview_says_how_to_add_a_budget(logged_in_client, at_now):
    spend(["0.10"])
    page = logged_in_client.get("/").content.decode()
    assert "No budget yet" in page
    assert "/admin/llm/budget/add/" in page


def test_a_budget_is_added_in_admin_with_its_rules(admin_client):
    form = {
        "name": "From admin",
        "scope": "tag",
        "scope_value": "feature",
        "period": "month",
        "amount_usd": "50",
        "warn_at_percent": "[80, 100]",
    }
    response = admin_client.post("/admin/llm/budget/add/", form)
    assert response.status_code == 200  # the form again, with the error
    assert "A tag scope is key:value" in response.content.decode()
    form["scope_value"] = "feature:chat"
    form["warn_at_percent"] = "[0]"
    assert admin_client.post("/admin/llm/budget/add/", form).status_code == 200
    form["warn_at_percent"] = "[50, 90]"
    assert admin_client.post("/admin/llm/budget/add/", form).status_code == 302
    assert Budget.objects.get().warn_at_percent == [50, 90]
    assert admin_client.get("/admin/llm/budget/").status_code == 200
    assert admin_client.get("/admin/llm/budgetwarning/").status_code == 200


def test_sample_data_adds_one_budget_above_this_months_spend(at_now):
    call_command("generate_sample_data", "--count", "200", "--days", "3", "--seed", "5", stdout=None, stderr=None)
    budget = Budget.objects.get()
    start, end = forecast.period_bounds("month", NOW)
    month_cost = sum(log.cost_estimate for log in LLMRequestLog.objects.filter(timestamp__gte=start, timestamp__lt=end))
    assert budget.scope == "all" and budget.period == "month"
    assert budget.amount_usd == max(Decimal("1.00"), (month_cost * Decimal("1.25")).quantize(Decimal("0.01")))
    call_command("generate_sample_data", "--count", "10", "--days", "1", "--seed", "6", stdout=None, stderr=None)
    assert Budget.objects.count() == 1
