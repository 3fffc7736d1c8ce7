"""Schema fuzzing: schemathesis sends generated requests, valid and invalid, to every operation of
/api/schema/ on the live test server, and every answer must be what the document says.

Checks: no 5xx (not_a_server_error), the status code is one the operation documents, the
content type is a documented one, the body matches the documented schema, documented headers
are there. Bounded (a fixed number of examples per operation and generation mode, no shrinking)
and derandomized, so a run takes the same requests every time.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import requests
import schemathesis
from django.utils import timezone
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from llm.models import LLMRequestLog
from tests.factories import make_alert, make_feedback, make_logs, make_rule

pytestmark = pytest.mark.django_db(transaction=True)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES = {GenerationMode.POSITIVE: 15, GenerationMode.NEGATIVE: 15}


def seed_rows() -> None:
    now = timezone.now()
    logs = make_logs(
        30,
        timestamp=lambda index: now - timedelta(minutes=7 * index),
        prompt_tokens=10,
        completion_tokens=5,
        latency_ms=lambda index: 100.0 + index,
        status=lambda index: LLMRequestLog.Status.ERROR if index % 5 == 0 else LLMRequestLog.Status.SUCCESS,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id=lambda index: f"{index + 1:016x}",
    )
    make_feedback(logs[1])
    rule = make_rule()
    make_alert(rule)


def fuzz(operation, mode: GenerationMode, base_url: str, session: requests.Session) -> tuple[int, list[str]]:
    """Send `EXAMPLES[mode]` generated requests to one operation; the requests sent and the failures."""
    sent, failures = [], []

    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        sent.append(case)
        response = case.call(base_url=base_url, session=session, timeout=30)
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            failures.append(str(group)[:3000])

    run()
    return len(sent), failures


def test_every_operation_answers_as_documented(live_server, api_key, fake_groq):
    seed_rows()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key}"
    document = session.get(f"{live_server.url}/api/schema/?format=json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    failures: dict[str, list[str]] = {}
    sent = 0
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in EXAMPLES:
            count, found = fuzz(operation, mode, live_server.url, session)
            sent += count
            if found:
                failures[f"{operation.label} [{mode.value}]"] = found
    print(f"{sent} requests in {time.monotonic() - started:.1f} s")
    report = "\n".join(f"== {label}: {len(items)}\n{items[0]}" for label, items in failures.items())
    assert not failures, report
