"""The pages' filter bar takes several tags (the API's `tag` is repeatable; all must match): each
given tag keeps its own field, links keep every tag, and a page under one tag value reads the
breakdown roll-ups like the API does."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from llm import rollups
from tests.factories import make_logs

pytestmark = pytest.mark.django_db

FEATURES = ["chat", "chat", "search", "chat"]
ENVS = ["prod", "staging", "prod", "prod"]
COUNT = 240  # 120 calls with both tags: three pages of the logs page's 50


@pytest.fixture
def tagged(db):
    now = timezone.now()
    return make_logs(
        COUNT,
        timestamp=lambda index: now - timedelta(minutes=1 + index),
        tags=lambda index: {"feature": FEATURES[index % 4], "env": ENVS[index % 4]},
        prompt_text=lambda index: f"prompt number {index}",
    )


def shown_prompts(html: str) -> set[int]:
    return {int(number) for number in re.findall(r"prompt number (\d+)", html)}


def test_logs_page_applies_every_tag_and_keeps_them_in_its_fields_and_links(logged_in_client, tagged):
    answer = logged_in_client.get("/logs/", {"range": "7d", "tag": ["feature:chat", "env:prod"]})
    assert answer.status_code == 200
    html = answer.content.decode()
    expected = {index for index in range(COUNT) if FEATURES[index % 4] == "chat" and ENVS[index % 4] == "prod"}
    assert len(expected) == 120
    assert shown_prompts(html) <= expected and shown_prompts(html)
    # One field per given tag, then an empty one to add another.
    assert re.findall(r'name="tag" value="([^"]*)"', html) == ["feature:chat", "env:prod", ""]
    # The next page keeps both tags.
    next_links = re.findall(r'href="(\?[^"]*page=2[^"]*)"', html)
    assert next_links and all("tag=feature%3Achat" in link and "tag=env%3Aprod" in link for link in next_links)
    seen: set[int] = set()
    for page in (1, 2, 3):
        params = {"range": "7d", "tag": ["feature:chat", "env:prod"], "page": page}
        seen |= shown_prompts(logged_in_client.get("/logs/", params).content.decode())
    assert seen == expected


def test_an_empty_tag_field_is_ignored_and_a_bad_one_named(logged_in_client, tagged):
    answer = logged_in_client.get("/logs/", {"range": "7d", "tag": ["feature:search", ""]})
    expected = {index for index in range(COUNT) if FEATURES[index % 4] == "search"}
    assert len(expected) == 60 and shown_prompts(answer.content.decode()) <= expected
    assert len(shown_prompts(answer.content.decode())) == 50
    bad = logged_in_client.get("/logs/", {"range": "7d", "tag": ["feature:", "env:prod"]})
    assert bad.status_code == 200 and b"<strong>tag</strong>" in bad.content


def test_analytics_under_one_tag_value_breaks_down_from_the_roll_ups(logged_in_client, tagged):
    rollups.roll_up(limit=None)
    params = {"range": "7d", "by": "model", "tag": "feature:chat"}
    html = logged_in_client.get("/analytics/", params).content.decode()
    calls = sum(1 for index in range(COUNT) if FEATURES[index % 4] == "chat")
    assert f">{calls}<" in html  # the breakdown's requests for the one model
