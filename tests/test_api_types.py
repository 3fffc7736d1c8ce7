"""One concept, one name, one type: every cost is a JSON number, a call's model is `model_name`,
and the CSV writes costs as plain fixed-point decimals."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest

from llm.models import LLMRequestLog
from tests.fake_groq import Behaviour

pytestmark = pytest.mark.django_db

TRACE = "0af7651916cd43dd8448eb211c80319c"
COST_FIELDS = {"cost_estimate", "total_cost", "cost", "cost_usd", "spent_usd", "forecast_usd", "amount_usd"}
COSTS = [Decimal("0"), Decimal("0.0000123"), Decimal("12.5")]


@pytest.fixture
def calls(db) -> list[LLMRequestLog]:
    return [
        LLMRequestLog.objects.create(
            model_name="llama-3.1-8b-instant", cost_estimate=cost, trace_id=TRACE, span_id=f"{index:016x}"
        )
        for index, cost in enumerate(COSTS)
    ]


def walk(value, found: dict[str, int]) -> None:
    """Check every cost field and every call-shaped object in a JSON answer, counting what was seen."""
    if isinstance(value, list):
        for item in value:
            walk(item, found)
    elif isinstance(value, dict):
        if "request_id" in value and "timestamp" in value:  # a call
            assert "model_name" in value and "model" not in value, value
            found["calls"] += 1
        for key, item in value.items():
            if key in COST_FIELDS:
                assert isinstance(item, int | float) and not isinstance(item, bool), (key, item)
                found["costs"] += 1
            walk(item, found)


def test_every_answer_with_calls_or_costs_uses_numbers_and_model_name(api_client, calls, fake_groq):
    request_id = calls[1].request_id
    paths = [
        "/api/logs/",
        "/api/logs/errors/",
        f"/api/logs/{request_id}/",
        f"/api/traces/{TRACE}/",
        "/api/metrics/overview/",
        "/api/metrics/model-usage/",
        "/api/metrics/daily-stats/",
    ]
    found = {"calls": 0, "costs": 0}
    for path in paths:
        response = api_client.get(path)
        assert response.status_code == 200, (path, response.content)
        walk(response.json(), found)
    export = api_client.get("/api/export/json/")
    rows = json.loads(b"".join(export.streaming_content))
    walk(rows, found)
    assert [row["cost_estimate"] for row in rows] == [float(cost) for cost in COSTS]

    fake_groq.will(Behaviour(text="Paris.", prompt_tokens=1200, completion_tokens=300))
    prompt = api_client.post("/api/llm/prompt/", {"prompt": "Capital of France?"}, format="json")
    assert prompt.status_code == 200, prompt.content
    walk(prompt.json(), found)
    # Three calls in each of: list, trace, export; one detail. Costs: each call, plus the figures.
    assert found["calls"] == 3 * 3 + 1
    assert found["costs"] >= 3 * 3 + 1 + 1 + 1 + 1 + 1


def test_schema_types_every_cost_as_a_number(api_client):
    schema = api_client.get("/api/schema/", {"format": "json"}).json()
    seen = 0
    for name, component in schema["components"]["schemas"].items():
        for field, spec in component.get("properties", {}).items():
            if field in COST_FIELDS:
                assert spec.get("type") == "number", (name, field, spec)
                seen += 1
            if name in ("Log", "LogDetail"):
                assert field != "model"
    assert seen >= 3  # Log, LogDetail, PromptResponse


def test_csv_writes_costs_in_fixed_point(api_client, calls):
    text = b"".join(api_client.get("/api/export/csv/").streaming_content).decode()
    cells = [row["cost_estimate"] for row in csv.DictReader(io.StringIO(text))]
    assert cells == ["0.0000000000", "0.0000123000", "12.5000000000"]
    assert [Decimal(cell) for cell in cells] == COSTS
