"""The pages' id links (llm.templatetags.dashboard.id_url and the filters on it) are the URLs
reverse() makes, for awkward ids and under a script prefix; an id reverse() refuses is still
refused; the calls table renders as with {% url %}."""

from __future__ import annotations

import uuid

import pytest
from django.template import Context, Template
from django.urls import NoReverseMatch, reverse, set_script_prefix

from llm.templatetags.dashboard import id_url, log_url, trace_url, user_link
from tests.factories import build_log

IDS = ["abc", "user 1", "a/b/c", "é ü 漢字", "%41?x=1&y=<2>#f", "~:@!$'()*+,;=", "tab\there", "emoji-😀", "-"]
ROUTES = [("trace", "trace_id"), ("user", "user_id"), ("session", "session_id")]


@pytest.fixture(params=["/", "/sub path/"])
def script_prefix(request):
    set_script_prefix(request.param)
    yield request.param
    set_script_prefix("/")


@pytest.mark.parametrize(("url_name", "keyword"), ROUTES)
def test_an_id_url_is_the_reversed_url(script_prefix, url_name, keyword):
    for value in IDS:
        try:
            expected = reverse(url_name, kwargs={keyword: value})
        except NoReverseMatch:
            with pytest.raises(NoReverseMatch):
                id_url(url_name, keyword, value)
            continue
        assert id_url(url_name, keyword, value) == expected
        assert expected.startswith(script_prefix.replace(" ", "%20"))


def test_a_call_and_a_trace_link_are_the_reversed_urls(script_prefix):
    request_id = uuid.uuid4()
    assert log_url(request_id) == reverse("log-detail", args=[request_id])
    assert trace_url("t-1 x") == reverse("trace", args=["t-1 x"])
    assert str(user_link("u/1")).count(reverse("user", args=["u/1"])) == 1
    with pytest.raises(NoReverseMatch):  # a trace id with "/" has no page, as before
        trace_url("a/b")


def test_the_calls_table_renders_as_with_url_tags():
    rows = [build_log(request_id=uuid.uuid4(), trace_id=trace, user_id="u 1") for trace in ["", "t<1>", "é"]]
    old = Template(
        "{% for log in rows %}{% url 'log-detail' log.request_id %}|"
        "{% if log.trace_id %}{% url 'trace' log.trace_id %}{% endif %};{% endfor %}"
    )
    new = Template(
        "{% load dashboard %}{% for log in rows %}{{ log.request_id|log_url }}|"
        "{% if log.trace_id %}{{ log.trace_id|trace_url }}{% endif %};{% endfor %}"
    )
    expected = old.render(Context({"rows": rows}))
    assert new.render(Context({"rows": rows})) == expected
    assert expected.count("/logs/") == 3 and expected.count("/traces/") == 2
