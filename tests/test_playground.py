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
def browser(staff_user, provider_prices) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


def options(html: str) -> list[tuple[str, str, bool]]:
    """(provider, model, selected) of each option of the model picker, in order."""
    select = html.split('<select id="pg-model"', 1)[1].split("</select>", 1)[0]
    found = re.findall(r'<option value="([^"]+)" data-provider="([^"]+)"\s*( selected)?>', select)
    return [(provider, value, bool(selected)) for value, provider, selected in found]


def groups(html: str) -> list[str]:
    select = html.split('<select id="pg-model"', 1)[1].split("</select>", 1)[0]
    return re.findall(r'<optgroup label="([^"]+)"', select)


def test_offers_the_priced_models_grouped_by_provider_with_the_default_first_and_selected(browser, settings):
    settings.GROQ_DEFAULT_MODEL = "qwen/qwen3-32b"
    # Calls reported from elsewhere name models the proxy cannot call.
    LLMRequestLog.objects.record(model_name="unknown", latency_ms=1)
    html = browser.get("/playground/").content.decode()
    offered = options(html)
    assert groups(html) == ["Groq", "Cerebras", "OpenAI"]
    groq = [model for provider, model, _ in offered if provider == "groq"]
    assert groq == ["qwen/qwen3-32b", *[name for name in SEEDED if name != "qwen/qwen3-32b"]]
    assert offered[0] == ("groq", "qwen/qwen3-32b", True)
    assert [selected for *_, selected in offered].count(True) == 1
    # Every exact name of the price table, under its provider; patterns name no callable model.
    expected = set(
        ModelPrice.objects.exclude(model_name__contains="*").values_list("provider", "model_name").distinct()
    )
    assert {(provider, model) for provider, model, _ in offered} == expected
    assert ("openai", "gpt-4o") in expected and ("cerebras", "llama-3.3-70b") in expected
    assert "unknown" not in html and "gpt-4o*" not in html


def test_a_default_model_without_a_price_is_still_offered_first(browser, settings):
    settings.GROQ_DEFAULT_MODEL = "brand-new-model"
    ModelPrice.objects.create(model_name="added-in-admin", input_per_million=1, output_per_million=2)
    offered = options(browser.get("/playground/").content.decode())
    assert offered[0] == ("groq", "brand-new-model", True)
    assert ("groq", "added-in-admin", False) in offered


def test_a_provider_without_a_key_is_named_with_its_variable(browser, settings):
    settings.GROQ_API_KEY = "gsk_configured"
    settings.CEREBRAS_API_KEY = ""
    settings.OPENAI_API_KEY = "sk-configured"
    html = browser.get("/playground/").content.decode()
    assert "No <code>CEREBRAS_API_KEY</code> is configured" in html
    assert "OPENAI_API_KEY</code> is configured" not in html and "GROQ_API_KEY</code> is configured" not in html


def test_the_prompt_api_routes_a_priced_model_to_its_provider(api_client, fake_groq, settings, provider_prices):
    settings.OPENAI_API_KEY = ""
    response = api_client.post("/api/llm/prompt/", {"prompt": "hi", "model": "gpt-4o"}, format="json")
    # gpt-4o is OpenAI's in the price table: not sent to Groq, and the missing key is named.
    assert response.status_code == 503
    assert "OPENAI_API_KEY" in response.json()["error_message"]
    assert fake_groq.requests == []
    assert LLMRequestLog.objects.get().provider == "openai"
