"""The playground in a real headless Chromium with several providers: the model picker groups the
priced models by provider, and a prompt to an OpenAI model goes to the OpenAI-compatible server
(the fake's openai dialect), with the vendor named in a failure."""

from __future__ import annotations

import pytest

from llm.models import LLMRequestLog
from tests.fake_groq import Behaviour

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_prompt_to_an_openai_model_goes_to_its_provider(page_for, live_server, fake_groq, provider_prices, settings):
    settings.OPENAI_BASE_URL = fake_groq.openai_base_url
    settings.OPENAI_API_KEY = "sk-test"
    settings.OPENAI_MAX_RETRIES = 0
    fake_groq.will(
        Behaviour(chunks=["Bon", "jour"], prompt_tokens=12, completion_tokens=2),
        Behaviour(mode="status", status=500, error_message="upstream exploded"),
    )
    page = page_for()
    page.goto(f"{live_server.url}/playground/")
    labels = page.eval_on_selector_all("#pg-model optgroup", "groups => groups.map(group => group.label)")
    assert labels == ["Groq", "Cerebras", "OpenAI"]
    page.select_option("#pg-model", "gpt-4o-mini")
    page.fill("#pg-prompt", "Say hello in French")
    page.click("#pg-send")
    page.wait_for_selector("#pg-figures:not([hidden])")
    assert page.text_content("#pg-answer") == "Bonjour"
    assert page.text_content("#pg-tokens").startswith("12")
    assert fake_groq.requests[0]["_dialect"] == "openai" and fake_groq.requests[0]["model"] == "gpt-4o-mini"
    row = LLMRequestLog.objects.get()
    assert (row.provider, row.model_name, row.prompt_tokens) == ("openai", "gpt-4o-mini", 12)
    page.click("#pg-send")
    page.wait_for_selector("#pg-error-more:not([hidden])")
    assert page.text_content("#pg-error").startswith("OpenAI failed to answer (HTTP 500)")
    assert page.text_content("#pg-upstream") == "OpenAI said: upstream exploded"
