"""POST /v1/traces authenticates through the API's own APIKeyAuthentication (llm/auth.py): the
same keys, and every missing or bad key answers 401 in the request's OTLP encoding."""

from __future__ import annotations

import json

import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from llm.models import APIKey

pytestmark = pytest.mark.django_db

URL = "/v1/traces"
EMPTY_EXPORT = json.dumps({"resourceSpans": []})


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer llmo_not_a_key", "Basic dXNlcjpwYXNz", "Token abc"],
    ids=["absent", "blank", "scheme only", "empty key", "unknown key", "basic", "other scheme"],
)
def test_a_missing_or_bad_key_is_401_in_json(client, authorization):
    extra = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    response = client.post(URL, EMPTY_EXPORT, content_type="application/json", **extra)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json()["code"] == code_pb2.UNAUTHENTICATED


def test_a_bad_key_is_401_in_protobuf(client):
    body = ExportTraceServiceRequest().SerializeToString()
    response = client.post(URL, body, content_type="application/x-protobuf", HTTP_AUTHORIZATION="Bearer nope")
    assert response.status_code == 401
    status = status_pb2.Status.FromString(response.content)
    assert status.code == code_pb2.UNAUTHENTICATED and "Bearer" in status.message


def test_a_revoked_key_is_401_and_a_live_one_is_taken(client):
    api_key, raw_key = APIKey.generate("collector")
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {raw_key}"}
    assert client.post(URL, EMPTY_EXPORT, content_type="application/json", **bearer).status_code == 200
    # The scheme is case-insensitive, as for every API endpoint.
    lower = {"HTTP_AUTHORIZATION": f"bearer {raw_key}"}
    assert client.post(URL, EMPTY_EXPORT, content_type="application/json", **lower).status_code == 200
    api_key.revoke()
    assert client.post(URL, EMPTY_EXPORT, content_type="application/json", **bearer).status_code == 401


def test_the_api_answers_the_same_keys(client, api_client):
    # One key check for both: what the API refuses, the receiver refuses.
    api_client.credentials(HTTP_AUTHORIZATION="Bearer llmo_not_a_key")
    assert api_client.get("/api/logs/").status_code == 401
    response = client.post(
        URL, EMPTY_EXPORT, content_type="application/json", HTTP_AUTHORIZATION="Bearer llmo_not_a_key"
    )
    assert response.status_code == 401
