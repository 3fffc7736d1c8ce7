"""Rows for tests: small `make_*` functions with plain defaults.

A test passes every value it asserts on, so the figures it checks stay visible in the test; the
defaults here only fill what the model requires. `make_logs` takes, for any field, either a value
or a function of the row's index (`timestamp=lambda index: now - timedelta(seconds=index)`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from llm.models import AlertLog, AlertRule, APIKey, LLMRequestLog, TraceSpan, UserFeedback

DEFAULT_MODEL = "llama-3.1-8b-instant"

_rule_numbers = itertools.count(1)


def build_log(**overrides: Any) -> LLMRequestLog:
    """An unsaved call: a success of DEFAULT_MODEL unless told otherwise.

    An error gets error_type "server_error" unless one is given; total_tokens is the sum of the
    prompt and completion tokens unless given.
    """
    fields: dict[str, Any] = {"model_name": DEFAULT_MODEL, **overrides}
    if fields.get("status") == LLMRequestLog.Status.ERROR:
        fields.setdefault("error_type", LLMRequestLog.ErrorType.SERVER_ERROR)
    fields.setdefault("total_tokens", fields.get("prompt_tokens", 0) + fields.get("completion_tokens", 0))
    return LLMRequestLog(**fields)


def make_log(**overrides: Any) -> LLMRequestLog:
    """One stored call (see build_log for the defaults)."""
    log = build_log(**overrides)
    log.save(force_insert=True)
    return log


def make_logs(count: int, **overrides: Any | Callable[[int], Any]) -> list[LLMRequestLog]:
    """`count` stored calls in one INSERT; a callable value is called with each row's index."""
    logs = [
        build_log(**{name: value(index) if callable(value) else value for name, value in overrides.items()})
        for index in range(count)
    ]
    return LLMRequestLog.objects.bulk_create(logs)


def random_calls(
    rng: random.Random,
    count: int,
    *,
    failure_share: float,
    timestamp: Callable[[int], datetime],
    models: Sequence[str],
    error_types: Sequence[str] = (),
    message: str = "message {}",
    **fields: Any | Callable[[int], Any],
) -> list[LLMRequestLog]:
    """`count` stored calls drawn from `rng`, always in this order (a seed draws the same calls):
    whether each call failed (`failure_share`), then per call its `timestamp`, model, error type
    (a failure's, when `error_types` are given: its message is `message` with the call's index)
    and `fields` in their order (make_logs' values: draws from `rng`, such as drawn_traffic's)."""
    failed = [rng.random() < failure_share for _ in range(count)]
    failures = {}
    if error_types:
        failures = {
            "error_type": lambda index: rng.choice(error_types) if failed[index] else "",
            "error_message": lambda index: message.format(index) if failed[index] else "",
        }
    return make_logs(
        count,
        timestamp=timestamp,
        model_name=lambda index: rng.choice(models),
        status=lambda index: "error" if failed[index] else "success",
        **failures,
        **fields,
    )


def drawn_traffic(
    rng: random.Random, prompt: int = 2000, completion: int = 800, sigma: float = 0.8, cost: int = 5_000_000
) -> dict[str, Callable[[int], Any]]:
    """A call's tokens (uniform up to `prompt` and `completion`), latency (log-normal around
    e^6 ms, `sigma`) and cost (uniform up to `cost` / 10^10 USD), drawn from `rng` in this order."""
    return {
        "prompt_tokens": lambda index: rng.randint(0, prompt),
        "completion_tokens": lambda index: rng.randint(0, completion),
        "latency_ms": lambda index: rng.lognormvariate(6, sigma),
        "cost_estimate": lambda index: drawn_cost(rng, cost),
    }


def drawn_cost(rng: random.Random, most: int = 5_000_000) -> Decimal:
    """A cost uniform up to `most` / 10^10 USD, in steps of 10^-10."""
    return Decimal(rng.randint(0, most)) / 10**10


def make_rule(**overrides: Any) -> AlertRule:
    """An active error-rate rule over 5 % (a unique name unless one is given)."""
    fields: dict[str, Any] = {
        "name": f"Rule {next(_rule_numbers)}",
        "metric_type": AlertRule.MetricType.ERROR_RATE,
        "threshold": 5,
        **overrides,
    }
    return AlertRule.objects.create(**fields)


def make_alert(rule: AlertRule, *, triggered_at: datetime | None = None, **overrides: Any) -> AlertLog:
    """A notice of `rule` that fired at `triggered_at` (now by default), over the rule's window."""
    triggered_at = triggered_at or timezone.now()
    fields: dict[str, Any] = {
        "message": f"{rule.name}: over {rule.threshold:g}",
        "metric_value": rule.threshold + 1,
        "threshold": rule.threshold,
        "window_start": triggered_at - timedelta(minutes=rule.time_window_minutes),
        "window_end": triggered_at,
        **overrides,
    }
    return AlertLog.objects.create(alert_rule=rule, triggered_at=triggered_at, **fields)


def make_feedback(log: LLMRequestLog, rating: str = UserFeedback.Rating.THUMBS_UP, **overrides: Any) -> UserFeedback:
    return UserFeedback.objects.create(request=log, rating=rating, **overrides)


def make_api_key(name: str = "tests", scopes: str = APIKey.ALL_SCOPES, **fields: Any) -> tuple[APIKey, str]:
    """A stored key and its raw value (the only time the raw value is known); every scope unless told."""
    return APIKey.generate(name, scopes, **fields)


def make_user(username: str, role: str | None = None, **fields: Any):
    """A user with a password of "secret-password", in the role's group (None: no group, a Viewer)."""
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user(username, f"{username}@example.com", "secret-password", **fields)
    if role is not None:
        user.groups.add(Group.objects.get(name=role))
    return user


def build_span(trace_id: str, span_id: str, start: datetime, duration_ms: float, **overrides: Any) -> TraceSpan:
    """An unsaved context span (not an LLM call) of `duration_ms` from `start`."""
    fields: dict[str, Any] = {"name": "GET /", "kind": TraceSpan.Kind.SERVER, **overrides}
    return TraceSpan(
        trace_id=trace_id, span_id=span_id, start=start, end=start + timedelta(milliseconds=duration_ms), **fields
    )
