"""The playground page offers the models that can be called, not those seen in the logs."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from llm.models import LLMRequestLog, ModelPrice

pytestmark = pytest.mark.django_db

SEEDED = [
    "llama-3.1-8b-instant",
    "llama-3.3-70b-versatile",
    "meta-llama/llama-4-scout-17b-16e-instruct",
    "openai/gpt-oss-120b",
    "openai/gpt-oss-20b",
    "qwen/qwen3-32b",
]


@pytest.fixture
def browser(staff_user) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


def options(html: str) -> list[tuple[str, bool]]:
    select = html.split('<select id="pg-model"', 1)[1].split("</select>", 1)[0]
    return [(value, bool(selected)) for value, selected in re.findall(r'<option value="([^"]+)"( selected)?>', select)]


def test_offers_the_priced_models_with_the_default_first_and_selected(browser, settings):
    settings.GROQ_DEFAULT_MODEL = "qwen/qwen3-32b"
    # Calls reported from elsewhere name models the proxy cannot call.
    LLMRequestLog.objects.record(model_name="gpt-4o", latency_ms=1)
    LLMRequestLog.objects.record(model_name="unknown", latency_ms=1)
    offered = options(browser.get("/playground/").content.decode())
    assert offered[0] == ("qwen/qwen3-32b", True)
    assert [name for name, _ in offered] == ["qwen/qwen3-32b", *[name for name in SEEDED if name != "qwen/qwen3-32b"]]
    assert [selected for _, selected in offered].count(True) == 1


def test_a_default_model_without_a_price_is_still_offered_first(browser, settings):
    settings.GROQ_DEFAULT_MODEL = "brand-new-model"
    ModelPrice.objects.create(model_name="added-in-admin", input_per_million=1, output_per_million=2)
    offered = options(browser.get("/playground/").content.decode())
    assert offered[0] == ("brand-new-model", True)
    assert "added-in-admin" in [name for name, _ in offered]
    assert len(offered) == len(SEEDED) + 2


def test_the_prompt_api_still_takes_any_model_name(api_client, fake_groq):
    response = api_client.post("/api/llm/prompt/", {"prompt": "hi", "model": "gpt-4o"}, format="json")
    assert response.status_code == 200
    assert fake_groq.requests[0]["model"] == "gpt-4o"
