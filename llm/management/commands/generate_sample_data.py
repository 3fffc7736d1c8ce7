"""Realistic sample traffic: several Groq models, a few dozen users, daily and hourly rhythm,
a few percent of errors of several kinds, latency spikes, an incident or two, feedback, and
a few triggered alerts. Calls come in multi-turn sessions (2-12 calls of one user, in time
order), tagged with the feature and environment that made them; some turns are agent-like
traces (a root call and children naming it as their parent span).
Deterministic for a given --seed (timestamps are relative to now)."""

from __future__ import annotations

import bisect
import itertools
import math
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from llm.forecast import period_bounds
from llm.models import AlertLog, AlertRule, Budget, LLMRequestLog, UserFeedback

BATCH_SIZE = 5_000


@dataclass(frozen=True)
class ModelProfile:
    name: str
    share: float
    base_latency_ms: float
    ms_per_output_token: float


MODELS = [
    ModelProfile("llama-3.1-8b-instant", 0.36, 180, 0.9),
    ModelProfile("llama-3.3-70b-versatile", 0.24, 420, 3.2),
    ModelProfile("openai/gpt-oss-120b", 0.12, 520, 2.4),
    ModelProfile("openai/gpt-oss-20b", 0.12, 300, 1.4),
    ModelProfile("meta-llama/llama-4-scout-17b-16e-instruct", 0.09, 350, 1.8),
    ModelProfile("qwen/qwen3-32b", 0.07, 450, 2.6),
]

# Share of traffic per hour of the day (UTC): quiet at night, busy in working hours.
HOURLY_RHYTHM = [
    0.25, 0.2, 0.18, 0.18, 0.2, 0.3, 0.5, 0.8, 1.1, 1.3, 1.4, 1.45,
    1.35, 1.4, 1.45, 1.4, 1.3, 1.15, 0.95, 0.8, 0.65, 0.5, 0.4, 0.3,
]  # fmt: skip
WEEKEND_FACTOR = 0.55

ERROR_KINDS = [
    (LLMRequestLog.ErrorType.RATE_LIMIT, 0.34, "Rate limit reached for model in organization: tokens per minute"),
    (LLMRequestLog.ErrorType.SERVER_ERROR, 0.24, "Internal Server Error"),
    (LLMRequestLog.ErrorType.TIMEOUT, 0.2, "Request timed out."),
    (LLMRequestLog.ErrorType.CONNECTION_ERROR, 0.1, "Connection error."),
    (LLMRequestLog.ErrorType.BAD_REQUEST, 0.09, "Please reduce the length of the messages or completion."),
    (LLMRequestLog.ErrorType.AUTHENTICATION, 0.03, "Invalid API Key"),
]

TOPICS = [
    ("Summarize this support ticket in two sentences", "The customer cannot log in after resetting a password"),
    ("Translate to French", "Bonjour, votre commande a été expédiée aujourd'hui."),
    ("Write a SQL query that counts orders per day", "SELECT date_trunc('day', created_at), count(*) FROM orders"),
    ("Classify the sentiment of this review", "Positive: the reviewer praises delivery speed"),
    ("Extract the invoice number and total", '{"invoice": "INV-2291", "total": "481.20"}'),
    ("Explain this Python traceback", "The KeyError means the dictionary has no 'user' entry"),
    ("Draft a friendly reply to a refund request", "Thanks for reaching out; we have issued your refund"),
    ("Give three title ideas for a blog post about caching", "1. Cache Me If You Can 2. Warm Paths 3. TTLs"),
]
FEATURES = ["summarize", "chat", "classify", "extract", "translate", "search"]
FEATURE_WEIGHTS = [0.26, 0.32, 0.12, 0.1, 0.1, 0.1]
# A session holds 2 to 12 calls; this share of its turns is an agent: a root call and children.
SESSION_CALLS = (2, 12)
AGENT_TURN_SHARE = 0.12
AGENT_CHILDREN = (2, 4)
PRODUCTION_SHARE = 0.85
COMMENTS_UP = ["Exactly what I needed", "Accurate and short", "Great answer", ""]
COMMENTS_DOWN = ["Made up a number", "Too long", "Wrong language", "Ignored the instructions", ""]


def _weighted_picker(rng: random.Random, items: list, weights: list[float]):
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]

    def pick():
        return items[bisect.bisect(cumulative, rng.random() * total)]

    return pick


@dataclass(frozen=True)
class Traffic:
    """When calls happen and what they are: an hour of the window, a model, a user, an error kind."""

    hours: list[datetime]
    incident_hours: set[int]
    pick_hour: Callable[[], int]
    pick_model: Callable[[], ModelProfile]
    pick_user: Callable[[], str]
    pick_error: Callable[[], tuple[str, float, str]]
    pick_feature: Callable[[], str]

    @classmethod
    def over(cls, rng: random.Random, days: int) -> Traffic:
        end = timezone.now().replace(second=0, microsecond=0)
        start = end - timedelta(days=days)
        hours = [start + timedelta(hours=h) for h in range(days * 24)]
        hour_weights = [HOURLY_RHYTHM[hour.hour] * (WEEKEND_FACTOR if hour.weekday() >= 5 else 1.0) for hour in hours]
        # A couple of incident hours with many errors and slow answers, so alerts have something to find.
        incident_hours = {rng.randrange(len(hours)) for _ in range(max(1, days // 10))}
        incident_hours.add(len(hours) - 2)
        users = [f"user-{n:03d}" for n in range(1, 37)]
        return cls(
            hours=hours,
            incident_hours=incident_hours,
            pick_hour=_weighted_picker(rng, list(range(len(hours))), hour_weights),
            pick_model=_weighted_picker(rng, MODELS, [m.share for m in MODELS]),
            pick_user=_weighted_picker(rng, users, [1 / (rank + 1) ** 0.8 for rank in range(len(users))]),
            pick_error=_weighted_picker(rng, ERROR_KINDS, [kind[1] for kind in ERROR_KINDS]),
            pick_feature=_weighted_picker(rng, FEATURES, FEATURE_WEIGHTS),
        )


def sample_call(rng: random.Random, traffic: Traffic) -> LLMRequestLog:
    """One unsaved call as a client sent it: raw text, no totals or cost (the write path adds them).

    The order of the random draws is part of what --seed reproduces: keep it when editing.
    """
    hour_index = traffic.pick_hour()
    in_incident = hour_index in traffic.incident_hours
    timestamp = traffic.hours[hour_index] + timedelta(seconds=rng.random() * 3600)
    model = traffic.pick_model()
    prompt_tokens = int(min(rng.lognormvariate(5.6, 0.7), 12_000)) + 8
    completion_tokens = int(min(rng.lognormvariate(5.2, 0.8), 4_000)) + 1
    is_error = rng.random() < (0.3 if in_incident else 0.03)
    latency = _latency(rng, model, completion_tokens, in_incident)
    streamed = rng.random() < 0.4
    topic = rng.choice(TOPICS)
    log = LLMRequestLog(
        request_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        timestamp=timestamp,
        source=LLMRequestLog.Source.PROXY if rng.random() < 0.7 else LLMRequestLog.Source.API,
        provider="groq",
        model_name=model.name,
        user_id=traffic.pick_user() if rng.random() < 0.95 else "",
        session_id=f"sess-{rng.getrandbits(32):08x}",
        prompt_text=topic[0],
        temperature=rng.choice([0.0, 0.2, 0.7, 1.0]),
        max_tokens=rng.choice([None, 512, 1024, 4096]),
        tags={},
        cost_estimate=None,  # None: priced from ModelPrice on the way in
    )
    if is_error:
        _fail(log, traffic.pick_error(), latency)
    else:
        _succeed(log, rng, topic[1], prompt_tokens, completion_tokens, latency, streamed)
    return log


def _latency(rng: random.Random, model: ModelProfile, completion_tokens: int, in_incident: bool) -> float:
    latency = model.base_latency_ms + completion_tokens * model.ms_per_output_token
    latency *= rng.lognormvariate(0, 0.25)
    if rng.random() < 0.01:
        latency *= rng.uniform(4, 10)  # the occasional spike
    if in_incident:
        latency *= 3
    return latency


def _fail(log: LLMRequestLog, error_kind: tuple[str, float, str], latency: float) -> None:
    error_type, _, message = error_kind
    log.status = LLMRequestLog.Status.ERROR
    log.error_type = error_type
    log.error_message = message
    # A failed call used no tokens; a timeout waited long, other errors answer fast.
    log.prompt_tokens = 0
    log.completion_tokens = 0
    log.latency_ms = round(latency * 4 if error_type == LLMRequestLog.ErrorType.TIMEOUT else latency / 3, 3)


def _succeed(
    log: LLMRequestLog,
    rng: random.Random,
    response: str,
    prompt_tokens: int,
    completion_tokens: int,
    latency: float,
    streamed: bool,
) -> None:
    log.status = LLMRequestLog.Status.SUCCESS
    log.response_text = response
    log.prompt_tokens = prompt_tokens
    log.completion_tokens = completion_tokens
    log.finish_reason = "length" if rng.random() < 0.04 else "stop"
    log.latency_ms = round(latency, 3)
    if streamed:
        log.ttft_ms = round(min(latency, 60 + rng.lognormvariate(4.6, 0.5)), 3)


def sample_session(rng: random.Random, traffic: Traffic, at_most: int) -> list[LLMRequestLog]:
    """A conversation of 2 to 12 calls (at most `at_most`): one user, one session id, one feature
    and environment, each call a little after the one before; some turns are agents (a root
    call, then children with the root's span as their parent, in the same trace)."""
    first = sample_call(rng, traffic)
    tags = {
        "feature": traffic.pick_feature(),
        "env": "prod" if rng.random() < PRODUCTION_SHARE else "staging",
    }
    calls = [first]
    wanted = min(rng.randint(*SESSION_CALLS), at_most)
    while len(calls) < wanted:
        previous = calls[-1]
        turn = sample_call(rng, traffic)
        pause = timedelta(milliseconds=previous.latency_ms or 0, seconds=rng.randint(8, 240))  # reading, typing
        turn.timestamp = previous.timestamp + pause
        calls.append(turn)
        if rng.random() < AGENT_TURN_SHARE:
            calls.extend(_agent_children(rng, traffic, turn, wanted - len(calls)))
    for call in calls:
        call.user_id = first.user_id
        call.session_id = first.session_id
        call.tags = dict(tags)
    # A conversation that would run past now is moved back whole.
    overflow = calls[-1].timestamp - (traffic.hours[-1] + timedelta(hours=1))
    if overflow > timedelta(0):
        for call in calls:
            call.timestamp -= overflow
    return calls


def _agent_children(rng: random.Random, traffic: Traffic, root: LLMRequestLog, at_most: int) -> list[LLMRequestLog]:
    """The calls an agent made under `root` (now its trace's root span), one after another."""
    root.trace_id = f"{rng.getrandbits(128):032x}"
    root.span_id = f"{rng.getrandbits(64):016x}"
    children = []
    moment = root.timestamp
    for _ in range(min(rng.randint(*AGENT_CHILDREN), at_most)):
        child = sample_call(rng, traffic)
        moment += timedelta(milliseconds=rng.randint(50, 400))
        child.timestamp = moment
        child.trace_id = root.trace_id
        child.span_id = f"{rng.getrandbits(64):016x}"
        child.parent_span_id = root.span_id
        children.append(child)
    return children


# The rules behind the sample history of triggered alerts (no channel: nothing is ever sent).
SAMPLE_RULES: list[dict] = [
    {
        "name": "Error rate above 10%",
        "metric_type": AlertRule.MetricType.ERROR_RATE,
        "threshold": 10,
        "time_window_minutes": 60,
        "description": "More than one call in ten failed over the last hour.",
    },
    {
        "name": "p95 latency above 5 s",
        "metric_type": AlertRule.MetricType.LATENCY_P95,
        "threshold": 5000,
        "time_window_minutes": 60,
        "description": "The slowest 5% of calls took longer than five seconds.",
    },
]


SAMPLE_BUDGET_NAME = "Monthly LLM spend"


def add_sample_budget() -> Budget:
    """One budget for all calls per month, a quarter above what this month has cost so far, so the
    overview's budget card has something to show; kept as it is when it exists."""
    start, end = period_bounds("month", timezone.now())
    month_cost = LLMRequestLog.objects.in_window(start, end).aggregate(cost=Sum("cost_estimate"))["cost"] or 0
    amount = max(Decimal("1.00"), (Decimal(str(month_cost)) * Decimal("1.25")).quantize(Decimal("0.01")))
    budget, _ = Budget.objects.get_or_create(
        name=SAMPLE_BUDGET_NAME,
        defaults={"scope": Budget.Scope.ALL, "period": Budget.Period.MONTH, "amount_usd": amount},
    )
    return budget


class Command(BaseCommand):
    help = "Fill the database with realistic sample LLM traffic."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--count", type=int, default=5_000, help="Number of calls (default 5000).")
        parser.add_argument("--days", type=int, default=30, help="Spread over the last D days (default 30).")
        parser.add_argument("--seed", type=int, default=None, help="Same seed, same data.")
        parser.add_argument("--clear", action="store_true", help="Delete all logs, feedback and alerts first.")
        parser.add_argument("--if-empty", action="store_true", help="Do nothing when logs already exist.")

    def handle(self, *args, count: int, days: int, seed: int | None, clear: bool, if_empty: bool, **options):
        if count < 1 or days < 1:
            raise CommandError("--count and --days must be at least 1.")
        self.show_progress = options["verbosity"] >= 1
        if if_empty and LLMRequestLog.objects.exists():
            self.stdout.write("Logs already exist; no sample data added.")
            return
        if clear:
            AlertLog.objects.all().delete()
            LLMRequestLog.objects.all().delete()  # cascades to feedback
            self.stdout.write("Cleared logs, feedback and triggered alerts.")
        started = time.monotonic()
        created, feedback = self.generate(count=count, days=days, seed=seed)
        alerts = self.add_triggered_alerts(random.Random(seed), days)
        add_sample_budget()
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"Created {created} calls, {feedback} feedback entries and {alerts} triggered alerts in {elapsed:.1f}s."
        )

    def generate(self, count: int, days: int, seed: int | None) -> tuple[int, int]:
        """Store `count` calls in batches; answers (calls created, feedback entries created)."""
        rng = random.Random(seed)
        traffic = Traffic.over(rng, days)
        created = 0
        feedback_count = 0
        done = 0
        while done < count:
            # Whole sessions per batch, so a conversation's calls are stored together.
            batch: list[LLMRequestLog] = []
            while done + len(batch) < count and len(batch) < BATCH_SIZE:
                batch.extend(sample_session(rng, traffic, count - done - len(batch)))
            batch_created, batch_feedback = self._store(rng, batch)
            created += batch_created
            feedback_count += batch_feedback
            done += len(batch)
            if self.show_progress:
                self.stderr.write(f"  {done}/{count} calls", ending="\r" if sys.stderr.isatty() else "\n")
        return created, feedback_count

    def _store(self, rng: random.Random, logs: list[LLMRequestLog]) -> tuple[int, int]:
        """Store one batch through the write path every caller uses (privacy, totals, cost), and
        feedback on the calls it created; answers (calls created, feedback entries created)."""
        request_ids = [log.request_id for log in logs]
        with transaction.atomic():
            # A seed already used without --clear gives the same request ids: those calls and
            # their feedback are stored already.
            stored_before = set(
                LLMRequestLog.objects.filter(request_id__in=request_ids).values_list("request_id", flat=True)
            )
            created, _ = LLMRequestLog.objects.record_many(logs)
            # bulk_create with ignore_conflicts does not hand back ids; feedback needs them.
            ids = dict(LLMRequestLog.objects.filter(request_id__in=request_ids).values_list("request_id", "id"))
            new_logs = [log for log in logs if log.request_id not in stored_before]
            for log in new_logs:
                log.id = ids[log.request_id]
            feedback = self._feedback_for(rng, new_logs)
            UserFeedback.objects.bulk_create(feedback, batch_size=1_000)
        return created, len(feedback)

    @staticmethod
    def _feedback_for(rng: random.Random, logs: list[LLMRequestLog]) -> list[UserFeedback]:
        feedback = []
        for log in logs:
            if log.status != LLMRequestLog.Status.SUCCESS or rng.random() >= 0.08:
                continue
            # Slow answers and the small model get more thumbs down.
            down_chance = 0.12 + (0.15 if log.latency_ms > 3000 else 0) + (0.06 if "8b" in log.model_name else 0)
            thumbs_down = rng.random() < down_chance
            feedback.append(
                UserFeedback(
                    request=log,
                    rating=UserFeedback.Rating.THUMBS_DOWN if thumbs_down else UserFeedback.Rating.THUMBS_UP,
                    comment=rng.choice(COMMENTS_DOWN if thumbs_down else COMMENTS_UP),
                    created_at=log.timestamp + timedelta(seconds=5 + math.floor(rng.random() * 600)),
                )
            )
        return feedback

    @staticmethod
    def add_triggered_alerts(rng: random.Random, days: int) -> int:
        """A few alerts in the past, so the alerts page has history to show."""
        error_rule, latency_rule = (
            AlertRule.objects.get_or_create(name=spec["name"], defaults=spec)[0] for spec in SAMPLE_RULES
        )
        now = timezone.now()
        alerts = []
        for index in range(4):
            rule = error_rule if index % 2 == 0 else latency_rule
            window_end = now - timedelta(hours=rng.uniform(1, days * 24 - 1))
            value = rule.threshold * rng.uniform(1.2, 3)
            alerts.append(
                AlertLog(
                    alert_rule=rule,
                    triggered_at=window_end,
                    message=f"{rule.name}: {value:.1f} over threshold {rule.threshold:g}",
                    metric_value=round(value, 2),
                    threshold=rule.threshold,
                    window_start=window_end - timedelta(minutes=rule.time_window_minutes),
                    window_end=window_end,
                    acknowledged=index > 0,
                    acknowledged_at=window_end + timedelta(minutes=20) if index > 0 else None,
                    acknowledged_by_name="sample data" if index > 0 else "",
                    # History, already delivered: check_alerts must not send these.
                    delivery_claimed_at=window_end,
                    delivered_at=window_end,
                    # The sample rules have no channel: say so rather than claim a mail that never left.
                    notifications={},
                    delivery_note="sample data: not sent",
                )
            )
        AlertLog.objects.bulk_create(alerts)
        return len(alerts)
