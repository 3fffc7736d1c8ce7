"""STORE_PROMPTS, REDACT_PII and MAX_STORED_TEXT_CHARS on every ingest path: the proxy (plain
and streamed), the events API and OTLP. What the caller of the proxy gets back is never altered."""

from __future__ import annotations

import json
import uuid

import pytest

from llm.models import LLMRequestLog
from llm.privacy import TRUNCATION_MARKER, stored_text
from tests.fake_groq import Behaviour
from tests.test_otlp import otlp_json, otlp_json_span
from tests.test_prompt_api import parse_sse

pytestmark = pytest.mark.django_db

SECRET_PROMPT = "I am alice@example.com, call +44 20 7946 0958, card 4111 1111 1111 1111, key gsk_" + "a1" * 16
REDACTED_PROMPT = "I am [EMAIL], call [PHONE], card [CARD], key [SECRET]"
SECRET_ANSWER = "Sure: your IBAN DE89 3704 0044 0532 0130 00 and IP 192.168.7.1 are noted."
REDACTED_ANSWER = "Sure: your IBAN [IBAN] and IP [IP] are noted."


def post_prompt(api_client, stream: bool) -> tuple[dict, LLMRequestLog]:
    response = api_client.post("/api/llm/prompt/", {"prompt": SECRET_PROMPT, "stream": stream}, format="json")
    assert response.status_code == 200, response
    body = parse_sse(b"".join(response.streaming_content))[-1][1] if stream else response.json()
    return body, LLMRequestLog.objects.get(request_id=body["request_id"])


def post_event(api_client) -> LLMRequestLog:
    event = {"request_id": str(uuid.uuid4()), "model": "llama-3.1-8b-instant", "prompt": SECRET_PROMPT}
    event["response"] = SECRET_ANSWER
    response = api_client.post("/api/events/", event, format="json")
    assert response.status_code == 201, response.content
    return LLMRequestLog.objects.get(request_id=event["request_id"])


def post_otlp_span(client, api_key) -> LLMRequestLog:
    span = otlp_json_span()
    span["events"][0]["attributes"][0]["value"]["stringValue"] = SECRET_PROMPT
    span["events"][1]["attributes"][0]["value"]["kvlistValue"]["values"][1]["value"]["stringValue"] = SECRET_ANSWER
    response = client.post(
        "/v1/traces",
        json.dumps(otlp_json(span)),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key}",
    )
    assert response.status_code == 200, response.content
    return LLMRequestLog.objects.get(span_id=span["spanId"])


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_proxy_redacts_stored_text_but_answers_and_forwards_the_original(api_client, fake_groq, settings, stream):
    settings.REDACT_PII = True
    fake_groq.will(Behaviour(mode="stream" if stream else "ok", text=SECRET_ANSWER))
    body, row = post_prompt(api_client, stream)
    assert body["response"] == SECRET_ANSWER
    assert fake_groq.requests[0]["messages"][-1]["content"] == SECRET_PROMPT
    assert row.prompt_text == REDACTED_PROMPT
    assert row.response_text == REDACTED_ANSWER


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_proxy_with_store_prompts_off_stores_no_text(api_client, fake_groq, settings, stream):
    settings.STORE_PROMPTS = False
    fake_groq.will(Behaviour(mode="stream" if stream else "ok", text=SECRET_ANSWER, prompt_tokens=9))
    body, row = post_prompt(api_client, stream)
    assert body["response"] == SECRET_ANSWER
    assert (row.prompt_text, row.response_text) == ("", "")
    assert row.prompt_tokens == 9  # the figures are still kept


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_proxy_truncates_stored_text_only(api_client, fake_groq, settings, stream):
    settings.MAX_STORED_TEXT_CHARS = 30
    fake_groq.will(Behaviour(mode="stream" if stream else "ok", text=SECRET_ANSWER))
    body, row = post_prompt(api_client, stream)
    assert body["response"] == SECRET_ANSWER
    assert row.response_text == SECRET_ANSWER[: 30 - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER
    assert len(row.prompt_text) == 30 and row.prompt_text.endswith(TRUNCATION_MARKER)


def test_proxy_error_message_is_kept_but_redacted(api_client, fake_groq, settings):
    settings.STORE_PROMPTS = False
    settings.REDACT_PII = True
    fake_groq.will(Behaviour(mode="status", status=400, error_message="bad key for bob@example.org"))
    response = api_client.post("/api/llm/prompt/", {"prompt": SECRET_PROMPT}, format="json")
    assert response.status_code == 502
    row = LLMRequestLog.objects.get(request_id=response.json()["request_id"])
    assert "[EMAIL]" in row.error_message and "bob@example.org" not in row.error_message
    assert row.prompt_text == ""


def test_events_redacted(api_client, settings):
    settings.REDACT_PII = True
    row = post_event(api_client)
    assert (row.prompt_text, row.response_text) == (REDACTED_PROMPT, REDACTED_ANSWER)


def test_events_with_store_prompts_off(api_client, settings):
    settings.STORE_PROMPTS = False
    row = post_event(api_client)
    assert (row.prompt_text, row.response_text) == ("", "")


def test_events_truncated(api_client, settings):
    settings.MAX_STORED_TEXT_CHARS = 20
    row = post_event(api_client)
    assert row.prompt_text == SECRET_PROMPT[: 20 - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def test_otlp_redacted(client, api_key, settings):
    settings.REDACT_PII = True
    row = post_otlp_span(client, api_key)
    assert (row.prompt_text, row.response_text) == (REDACTED_PROMPT, REDACTED_ANSWER)


def test_otlp_with_store_prompts_off(client, api_key, settings):
    settings.STORE_PROMPTS = False
    row = post_otlp_span(client, api_key)
    assert (row.prompt_text, row.response_text) == ("", "")
    assert row.prompt_tokens == 1000


def test_otlp_truncated(client, api_key, settings):
    settings.MAX_STORED_TEXT_CHARS = 25
    row = post_otlp_span(client, api_key)
    assert row.response_text == SECRET_ANSWER[: 25 - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def test_redaction_happens_before_truncation(settings):
    # Truncating first could cut an address in half and leave its first part readable.
    settings.REDACT_PII = True
    settings.MAX_STORED_TEXT_CHARS = 15
    expected = "write to [EMAIL]"[: 15 - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER
    assert stored_text("write to alice@example.com") == expected


def test_zero_limit_means_no_truncation(settings):
    settings.MAX_STORED_TEXT_CHARS = 0
    assert stored_text("x" * 50_000) == "x" * 50_000
