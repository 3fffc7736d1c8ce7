"""The Content-Security-Policy in a real Chromium: no page (charts drawn, Swagger UI loaded, a trace
indented) triggers a single violation."""

from __future__ import annotations

import pytest

from llm.models import LLMRequestLog
from tests.factories import make_logs

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Added before any of the page's own scripts run (through the DevTools protocol, not a <script>).
COLLECT_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(`${event.violatedDirective} ${event.blockedURI} ${event.sourceFile}:${event.lineNumber}`);
});
"""


def test_no_page_violates_the_policy(page_for, live_server, model_prices):
    make_logs(40, model_name=lambda i: ["llama-3.1-8b-instant", "qwen/qwen3-32b"][i % 2], latency_ms=lambda i: 100 + i)
    calls = list(LLMRequestLog.objects.order_by("id")[:3])
    spans = [("1" * 16, ""), ("2" * 16, "1" * 16), ("3" * 16, "2" * 16)]
    for call, (span_id, parent) in zip(calls, spans, strict=True):
        LLMRequestLog.objects.filter(pk=call.pk).update(trace_id="cd" * 16, span_id=span_id, parent_span_id=parent)
    page = page_for()
    page.add_init_script(COLLECT_VIOLATIONS)
    paths = ["/", "/analytics/", "/logs/", "/feedback/", "/alerts/", "/playground/", "/api/docs/"]
    paths += [f"/logs/{calls[0].request_id}/", f"/traces/{'cd' * 16}/", "/accounts/logout/"]
    violations = {}
    for path in paths:
        if path == "/accounts/logout/":
            page.goto(f"{live_server.url}/")
            page.click("text=Log out")
            page.wait_for_url("**/accounts/login/")
        else:
            page.goto(f"{live_server.url}{path}")
        page.wait_for_load_state("networkidle")
        violations[path] = page.evaluate("() => window.cspViolations")
        if path == "/":
            assert page.locator("canvas").count() > 0
            # Chart.js drew (its canvas styles are set from script, which the policy allows).
            assert page.evaluate("() => document.querySelector('canvas').width > 0")
        if path == "/api/docs/":
            page.wait_for_selector(".opblock", timeout=10_000)  # Swagger UI rendered the operations
            violations[path] = page.evaluate("() => window.cspViolations")
        if path.startswith("/traces/"):
            depths = page.eval_on_selector_all(
                ".waterfall li[data-depth] .wf-label", "items => items.map(i => getComputedStyle(i).paddingLeft)"
            )
            assert depths[0] != depths[1] != depths[2] and depths[0] == "0px"
    assert violations == dict.fromkeys(paths, [])
    assert not [problem for problem in page.problems if "Content Security Policy" in problem], page.problems
