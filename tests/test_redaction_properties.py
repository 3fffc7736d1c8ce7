"""Properties of llm/redaction.py over generated text (hypothesis): never raises, is idempotent,
and always replaces an e-mail address, whatever surrounds it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm.redaction import redact

pytestmark = pytest.mark.one_database  # plain functions, no database

BOUNDED = settings(max_examples=100, deadline=None)

# Text that looks like the things redaction hunts for, mixed with anything at all.
FRAGMENTS = st.sampled_from(
    ["@", ".", "+", "-", " ", "\n", "Bearer ", "sk-", "gsk_", "4111 1111 1111 1111", "GB82 WEST", "192.168.", "::1"]
)
TEXT = st.lists(st.one_of(st.text(max_size=20), FRAGMENTS, st.emails()), max_size=12).map("".join)
# Separators that end an address for every reader: whitespace and punctuation around it.
SEPARATORS = st.sampled_from([" ", "\n", ", ", "; ", " (", ") ", ": "])


@BOUNDED
@given(TEXT)
def test_redact_never_raises_and_answers_text(text):
    assert isinstance(redact(text), str)


@BOUNDED
@given(TEXT)
def test_redacting_twice_is_redacting_once(text):
    once = redact(text)
    assert redact(once) == once


@BOUNDED
@given(
    before=st.text(alphabet=st.characters(codec="ascii"), max_size=15),
    email=st.builds(
        "{}@{}".format,
        # Addresses as people write them: letters or digits at both ends of the local part.
        st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9._%+-]{0,15}[A-Za-z0-9])?\Z"),
        st.from_regex(r"\A[a-z0-9]{1,10}(\.[a-z0-9]{1,8})?\.(com|org|io|de|museum)\Z"),
    ),
    separator=SEPARATORS,
    after=st.text(max_size=15),
)
def test_an_email_address_is_always_replaced(before, email, separator, after):
    text = f"{before}{separator}{email}{separator}{after}"
    redacted = redact(text)
    assert email not in redacted
    assert "[EMAIL]" in redacted
    assert not re.search(re.escape(email), redacted)
