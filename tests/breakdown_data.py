"""Seeded calls with sessions, tags and sources for the breakdown, session and user tests, and
the same selections made in plain Python (the independent side of each comparison)."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from decimal import Decimal

from llm.models import LLMRequestLog
from tests.factories import build_log
from tests.read_api_data import ERROR_TYPES, MODELS, NOW

USERS = ["u-1", "u-2", "u-3", "u-4", "u-5", ""]
FEATURES = ["summarize", "chat", "classify", "extract"]
SOURCES = [LLMRequestLog.Source.PROXY, LLMRequestLog.Source.API, LLMRequestLog.Source.OTLP]


def random_tags(rng: random.Random) -> dict[str, str]:
    tags = {}
    if rng.random() < 0.8:
        tags["feature"] = rng.choice(FEATURES)
    if rng.random() < 0.7:
        tags["env"] = rng.choice(["prod", "staging"])
    if rng.random() < 0.1:
        tags["a.b__c"] = "odd key"  # a key a path lookup would misread
    return tags


def make_session_logs(count: int = 240, *, seed: int = 11, days: float = 6) -> list[LLMRequestLog]:
    """Calls in sessions of 1 to 8 calls (one user each, increasing timestamps), a few without a
    session; tags, sources, errors, costs and latencies drawn from `seed`. Sessions start between
    `days` and one hour before NOW, so they all end before it."""
    rng = random.Random(seed)
    logs: list[LLMRequestLog] = []
    session_number = 0
    while len(logs) < count:
        session_number += 1
        session_id = f"s-{session_number:03d}" if rng.random() < 0.85 else ""
        user_id = rng.choice(USERS)
        moment = NOW - timedelta(seconds=rng.randint(3600, int(days * 86400)))
        for _ in range(rng.randint(1, 8)):
            moment += timedelta(seconds=rng.randint(5, 300))
            failed = rng.random() < 0.15
            prompt_tokens = rng.randint(0, 2000)
            completion_tokens = 0 if failed else rng.randint(0, 800)
            logs.append(
                build_log(
                    request_id=uuid.UUID(int=rng.getrandbits(128)),
                    timestamp=moment,
                    model_name=rng.choice(MODELS),
                    user_id=user_id,
                    session_id=session_id,
                    source=rng.choice(SOURCES),
                    prompt_text=f"question {len(logs)}",
                    response_text="" if failed else f"answer {len(logs)}",
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    latency_ms=round(rng.lognormvariate(6.5, 0.8), 3),
                    cost_estimate=Decimal(rng.randint(0, 10**7)) / Decimal(10**10),
                    status=LLMRequestLog.Status.ERROR if failed else LLMRequestLog.Status.SUCCESS,
                    error_type=rng.choice(ERROR_TYPES) if failed else "",
                    error_message="boom" if failed else "",
                    tags=random_tags(rng),
                )
            )
    LLMRequestLog.objects.bulk_create(logs)
    return logs


def has_tags(log: LLMRequestLog, tags: list[str]) -> bool:
    """`tag=key:value` / `tag=key` semantics, in Python: all must match."""
    for tag in tags:
        key, colon, value = tag.partition(":")
        if key not in log.tags or (colon and log.tags[key] != value):
            return False
    return True


def pick(logs: list[LLMRequestLog], *, tags: tuple[str, ...] = (), **fields: str) -> list[LLMRequestLog]:
    """The rows the filters keep: each field equal, every tag matching."""
    return [
        log
        for log in logs
        if all(getattr(log, name) == value for name, value in fields.items()) and has_tags(log, list(tags))
    ]


def group_key(log: LLMRequestLog, by: str) -> str:
    if by.startswith("tag:"):
        return log.tags.get(by[4:], "")
    return getattr(log, {"model": "model_name", "user": "user_id", "session": "session_id"}.get(by, by))
