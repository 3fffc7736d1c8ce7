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
from django.db import connection
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
# Per operation and mode: 28 operations x 2 modes x 10 requests take about 45 s on 2 cores.
EXAMPLES = {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 10}


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


def fuzz(operation, mode: GenerationMode, base_url: str, session: requests.Session) -> tuple[list[int], list[str]]:
    """Send `EXAMPLES[mode]` generated requests to one operation: the status codes answered, and
    each failed check's report."""
    statuses, failures = [], []

    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(base_url=base_url, session=session, timeout=30)
        statuses.append(response.status_code)
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            failures.append(str(group)[:3000])

    run()
    return statuses, failures


@pytest.fixture
def short_lived_connections():
    """The live server answers each request in a new thread: with CONN_MAX_AGE its connection would
    outlive the thread, and PostgreSQL could not drop the test database at the end."""
    settings_dict = connection.settings_dict
    saved = settings_dict["CONN_MAX_AGE"]
    settings_dict["CONN_MAX_AGE"] = 0
    yield
    settings_dict["CONN_MAX_AGE"] = saved


def test_every_operation_answers_as_documented(live_server, api_key, fake_groq, short_lived_connections):
    seed_rows()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key}"
    # One connection per request: the test server (Django's threaded WSGI server) does not read the
    # rest of a body an endpoint refused early, and on a kept-alive connection those bytes would be
    # taken for the next request line (an HTML error with no status line, a transport failure).
    session.headers["Connection"] = "close"
    document = session.get(f"{live_server.url}/api/schema/?format=json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    failures: dict[str, list[str]] = {}
    answered: dict[str, list[int]] = {}
    started = time.monotonic()
    for operation in operations:
        for mode in EXAMPLES:
            statuses, found = fuzz(operation, mode, live_server.url, session)
            answered.setdefault(operation.label, []).extend(statuses)
            if found:
                failures[f"{operation.label} [{mode.value}]"] = found
    elapsed = time.monotonic() - started
    report = "\n".join(f"== {label}: {len(items)} failing\n{items[0]}" for label, items in failures.items())
    assert not failures, report

    # Every operation of the document was fuzzed, and each list and figure answered 2xx at least once.
    documented = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}
    assert set(answered) == documented
    assert min(len(statuses) for statuses in answered.values()) >= 2
    reads = [label for label in answered if label.startswith("GET ") and "{" not in label]
    assert len(reads) >= 15
    assert [label for label in reads if not any(200 <= status < 300 for status in answered[label])] == []
    print(f"{sum(map(len, answered.values()))} requests to {len(answered)} operations in {elapsed:.1f} s")
