"""JSON API views. Thin: validate, call one function, answer."""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import SynchronousOnlyOperation
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework.exceptions import NotAcceptable, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from core.deferred import DeferredResponse, RelayResponse, RunSync, can_defer
from llm import budgets, throttles
from llm.auth import authenticate_key, bearer_key, cached_key, cached_key_gone_stale
from llm.ingest_limits import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    UNSTORABLE_CHARACTER,
    JSONError,
    parse_json,
)
from llm.models import APIKey, LLMRequestLog, ModelPrice, cached_price_table
from llm.permissions import RIGHTS, key_has
from llm.providers import ChatRequest, Provider, UnknownModel, get_provider, route
from llm.providers.errors import whole_seconds
from llm.proxy import (
    AsyncPromptStream,
    CallContext,
    PromptOutcome,
    PromptStream,
    asend_prompt,
    record_refusal,
    send_prompt,
)
from llm.serializers import (
    MAX_TOKENS_LIMIT,
    MODEL_NAME_CHARACTERS,
    PROMPT_MAX_CHARS,
    ErrorSerializer,
    PromptErrorSerializer,
    PromptRequestSerializer,
    PromptResponseSerializer,
    PromptStreamEventSerializer,
    validate_tags,
)
from llm.throttles import PromptRateThrottle

# How each upstream failure is answered to our caller.
UPSTREAM_ERROR_STATUS = {
    LLMRequestLog.ErrorType.TIMEOUT: 504,
    LLMRequestLog.ErrorType.RATE_LIMIT: 429,
    LLMRequestLog.ErrorType.CONFIGURATION: 503,
    LLMRequestLog.ErrorType.BUDGET_EXCEEDED: 429,
}


def prompt_answer(outcome: PromptOutcome) -> dict:
    log = outcome.log
    if outcome.error is not None:
        return {
            "request_id": str(log.request_id),
            "status": log.status,
            "error_type": outcome.error.error_type,
            "error_message": outcome.error.message,
            "upstream_message": outcome.error.upstream_message,
            "retry_after_seconds": outcome.error.retry_after_seconds,
        }
    return {
        "request_id": str(log.request_id),
        "model": log.model_name,
        "response": outcome.response_text,
        "prompt_tokens": log.prompt_tokens,
        "completion_tokens": log.completion_tokens,
        "total_tokens": log.total_tokens,
        "latency_ms": round(log.latency_ms, 3),
        "ttft_ms": round(log.ttft_ms, 3) if log.ttft_ms is not None else None,
        "cost_estimate": float(log.cost_estimate),
        "status": log.status,
        "provider": log.provider,
        "cached_tokens": log.cached_tokens,
        "tokens_estimated": log.tokens_estimated,
        "output_tokens_per_second": log.output_tokens_per_second,
    }


def error_response(outcome: PromptOutcome) -> Response:
    status = UPSTREAM_ERROR_STATUS.get(outcome.error.error_type, 502)
    response = Response(prompt_answer(outcome), status=status)
    if status == 429 and outcome.error.retry_after_seconds is not None:
        # Passed on, so that HTTP clients which honour Retry-After wait as long as Groq asked.
        response["Retry-After"] = str(whole_seconds(outcome.error.retry_after_seconds))
    return response


# A 503 is an upstream error answer (no provider key) or the database's (llm/api/errors.py).
PROMPT_UNAVAILABLE = PolymorphicProxySerializer(
    component_name="PromptUnavailable",
    serializers=[PromptErrorSerializer, ErrorSerializer],
    resource_type_field_name=None,
)

# A 429 is the provider's (an upstream error answer) or our own rate limit's (llm/throttles.py).
PROMPT_RATE_LIMITED = PolymorphicProxySerializer(
    component_name="PromptRateLimited",
    serializers=[PromptErrorSerializer, ErrorSerializer],
    resource_type_field_name=None,
)


class JSONUnlessAskedOtherwise(DefaultContentNegotiation):
    """Streaming clients often send only `Accept: text/event-stream`. The stream itself bypasses
    the renderers, and what does not stream (a 400, an upstream error before the first token) is
    better answered in JSON than refused with 406."""

    def select_renderer(self, request: Request, renderers: list, format_suffix: str | None = None) -> tuple:
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type


class PromptInput(PromptRequestSerializer):
    """PromptRequestSerializer, the same fields and rules, built cheaper for each request: DRF
    deep-copies every declared field per serializer, i.e. builds it again from its arguments (6.6 %
    of a proxied prompt's CPU, py-spy). A shallow copy is enough: the declared fields are never
    bound themselves, and what a copy shares with them (validators, choices) is only read."""

    def get_fields(self) -> dict:
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}


class LoopPromptInput(PromptInput):
    """PromptInput for the fast path's checks, on the event loop: its fields are bound once, to a
    PromptInput without data, and every instance reads them (copying them per prompt cost ~66 µs).
    The same fields and rules: validating reads a field (its validators, its `root.partial`, never
    true here) and changes nothing in it, and one thread (the loop) uses them."""

    _bound_fields: dict | None = None

    @property
    def fields(self) -> dict:
        bound = LoopPromptInput._bound_fields
        if bound is None:
            bound = LoopPromptInput._bound_fields = PromptInput().fields
        return bound


# The fast path's own reading of a prompt's body, for the plain inputs nearly every prompt sends:
# LoopPromptInput's fields cost ~13 % of a worker's CPU per prompt (py-spy). It accepts a strict
# subset of what PromptRequestSerializer accepts and cleans it to the same validated data; for
# anything else (a refusal, a string for a number, a value with spaces to trim...) it answers SLOW
# and the serializer judges, so that every 400 is DRF's own (tests/test_prompt_quick_input.py).
SLOW = object()
MODEL_NAME = re.compile(rf"[{MODEL_NAME_CHARACTERS}]{{1,200}}")
PROVIDERS = frozenset(ModelPrice.Provider.values)


def _text(value: object, max_chars: int, blank: bool = False) -> object:
    # CharField(trim_whitespace=False): kept as sent; a blank one is refused unless allowed.
    if type(value) is not str or len(value) > max_chars or UNSTORABLE_CHARACTER.search(value):
        return SLOW
    if not blank and not value.strip():
        return SLOW
    return value


def _label(value: object) -> object:
    # CharField(max_length=200, allow_blank=True), trimmed: only what trimming leaves unchanged.
    if type(value) is not str or value != value.strip():
        return SLOW
    return _text(value, 200, blank=True)


def _max_tokens(value: object) -> object:
    return value if type(value) is int and 1 <= value <= MAX_TOKENS_LIMIT else SLOW


def _temperature(value: object) -> object:
    if type(value) not in (int, float) or not math.isfinite(value):
        return SLOW
    return float(value) if MIN_TEMPERATURE <= value <= MAX_TEMPERATURE else SLOW


def _tags(value: object) -> object:
    if type(value) is not dict:
        return SLOW
    try:
        return validate_tags(value)
    except ValidationError:
        return SLOW


QUICK_FIELDS = {
    "prompt": lambda value: _text(value, PROMPT_MAX_CHARS),
    "model": lambda value: value if type(value) is str and MODEL_NAME.fullmatch(value) else SLOW,
    "system_prompt": lambda value: _text(value, PROMPT_MAX_CHARS, blank=True),
    "user_id": _label,
    "session_id": _label,
    "max_tokens": _max_tokens,
    "temperature": _temperature,
    "tags": _tags,
    "stream": lambda value: value if type(value) is bool else SLOW,
    "provider": lambda value: value if type(value) is str and value in PROVIDERS else SLOW,
}


def quick_prompt_data(document: object) -> dict | None:
    """PromptRequestSerializer's validated data for a plain, valid prompt body; None for any other
    body (the serializer then judges it)."""
    if type(document) is not dict or "prompt" not in document:
        return None
    data = {"stream": False}
    for name, value in document.items():
        check = QUICK_FIELDS.get(name)
        if check is None:
            continue  # DRF ignores a field it does not declare
        cleaned = check(value)
        if cleaned is SLOW:
            return None
        data[name] = cleaned
    data.setdefault("model", settings.GROQ_DEFAULT_MODEL)
    data.setdefault("tags", {})
    try:
        data["provider"] = route(data["model"], data.get("provider"))
    except UnknownModel:
        return None
    return data


def event_stream(response: StreamingHttpResponse) -> StreamingHttpResponse:
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # let nginx pass chunks through as they come
    return response


def call_parts(data: dict, api_key_name: str, default_user_id: str) -> tuple[ChatRequest, CallContext, Provider]:
    """What a validated prompt asks for: the vendor's request, the row's labels, the provider."""
    chat = ChatRequest(
        prompt=data["prompt"],
        model=data["model"],
        system_prompt=data.get("system_prompt", ""),
        max_tokens=data.get("max_tokens"),
        temperature=data.get("temperature"),
    )
    context = CallContext(
        user_id=data.get("user_id") or default_user_id,
        session_id=data.get("session_id", ""),
        tags=data["tags"],
        api_key_name=api_key_name,
    )
    return chat, context, get_provider(data["provider"])


class PromptView(APIView):
    """Send a prompt to the model's provider; the call is measured and logged whatever happens.

    Auth, CSRF, parsing and validation run here, in a worker thread. Served by core/asgi.py, the
    call itself is then a DeferredResponse awaited on the event loop (`_call_async`): a call in
    flight holds no thread. Elsewhere (WSGI, the test client) it blocks this thread (`_call`).
    """

    required_right = "prompt"
    content_negotiation_class = JSONUnlessAskedOtherwise
    # PROMPT_RATE_LIMIT per API key and per user: 429 with Retry-After.
    throttle_classes = [PromptRateThrottle]

    @extend_schema(
        request=PromptRequestSerializer,
        responses={
            (200, "application/json"): PromptResponseSerializer,
            (200, "text/event-stream"): OpenApiResponse(
                PromptStreamEventSerializer,
                description="With `stream: true`: Server-Sent Events (the schema is one event's).",
            ),
            400: OpenApiResponse(
                description="Invalid input; the body names each bad field. An unknown model (no price names it "
                "and no `provider` is given) lists the models that can be called."
            ),
            429: OpenApiResponse(
                PROMPT_RATE_LIMITED,
                description="The provider's rate limit (an upstream error answer), ours: PROMPT_RATE_LIMIT prompts "
                "a minute per API key or user (the error shape, naming the limit), or a spent hard-limit budget "
                "(`error_type` budget_exceeded; Retry-After: the end of its period). All send Retry-After.",
            ),
            502: OpenApiResponse(PromptErrorSerializer, description="The provider failed or could not be reached."),
            503: OpenApiResponse(
                PROMPT_UNAVAILABLE,
                description="No provider key configured (an upstream error answer), or the database unavailable "
                "(Retry-After).",
            ),
            504: OpenApiResponse(PromptErrorSerializer, description="The provider did not answer in time."),
        },
        parameters=[
            OpenApiParameter(
                "Retry-After",
                OpenApiTypes.INT,
                OpenApiParameter.HEADER,
                response=[429, 503],
                description="Seconds to wait: the provider's or our rate limit's (429), or the database's (503).",
            )
        ],
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        serializer = PromptInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        api_key_name = request.auth.name if isinstance(request.auth, APIKey) else ""
        chat, context, provider = call_parts(data, api_key_name, self._default_user_id(request))
        # Before the vendor is called: a spent hard-limit budget of this call's scope refuses it.
        refused = budgets.refusal(
            model_name=chat.model, user_id=context.user_id, tags=context.tags, api_key_name=context.api_key_name
        )
        if refused is not None:
            return error_response(record_refusal(chat, context, provider, refused))
        if can_defer(request):
            renderer_context = self.get_renderer_context()

            async def complete(run_sync: RunSync) -> HttpResponseBase:
                response = await self._call_async(chat, context, provider, data["stream"], run_sync)
                if isinstance(response, Response):
                    response.accepted_renderer = request.accepted_renderer
                    response.accepted_media_type = request.accepted_media_type
                    response.renderer_context = renderer_context
                    # JSON renders on the loop; the browsable API's HTML may read the database.
                    if isinstance(request.accepted_renderer, JSONRenderer):
                        response.render()
                    else:
                        await run_sync(response.render)
                return response

            return DeferredResponse(complete, request)
        return self._call(chat, context, provider, data["stream"])

    @staticmethod
    def _call(chat: ChatRequest, context: CallContext, provider: Provider, stream: bool) -> HttpResponseBase:
        if stream:
            prompt_stream = PromptStream(chat, context, provider)
            failure = prompt_stream.open()
            if failure is not None:
                return error_response(failure)
            return event_stream(
                StreamingHttpResponse(prompt_stream.events(prompt_answer), content_type="text/event-stream")
            )
        outcome = send_prompt(chat, context, provider)
        if outcome.error is not None:
            return error_response(outcome)
        return Response(prompt_answer(outcome))

    @staticmethod
    async def _call_async(
        chat: ChatRequest, context: CallContext, provider: Provider, stream: bool, run_sync: RunSync
    ) -> HttpResponseBase:
        if stream:
            prompt_stream = AsyncPromptStream(chat, context, provider, run_sync)
            failure = await prompt_stream.open()
            if failure is not None:
                return error_response(failure)
            return event_stream(RelayResponse(prompt_stream.events(prompt_answer), content_type="text/event-stream"))
        outcome = await asend_prompt(chat, context, provider, run_sync)
        if outcome.error is not None:
            return error_response(outcome)
        return Response(prompt_answer(outcome))

    @staticmethod
    def _default_user_id(request: Request) -> str:
        # A prompt from the dashboard's playground is attributed to the person logged in.
        if request.user and request.user.is_authenticated:
            return request.user.get_username()
        return ""


# The fast path: a prompt served on the ASGI worker's event loop (core/asgi.py), without a thread
# hop, Django's inner middleware or DRF's view machinery, when everything it needs is already known
# in this process: the API key in the key cache (llm/auth.py), the list of spent hard-limit budgets
# fresh (budgets.spent_hard_limits_if_known) and not covering it. The rate limit admits it with no
# query (throttles.decide_locally) or, when only the shared row can tell, decides in a thread before
# the call (throttles.use, as the view's throttle). The rules are the view's own: the same parser,
# PromptInput, right, rate limit, budget rule, call, answer and error answers. Anything else (a key
# not cached yet, a limit already passed, invalid input, another content type, a session cookie's
# user, the browsable API) takes the ordinary path, unchanged, before anything is counted.

# The paths of the view (with and without the slash, llm/urls.py).
FAST_PATHS = frozenset({"/api/llm/prompt/", "/api/llm/prompt"})
# Only what DRF would answer in JSON with no parameter (`indent`, a version) to honour.
FAST_ACCEPTS = frozenset({"", "*/*", "application/json", "text/event-stream"})
# What DRF's APIView sets on every answer of this view (finalize_response, default_response_headers).
VIEW_HEADERS = {"Allow": ", ".join(PromptView().allowed_methods), "Vary": "Accept"}


def fast_prompt(request: HttpRequest) -> DeferredResponse | None:
    """The deferred answer of an eligible prompt (counted against the rate limit), or None, having
    changed nothing, when the prompt must take the ordinary path. `request` is a plain Django
    request the outer middleware sees; the caller sends what `resolve()` answers."""
    try:
        eligible = _fast_checks(request)
    except Exception:  # noqa: BLE001 - a cache gone cold (the ORM refuses to run on the loop), anything odd
        return None
    if eligible is None:
        return None
    api_key, chat, context, provider, stream = eligible
    caller = throttles.caller_for_key(api_key)
    decision = throttles.decide_locally(throttles.PROMPTS, caller)
    if decision == throttles.REFUSE:
        return None  # the ordinary path answers its 429
    # CONTACT: only throttles.use() can decide (a stale view of the shared count, a new minute, a
    # contact under way), in a thread, as the ordinary path's throttle does: the prompt waits for
    # that decision and stays here. Sent down the ordinary path instead, every prompt arriving
    # before the contact had been claimed went there too: a fifth of a worker's CPU in a burst of
    # a thousand prompts (py-spy), Django's whole stack and DRF's for each.
    ask_first = decision == throttles.CONTACT
    request.auth = api_key  # the request's log line names the key (llm.logging.who)

    async def complete(run_sync: RunSync) -> HttpResponseBase:
        refused = await run_sync(rate_limit_refusal, caller) if ask_first else None
        response = refused or await PromptView._call_async(chat, context, provider, stream, run_sync)
        return rendered(response) if isinstance(response, Response) else response

    deferred = DeferredResponse(complete, request)
    for header, value in VIEW_HEADERS.items():
        deferred[header] = value
    return deferred


FAST_RENDERER = api_settings.DEFAULT_RENDERER_CLASSES[0]


def rendered(response: Response) -> HttpResponse:
    """The view's DRF Response as DRF renders it in JSON (its renderer's bytes, the renderer's media
    type, the status and the other headers the response carries: Retry-After), as a plain
    HttpResponse: without the template response's rendering machinery (~25 us a prompt)."""
    # A renderer per answer, as DRF makes one per response: ours escapes one answer it cannot encode.
    answer = HttpResponse(
        FAST_RENDERER().render(response.data), status=response.status_code, content_type=FAST_RENDERER.media_type
    )
    for header, value in response.items():
        if header.lower() != "content-type":  # a Response's placeholder until rendered
            answer[header] = value
    return answer


def rate_limit_refusal(caller: throttles.Caller) -> Response | None:
    """PromptRateThrottle's decision in a thread that may query (throttles.use, the same count and
    guarantee): None when admitted (counted), else the 429 the view's exception handler answers."""
    refusal = throttles.use(throttles.PROMPTS, caller)
    if refusal is None:
        return None
    return api_settings.EXCEPTION_HANDLER(throttles.RateLimited(refusal), {"view": None, "args": (), "kwargs": {}})


def _fast_checks(request: HttpRequest) -> tuple[APIKey, ChatRequest, CallContext, Provider, bool] | None:
    """What the view would check before the rate limit, answered from this process's memory only:
    None when any of it needs more (the database, an error answer, another renderer)."""
    if not _plain_json_request(request):
        return None
    api_key = _cached_key_with_right(request)
    if api_key is None:
        return None
    try:
        document = parse_json(request.body.decode("utf-8"))
    except (JSONError, UnicodeDecodeError):
        return None
    data = quick_prompt_data(document)
    if data is None:
        serializer = LoopPromptInput(data=document)
        if not serializer.is_valid():
            return None
        data = serializer.validated_data
    chat, context, provider = call_parts(data, api_key.name, "")
    spent = budgets.spent_hard_limits_if_known(timezone.now())
    # A budget covering the call: the ordinary path refuses it (budgets.refusal), with its row.
    if spent is None:
        return None
    covered = budgets.covering(
        spent, model_name=chat.model, user_id=context.user_id, tags=context.tags, api_key_name=context.api_key_name
    )
    if covered is not None:
        return None
    return api_key, chat, context, provider, data["stream"]


def stale_fast_caches(authorization: str) -> dict[str, Callable[[], object]]:
    """What made a prompt miss the fast path that a query can fill again, by name: the caller's key
    (valid when last looked up, its KEY_CACHE_SECONDS over), the spent budgets' list, the price
    table; each with the sync function (for a thread) that fills its cache as the ordinary path
    would. When all of them expire under a burst, every prompt arriving before an ordinary one has
    refilled them took Django's and DRF's whole stack too (200-650 of a 1,000-prompt burst, each
    worker's pool swamped by them). A key never valid here (a bad one) is left to the ordinary
    path's single lookup."""
    stale: dict[str, Callable[[], object]] = {}
    raw_key = bearer_key(authorization)
    if raw_key and cached_key_gone_stale(raw_key):
        # Whichever path looked the key up: a worker whose first prompts all came at once served
        # each on the ordinary path, and the fast path, never having seen the key, had nothing
        # refill it once its time was up; every prompt arriving until an ordinary one had looked it
        # up again took the ordinary path (tests/test_prompt_fast_path.py).
        stale[f"key {APIKey.hash_key(raw_key)}"] = functools.partial(authenticate_key, raw_key)
    if budgets.spent_hard_limits_if_known(timezone.now()) is None:
        stale["budgets"] = lambda: budgets.spent_hard_limits(timezone.now())
    try:
        cached_price_table()
    except SynchronousOnlyOperation:  # gone stale: reading it again is a query
        stale["prices"] = cached_price_table
    return stale


def _plain_json_request(request: HttpRequest) -> bool:
    """A POST of UTF-8 JSON, no query string, answered in JSON (or a stream) as DRF would."""
    return (
        request.method == "POST"
        and not request.META.get("QUERY_STRING")  # not request.GET, which parses it into a QueryDict
        and request.content_type == "application/json"
        and request.content_params.get("charset", "utf-8").lower() == "utf-8"
        and request.headers.get("Accept", "").strip() in FAST_ACCEPTS
    )


def _cached_key_with_right(request: HttpRequest) -> APIKey | None:
    """The request's Bearer key when the key cache holds it, unexpired, with the view's right."""
    raw_key = bearer_key(request.headers.get("Authorization", ""))
    api_key = cached_key(raw_key) if raw_key else None
    if api_key is None or api_key.has_expired() or not key_has(api_key, RIGHTS[PromptView.required_right]):
        return None
    return api_key
