"""What an upstream failure means, in words a new user can act on.

The one home of the messages the proxy answers, stores and streams for each of SPEC's error
types. The vendor's own words travel next to ours (`upstream_message`), never as a Python repr.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from llm.models import LLMRequestLog

ErrorType = LLMRequestLog.ErrorType

# A vendor's error text is short; an HTML error page from a proxy in between is not.
UPSTREAM_MESSAGE_MAX_CHARS = 1_000


@dataclass(frozen=True)
class Upstream:
    """What a message names about the configured vendor: its settings and their values."""

    vendor: str  # "Groq"
    key_setting: str  # "GROQ_API_KEY"
    base_url_setting: str
    base_url: str
    timeout_setting: str
    timeout_seconds: float


@dataclass(frozen=True)
class Failure:
    """What is known about one failure, beyond its type."""

    upstream: Upstream
    status_code: int | None = None
    retry_after_seconds: float | None = None
    during_stream: bool = False
    # What we know beyond the vendor's words: the transport error of a connection failure, or
    # the exception's class of an unexpected one.
    detail: str = ""

    @property
    def http(self) -> str:
        return f" (HTTP {self.status_code})" if self.status_code else ""


def _configuration(failure: Failure) -> str:
    up = failure.upstream
    return (
        f"No {up.vendor} API key is configured: set {up.key_setting} in .env (or the environment) "
        "and restart the server."
    )


def _authentication(failure: Failure) -> str:
    up = failure.upstream
    if failure.status_code == 403:
        return (
            f"{up.vendor} refused this request with the configured key{failure.http}: check that {up.key_setting} "
            "belongs to an account allowed to use this model."
        )
    return (
        f"{up.vendor} refused the API key{failure.http}: check {up.key_setting} (mistyped, revoked or from "
        "another account?) and restart the server after changing it."
    )


def _rate_limit(failure: Failure) -> str:
    said = f"{failure.upstream.vendor} is rate limiting this API key{failure.http}"
    if failure.retry_after_seconds is not None:
        return f"{said}: retry after {whole_seconds(failure.retry_after_seconds)} s."
    return f"{said}: wait a little, then retry or send fewer requests."


def _timeout(failure: Failure) -> str:
    up = failure.upstream
    return (
        f"{up.vendor} did not answer within {up.timeout_setting} = {up.timeout_seconds:g} s: retry, "
        f"ask for fewer tokens (max_tokens), or raise {up.timeout_setting}."
    )


def _connection_error(failure: Failure) -> str:
    up = failure.upstream
    where = f"{up.vendor} at {up.base_url_setting} = {up.base_url}"
    why = f" ({failure.detail})" if failure.detail else ""
    if failure.during_stream:
        return f"The connection to {where} broke in the middle of the answer{why}: retry."
    return f"Could not reach {where}{why}: check the address and this server's network, then retry."


def _bad_request(failure: Failure) -> str:
    vendor = failure.upstream.vendor
    if failure.status_code == 404:
        return f"{vendor} does not know this model or endpoint{failure.http}: check the model name."
    return f"{vendor} refused the request{failure.http}: check the model name, the prompt's length and max_tokens."


def _server_error(failure: Failure) -> str:
    vendor = failure.upstream.vendor
    if failure.during_stream:
        return f"{vendor} reported an error in the middle of the answer: the problem is on its side; retry later."
    return f"{vendor} failed to answer{failure.http}: the problem is on its side; retry later."


def _other(failure: Failure) -> str:
    vendor = failure.upstream.vendor
    if failure.status_code:
        return f"{vendor} answered HTTP {failure.status_code}, which the proxy does not expect."
    return f"The call to {vendor} failed unexpectedly" + (f" ({failure.detail})." if failure.detail else ".")


MESSAGES = {
    ErrorType.CONFIGURATION: _configuration,
    ErrorType.AUTHENTICATION: _authentication,
    ErrorType.RATE_LIMIT: _rate_limit,
    ErrorType.TIMEOUT: _timeout,
    ErrorType.CONNECTION_ERROR: _connection_error,
    ErrorType.BAD_REQUEST: _bad_request,
    ErrorType.SERVER_ERROR: _server_error,
    ErrorType.OTHER: _other,
}


def explain(error_type: str, upstream: Upstream, **known) -> str:
    """One or two sentences: what happened, and what to do about it. `known`: Failure's fields."""
    return MESSAGES.get(error_type, _other)(Failure(upstream, **known))


def stored_message(message: str, vendor: str, upstream_message: str | None) -> str:
    """The row's error_message: ours, then the vendor's own words."""
    return f"{message} {vendor} said: {upstream_message}" if upstream_message else message


def vendor_message(body: object) -> str | None:
    """The vendor's text from an error body: `{"error": {"message": ...}}`, the inner object of a
    stream's error event, `{"error": "..."}`, or a plain-text body."""
    message = body
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, Mapping) else inner
    if not isinstance(message, str) or not message.strip():
        return None
    message = " ".join(message.split())
    if len(message) > UPSTREAM_MESSAGE_MAX_CHARS:
        message = message[: UPSTREAM_MESSAGE_MAX_CHARS - 1] + "…"
    return message


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the vendor asked us to wait: `retry-after-ms` (OpenAI-style), else `Retry-After` in
    seconds or as an HTTP date. None when absent or unreadable."""
    if not headers:
        return None
    try:
        milliseconds = float(headers.get("retry-after-ms") or "nan")
    except ValueError:
        milliseconds = math.nan
    if math.isfinite(milliseconds) and milliseconds >= 0:
        return round(milliseconds / 1000, 3)
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return round(max(0.0, seconds), 3)


def whole_seconds(seconds: float) -> int:
    """For the Retry-After header and the message: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds))
