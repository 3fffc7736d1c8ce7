"""The playground in a real headless Chromium when a prompt fails: the human message, Groq's own
words, and a link to the call it logged; and the models it offers."""

from __future__ import annotations

import pytest

from llm.models import LLMRequestLog, UserFeedback
from tests.fake_groq import Behaviour

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def send(page, live_server, prompt: str = "Hello?") -> None:
    page.goto(f"{live_server.url}/playground/")
    page.fill("#pg-prompt", prompt)
    page.click("#pg-send")
    page.wait_for_selector("#pg-error-more:not([hidden])")


def test_a_refused_prompt_links_to_its_logged_call(page_for, live_server, fake_groq, model_prices):
    fake_groq.default = Behaviour(
        mode="status", status=429, error_message="Rate limit reached for model", headers={"retry-after": "20"}
    )
    page = page_for()
    send(page, live_server)
    log = LLMRequestLog.objects.get()
    assert page.text_content("#pg-error") == "Groq is rate limiting this API key (HTTP 429): retry after 20 s."
    assert page.is_visible("#pg-upstream")
    assert page.text_content("#pg-upstream-text") == "Rate limit reached for model"
    assert page.is_hidden("#pg-figures") and page.is_hidden("#pg-rate")
    # The only problem the browser saw is the 429 answer itself.
    assert page.problems and all("429" in problem for problem in page.problems)
    page.click("#pg-error-link")
    page.wait_for_url(f"{live_server.url}/logs/{log.request_id}/")
    assert log.error_message in page.text_content("main")
    assert "Groq said: Rate limit reached for model" in page.text_content("main")


def test_a_failure_in_the_middle_of_the_stream_links_to_its_logged_call(page_for, live_server, fake_groq, model_prices):
    fake_groq.default = Behaviour(
        mode="stream_error", chunks=["Once", " upon", " a", " time"], error_message="overloaded"
    )
    page = page_for()
    send(page, live_server)
    log = LLMRequestLog.objects.get()
    assert page.text_content("#pg-answer") == "Once upon"
    assert page.text_content("#pg-error").startswith("Groq reported an error in the middle of the answer")
    assert page.text_content("#pg-upstream-text") == "overloaded"
    page.click("#pg-error-link")
    page.wait_for_url(f"{live_server.url}/logs/{log.request_id}/")
    assert "Groq said: overloaded" in page.text_content("main")
    assert page.problems == []


def test_a_failure_without_vendor_words_hides_them_and_a_success_clears_the_error(
    page_for, live_server, fake_groq, model_prices, settings
):
    settings.GROQ_TIMEOUT_SECONDS = 0.3
    fake_groq.will(Behaviour(delay_seconds=3))
    page = page_for()
    send(page, live_server)
    assert page.text_content("#pg-error").startswith("Groq did not answer within GROQ_TIMEOUT_SECONDS = 0.3 s")
    assert page.is_hidden("#pg-upstream")
    page.click("#pg-send")  # the next prompt answers (the fake's default)
    page.wait_for_selector("#pg-figures:not([hidden])")
    assert page.text_content("#pg-error") == ""
    assert page.is_hidden("#pg-error-more")
    assert all("504" in problem for problem in page.problems)


def test_rating_twice_keeps_one_rating(page_for, live_server, fake_groq, model_prices, settings):
    fake_groq.default = Behaviour(chunks=["Bon", "jour"])
    page = page_for()
    page.goto(f"{live_server.url}/playground/")
    assert page.input_value("#pg-model") == settings.GROQ_DEFAULT_MODEL
    page.fill("#pg-prompt", "Say hello in French")
    page.click("#pg-send")
    page.wait_for_selector("#pg-rate:not([hidden])")
    page.click("button[data-rating=thumbs_up]")
    page.wait_for_selector("#pg-rated:has-text('Thanks, saved.')")
    page.click("button[data-rating=thumbs_down]")
    page.wait_for_selector("#pg-rated:has-text('updated')")
    log = LLMRequestLog.objects.get()
    assert list(UserFeedback.objects.filter(request=log).values_list("rater", "rating")) == [("alice", "thumbs_down")]
    assert page.problems == []
