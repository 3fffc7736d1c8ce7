"""Seeded random logs for the read-side tests, and the same figures recomputed in plain Python."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.utils import timezone

from llm.models import LLMRequestLog
from tests.factories import build_log

MODELS = ["llama-3.1-8b-instant", "llama-3.3-70b-versatile", "openai/gpt-oss-20b", "unpriced-model"]
USERS = ["u-1", "u-2", "u-3", "u-4", ""]
ERROR_TYPES = ["timeout", "rate_limit", "server_error"]
# A fixed "now" so windows and periods do not depend on when the tests run.
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=ZoneInfo("UTC"))


def make_logs(count: int = 400, *, seed: int = 7, days: int = 40) -> list[LLMRequestLog]:
    rng = random.Random(seed)
    logs = []
    for _ in range(count):
        failed = rng.random() < 0.15
        prompt_tokens = rng.randint(0, 2000)
        completion_tokens = 0 if failed else rng.randint(0, 800)
        logs.append(
            build_log(
                request_id=uuid.UUID(int=rng.getrandbits(128)),
                timestamp=NOW - timedelta(seconds=rng.randint(0, days * 86400)),
                model_name=rng.choice(MODELS),
                user_id=rng.choice(USERS),
                prompt_text=rng.choice(["hello", "=SUM(A1)", 'quote " and\nnewline', "naïve café ☕"]),
                response_text="" if failed else rng.choice(["ok", "+1 call", "fine"]),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_ms=round(rng.lognormvariate(6.5, 0.8), 3),
                cost_estimate=Decimal(rng.randint(0, 10**7)) / Decimal(10**10),
                status=LLMRequestLog.Status.ERROR if failed else LLMRequestLog.Status.SUCCESS,
                error_type=rng.choice(ERROR_TYPES) if failed else "",
                error_message=f"boom {rng.randint(1, 9)}" if failed else "",
            )
        )
    LLMRequestLog.objects.bulk_create(logs)
    return logs


def select(logs, *, start=None, end=None, model=None, status=None, user_id=None) -> list[LLMRequestLog]:
    """The rows a filter keeps, chosen in Python: the independent side of the comparison."""
    return [
        log
        for log in logs
        if (start is None or log.timestamp >= start)
        and (end is None or log.timestamp < end)
        and (model is None or log.model_name == model)
        and (status is None or log.status == status)
        and (user_id is None or log.user_id == user_id)
    ]


def period_key(moment: datetime, group_by: str) -> str:
    local = timezone.localtime(moment)
    if group_by == "hour":
        local = local.replace(minute=0, second=0, microsecond=0)
    elif group_by == "day":
        local = local.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        local = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return local.isoformat()
