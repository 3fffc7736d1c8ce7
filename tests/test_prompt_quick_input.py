"""The fast path's own reading of a prompt body (llm.api.prompt.quick_prompt_data): for every input it
either says nothing (None: the serializer judges) or gives exactly the validated data
PromptRequestSerializer gives, and it takes the plain bodies real clients send."""

from __future__ import annotations

import math
import random

import pytest

from llm.api.prompt import PromptInput, quick_prompt_data

pytestmark = pytest.mark.django_db

PLAIN = [
    {"prompt": "hello"},
    {"prompt": "What is the capital of France?", "model": "llama-3.1-8b-instant"},
    {"prompt": "  spaces kept  ", "model": "llama-3.1-8b-instant", "max_tokens": 64, "temperature": 0.5},
    {"prompt": "x", "temperature": 1, "stream": True, "system_prompt": "", "user_id": "", "session_id": "s-1"},
    {"prompt": "tagged é ✓", "tags": {"team": "search", "env": "prod"}, "user_id": "u1", "stream": False},
    {"prompt": "x", "system_prompt": "be brief", "provider": "groq", "model": "some-unlisted-model"},
    {"prompt": "x", "unknown_field": [1, 2], "max_tokens": 32_768, "temperature": 2.0},
    {"prompt": "x", "system_prompt": "   ", "tags": {}, "temperature": 0},
]

# Valid or not, each of these needs the serializer: a refusal, or a value the serializer converts.
ODD = [
    {},
    [],
    "prompt",
    {"prompt": ""},
    {"prompt": "   "},
    {"prompt": None},
    {"prompt": 5},
    {"prompt": True},
    {"prompt": "nul \x00 inside"},
    {"prompt": "lone \ud800 surrogate"},
    {"prompt": "x" * 100_001},
    {"prompt": "x", "model": " llama-3.1-8b-instant "},
    {"prompt": "x", "model": "no such model!"},
    {"prompt": "x", "model": "unknown-model-xyz"},
    {"prompt": "x", "model": "m" * 201},
    {"prompt": "x", "model": ""},
    {"prompt": "x", "user_id": " padded "},
    {"prompt": "x", "user_id": "u" * 201},
    {"prompt": "x", "user_id": 12},
    {"prompt": "x", "session_id": "\x00"},
    {"prompt": "x", "max_tokens": 0},
    {"prompt": "x", "max_tokens": 2**31},
    {"prompt": "x", "max_tokens": "64"},
    {"prompt": "x", "max_tokens": 64.0},
    {"prompt": "x", "max_tokens": True},
    {"prompt": "x", "temperature": math.nan},
    {"prompt": "x", "temperature": math.inf},
    {"prompt": "x", "temperature": 9},
    {"prompt": "x", "temperature": -0.1},
    {"prompt": "x", "temperature": "0.5"},
    {"prompt": "x", "temperature": False},
    {"prompt": "x", "provider": "nobody"},
    {"prompt": "x", "provider": ""},
    {"prompt": "x", "tags": ["not", "a", "dict"]},
    {"prompt": "x", "tags": {"k": 1}},
    {"prompt": "x", "tags": {"": "v"}},
    {"prompt": "x", "tags": {"k" * 101: "v"}},
    {"prompt": "x", "tags": {"k": "v" * 501}},
    {"prompt": "x", "tags": {f"k{number}": "v" for number in range(51)}},
    {"prompt": "x", "tags": {"k": "\ud800"}},
    {"prompt": "x", "tags": None},
    {"prompt": "x", "stream": "true"},
    {"prompt": "x", "stream": 1},
    {"prompt": "x", "stream": None},
]


def serializers_verdict(document: object) -> dict | None:
    serializer = PromptInput(data=document)
    return dict(serializer.validated_data) if serializer.is_valid() else None


def test_plain_bodies_are_read_quickly_to_the_serializers_data():
    for document in PLAIN:
        expected = serializers_verdict(document)
        assert expected is not None, document
        assert quick_prompt_data(document) == expected, document


def test_every_other_body_is_left_to_the_serializer():
    for document in ODD:
        assert quick_prompt_data(document) is None, document
    assert sum(serializers_verdict(document) is None for document in ODD) >= 30  # most are refusals


VALUES = [
    "",
    " ",
    "x",
    " x ",
    "llama-3.1-8b-instant",
    "groq",
    "openai",
    "\x00",
    "\ud800",
    "é",
    0,
    1,
    -1,
    2,
    64,
    2**31,
    0.5,
    2.5,
    math.nan,
    True,
    False,
    None,
    [],
    {},
    {"k": "v"},
    {"k": 1},
]
FIELDS = ["prompt", "model", "system_prompt", "user_id", "session_id", "max_tokens", "temperature", "tags"]
FIELDS += ["stream", "provider", "other"]


def test_random_bodies_quick_or_not_agree_with_the_serializer():
    chooser = random.Random(15)
    quick_ones = 0
    for _ in range(600):
        document = {"prompt": chooser.choice(["hi", " hi ", "", 3])}
        for name in chooser.sample(FIELDS, chooser.randint(0, 4)):
            document[name] = chooser.choice(VALUES)
        quick = quick_prompt_data(document)
        if quick is not None:
            quick_ones += 1
            assert quick == serializers_verdict(document), document
    assert quick_ones >= 30  # the comparison above did run on quick answers
