"""The fast path's serializer (llm.api.prompt.LoopPromptInput) reuses one set of bound fields: it
must accept, refuse and clean every input exactly as PromptInput does, one input after another
(a refusal must leave nothing behind for the next input)."""

from __future__ import annotations

import math

import pytest

from llm.api.prompt import LoopPromptInput, PromptInput

pytestmark = pytest.mark.django_db

DOCUMENTS = [
    {"prompt": "hello"},
    {"prompt": "hello", "model": "llama-3.1-8b-instant", "max_tokens": 64, "temperature": 0.5, "stream": True},
    {"prompt": "tagged", "tags": {"team": "a", "env": "prod"}, "user_id": "u1", "session_id": "s1"},
    {"prompt": "   "},
    {"prompt": ""},
    {},
    {"prompt": "x", "max_tokens": 0},
    {"prompt": "x", "max_tokens": 2**31},
    {"prompt": "x", "temperature": math.nan},
    {"prompt": "x", "temperature": 9},
    {"prompt": "x", "model": "no such model!"},
    {"prompt": "x", "model": "unknown-model-xyz"},
    {"prompt": "x", "provider": "nobody"},
    {"prompt": "x", "tags": ["not", "a", "dict"]},
    {"prompt": "x", "stream": "maybe"},
    {"prompt": "nul \x00 inside"},
    {"prompt": "x", "system_prompt": "be brief", "provider": "groq", "model": "some-unlisted-model"},
    {"prompt": "back to a valid one", "tags": {"k": "v"}},
]


def verdict(serializer_class: type, document: dict) -> tuple:
    serializer = serializer_class(data=dict(document))
    valid = serializer.is_valid()
    return valid, dict(serializer.validated_data) if valid else serializer.errors


def test_the_loops_serializer_judges_every_input_as_the_views():
    expected = [verdict(PromptInput, document) for document in DOCUMENTS]
    # Twice over, in order: the shared fields carry nothing from one input to the next.
    for _ in range(2):
        assert [verdict(LoopPromptInput, document) for document in DOCUMENTS] == expected
    assert [valid for valid, _ in expected].count(True) >= 4 and [valid for valid, _ in expected].count(False) >= 8
