"""What a failed prompt tells its caller: one human message per error type, the vendor's own words
next to it, and how long to wait. Through the real groq SDK against the fake Groq server."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import yaml

from llm.models import LLMRequestLog
from llm.providers import errors
from tests.fake_groq import Behaviour
from tests.test_prompt_api import URL, parse_sse

pytestmark = pytest.mark.django_db


def no_repr(*texts: str | None) -> None:
    """The SDK's `Error code: 429 - {'error': ...}` must not reach a person."""
    for text in texts:
        assert "Error code" not in (text or "")
        assert "{'" not in (text or "")


@pytest.mark.parametrize(
    ("behaviour", "http_status", "error_type", "message", "upstream"),
    [
        (
            Behaviour(mode="status", status=401, error_message="Invalid API Key"),
            502,
            "authentication",
            "Groq refused the API key (HTTP 401): check GROQ_API_KEY (mistyped, revoked or from another account?) "
            "and restart the server after changing it.",
            "Invalid API Key",
        ),
        (
            Behaviour(mode="status", status=403, error_message="Forbidden for this organization"),
            502,
            "authentication",
            "Groq refused this request with the configured key (HTTP 403): check that GROQ_API_KEY belongs to an "
            "account allowed to use this model.",
            "Forbidden for this organization",
        ),
        (
            Behaviour(mode="status", status=429, error_message="Rate limit reached for model"),
            429,
            "rate_limit",
            "Groq is rate limiting this API key (HTTP 429): wait a little, then retry or send fewer requests.",
            "Rate limit reached for model",
        ),
        (
            Behaviour(mode="status", status=400, error_message="Please reduce the length of the messages"),
            502,
            "bad_request",
            "Groq refused the request (HTTP 400): check the model name, the prompt's length and max_tokens.",
            "Please reduce the length of the messages",
        ),
        (
            Behaviour(mode="status", status=404, error_message="The model `gpt-5` does not exist"),
            502,
            "bad_request",
            "Groq does not know this model or endpoint (HTTP 404): check the model name.",
            "The model `gpt-5` does not exist",
        ),
        (
            Behaviour(mode="status", status=500, error_message="Internal Server Error"),
            502,
            "server_error",
            "Groq failed to answer (HTTP 500): the problem is on its side; retry later.",
            "Internal Server Error",
        ),
        (
            # A proxy in front of Groq answering plain text rather than Groq's JSON.
            Behaviour(mode="status", status=503, raw_body="upstream connect error\n"),
            502,
            "server_error",
            "Groq failed to answer (HTTP 503): the problem is on its side; retry later.",
            "upstream connect error",
        ),
        (
            Behaviour(mode="status", status=418, error_message="I'm a teapot"),
            502,
            "other",
            "Groq answered HTTP 418, which the proxy does not expect.",
            "I'm a teapot",
        ),
    ],
    ids=["401", "403", "429", "400", "404", "500", "503-text", "418"],
)
def test_each_http_failure_has_a_human_message_and_the_vendors_words(
    api_client, fake_groq, behaviour, http_status, error_type, message, upstream
):
    fake_groq.will(behaviour)
    response = api_client.post(URL, {"prompt": "hello"}, format="json")
    assert response.status_code == http_status
    body = response.json()
    assert body == {
        "request_id": body["request_id"],
        "status": "error",
        "error_type": error_type,
        "error_message": message,
        "upstream_message": upstream,
        "retry_after_seconds": None,
    }
    assert "Retry-After" not in response
    row = LLMRequestLog.objects.get(request_id=body["request_id"])
    assert row.error_type == error_type
    assert row.error_message == f"{message} Groq said: {upstream}"
    no_repr(body["error_message"], body["upstream_message"], row.error_message)


@pytest.mark.parametrize(
    ("headers", "seconds", "header", "said"),
    [
        ({"retry-after": "7"}, 7.0, "7", "retry after 7 s"),
        ({"retry-after": "2.5"}, 2.5, "3", "retry after 3 s"),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5, "2", "retry after 2 s"),
    ],
    ids=["seconds", "fraction", "milliseconds-first"],
)
def test_rate_limit_says_how_long_to_wait(api_client, fake_groq, headers, seconds, header, said):
    fake_groq.will(Behaviour(mode="status", status=429, error_message="Rate limit reached", headers=headers))
    response = api_client.post(URL, {"prompt": "hello"}, format="json")
    assert response.status_code == 429
    body = response.json()
    assert body["retry_after_seconds"] == seconds
    assert response["Retry-After"] == header
    assert body["error_message"] == f"Groq is rate limiting this API key (HTTP 429): {said}."
    assert LLMRequestLog.objects.get().error_message == f"{body['error_message']} Groq said: Rate limit reached"


def test_timeout_names_the_setting_and_its_value(api_client, fake_groq, settings):
    settings.GROQ_TIMEOUT_SECONDS = 0.3
    fake_groq.will(Behaviour(delay_seconds=3))
    response = api_client.post(URL, {"prompt": "slow"}, format="json")
    assert response.status_code == 504
    body = response.json()
    message = (
        "Groq did not answer within GROQ_TIMEOUT_SECONDS = 0.3 s: retry, ask for fewer tokens (max_tokens), "
        "or raise GROQ_TIMEOUT_SECONDS."
    )
    assert (body["error_type"], body["error_message"], body["upstream_message"]) == ("timeout", message, None)
    assert LLMRequestLog.objects.get().error_message == message


def test_dropped_connection_names_the_address(api_client, fake_groq):
    fake_groq.will(Behaviour(mode="drop"))
    body = api_client.post(URL, {"prompt": "hello"}, format="json").json()
    assert body["error_type"] == "connection_error"
    assert body["error_message"].startswith(f"Could not reach Groq at GROQ_BASE_URL = {fake_groq.base_url} (")
    assert body["error_message"].endswith("check the address and this server's network, then retry.")
    assert "disconnected" in body["error_message"]  # what the transport said
    assert body["upstream_message"] is None
    assert LLMRequestLog.objects.get().error_message == body["error_message"]


def test_unreachable_address_says_connection_refused(api_client, fake_groq, settings):
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.GROQ_BASE_URL = f"http://127.0.0.1:{port}"
    response = api_client.post(URL, {"prompt": "hello"}, format="json")
    assert response.status_code == 502
    body = response.json()
    assert body["error_type"] == "connection_error"
    assert f"Could not reach Groq at GROQ_BASE_URL = http://127.0.0.1:{port}" in body["error_message"]
    assert "refused" in body["error_message"].lower()


def test_no_key_says_how_to_set_it(api_client, fake_groq, settings):
    settings.GROQ_API_KEY = ""
    response = api_client.post(URL, {"prompt": "hello"}, format="json")
    assert response.status_code == 503
    body = response.json()
    message = "No Groq API key is configured: set GROQ_API_KEY in .env (or the environment) and restart the server."
    assert (body["error_type"], body["error_message"], body["upstream_message"]) == ("configuration", message, None)
    assert LLMRequestLog.objects.get().error_message == message


def test_error_inside_a_stream_uses_the_same_message(api_client, fake_groq):
    fake_groq.will(Behaviour(mode="stream_error", text="a b c d", error_message="model overloaded"))
    response = api_client.post(URL, {"prompt": "hi", "stream": True}, format="json")
    name, data = parse_sse(b"".join(response.streaming_content))[-1]
    assert name == "error"
    message = "Groq reported an error in the middle of the answer: the problem is on its side; retry later."
    assert (data["error_type"], data["error_message"], data["upstream_message"]) == (
        "server_error",
        message,
        "model overloaded",
    )
    assert data["retry_after_seconds"] is None
    row = LLMRequestLog.objects.get(request_id=data["request_id"])
    assert row.error_message == f"{message} Groq said: model overloaded"
    no_repr(row.error_message)


def test_a_stream_cut_off_says_so(api_client, fake_groq):
    fake_groq.will(Behaviour(mode="drop_stream", text="a b c d e f"))
    response = api_client.post(URL, {"prompt": "hi", "stream": True}, format="json")
    name, data = parse_sse(b"".join(response.streaming_content))[-1]
    assert (name, data["error_type"]) == ("error", "connection_error")
    assert data["error_message"].startswith(f"The connection to Groq at GROQ_BASE_URL = {fake_groq.base_url}")
    assert "broke in the middle of the answer (" in data["error_message"]  # with what the transport said
    assert data["error_message"].endswith("): retry.")


def test_stream_refused_upfront_carries_retry_after(api_client, fake_groq):
    fake_groq.will(Behaviour(mode="status", status=429, error_message="slow down", headers={"retry-after": "12"}))
    response = api_client.post(URL, {"prompt": "hi", "stream": True}, format="json")
    assert response.status_code == 429
    assert response["Retry-After"] == "12"
    body = response.json()
    assert (body["retry_after_seconds"], body["upstream_message"]) == (12, "slow down")
    assert body["error_message"].endswith("retry after 12 s.")


def test_schema_documents_the_error_fields(api_client):
    document = yaml.safe_load(api_client.get("/api/schema/").content)
    post = document["paths"]["/api/llm/prompt/"]["post"]
    reference = post["responses"]["429"]["content"]["application/json"]["schema"]["$ref"]
    # A 429 is the provider's (this shape) or our own rate limit's (the plain error shape).
    shapes = document["components"]["schemas"][reference.rsplit("/", 1)[1]]["oneOf"]
    names = [shape["$ref"].rsplit("/", 1)[1] for shape in shapes]
    assert names == ["PromptError", "Error"]
    error = document["components"]["schemas"]["PromptError"]
    assert {"error_message", "upstream_message", "retry_after_seconds"} <= set(error["properties"])
    assert error["properties"]["upstream_message"]["nullable"] is True
    assert "Retry-After" in error["properties"]["retry_after_seconds"]["description"]


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        (None, None),
        ({}, None),
        ({"retry-after": "30"}, 30.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "4"}, 4.0),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "later"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
    ],
)
def test_retry_after_headers_are_read_leniently(headers, seconds):
    assert errors.retry_after(headers) == seconds


def test_retry_after_as_an_http_date():
    moment = datetime.now(UTC) + timedelta(seconds=90)
    assert 85 <= errors.retry_after({"retry-after": format_datetime(moment, usegmt=True)}) <= 90


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"error": {"message": "Invalid API Key", "type": "invalid_request_error"}}, "Invalid API Key"),
        ({"message": "model overloaded", "type": "internal_server_error"}, "model overloaded"),  # stream event
        ({"error": "quota exceeded"}, "quota exceeded"),
        ("Bad gateway\n\n  from nginx", "Bad gateway from nginx"),
        ("x" * 5000, "x" * 999 + "…"),
        ({"error": {"code": 42}}, None),
        ("   ", None),
        (None, None),
        (json.loads("[1, 2]"), None),
    ],
)
def test_the_vendors_words_are_taken_from_the_body(body, said):
    assert errors.vendor_message(body) == said


def test_every_upstream_error_type_has_its_message():
    spec_types = {"timeout", "rate_limit", "authentication", "bad_request", "server_error", "connection_error"}
    spec_types |= {"configuration", "other"}
    assert spec_types <= set(errors.MESSAGES)
    upstream = errors.Upstream(
        "Groq", "GROQ_API_KEY", "GROQ_BASE_URL", "https://api.groq.com", "GROQ_TIMEOUT_SECONDS", 30
    )
    messages = {errors.explain(error_type, upstream) for error_type in spec_types}
    assert len(messages) == len(spec_types)  # no two types say the same thing
