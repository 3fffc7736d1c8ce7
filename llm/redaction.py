"""Scrubbing personal data and secrets from stored text (REDACT_PII).

Each kind is a pattern that finds candidates and, where a checksum or a parser can tell a real
value from a look-alike, a check: card numbers must pass Luhn, IBANs mod-97, IP addresses must
parse. Patterns are deliberately strict about context (what may come before and after) so that
ordinary numbers, dates, times, version strings, UUIDs and order numbers are left alone: a
redactor that eats every number makes stored prompts useless for debugging.

Kinds run in a fixed order, most specific first, and each placeholder contains no digits, so a
later pattern never matches inside an earlier placeholder.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    iban = re.sub(r"\s", "", candidate).upper()
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    # Letters count as two digits, A = 10 … Z = 35 (ISO 13616).
    as_number = "".join(str(int(char, 36)) for char in rearranged)
    return int(as_number) % 97 == 1


def card_valid(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    # Issuers' ranges start with 2–6 (Mastercard 2-series, Amex, Visa, Mastercard, Discover/UnionPay).
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def ipv4_valid(candidate: str) -> bool:
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return False
    return True


def ipv6_valid(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate.split("%", 1)[0])
    except ValueError:
        return False
    return True


def phone_valid(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if candidate.startswith(("+", "00")):
        return 8 <= len(digits) <= 15
    return 10 <= len(digits) <= 13


@dataclass(frozen=True)
class Kind:
    placeholder: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None
    # The regex group holding the value; text around it (e.g. "Bearer ") is kept.
    group: int | str = 0


SECRET_TOKENS = "|".join(
    [
        r"gsk_[A-Za-z0-9]{20,}",  # Groq
        r"sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic, Stripe-style
        r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe
        r"gh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
        r"github_pat_[A-Za-z0-9_]{40,}",
        r"(?:AKIA|ASIA)[0-9A-Z]{16}",  # AWS access key ids
        r"xox[abprs]-[A-Za-z0-9-]{10,}",  # Slack
        r"AIza[0-9A-Za-z_-]{35}",  # Google API keys
        r"llmo_[A-Za-z0-9_-]{32,}",  # this project's own API keys
        r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWTs
    ]
)

KINDS: list[Kind] = [
    # "Authorization: Bearer <token>" and "Basic <base64>": the scheme stays, the credential goes.
    # A word after "Bearer" is a token only if it has a digit or is long: "Bearer instruments" stays.
    Kind(
        "[SECRET]",
        re.compile(
            r"\b(?:Bearer|Authorization:\s*Basic)\s+"
            r"(?P<value>(?=[A-Za-z\-._~+/]*\d)[A-Za-z0-9\-._~+/]{8,}=*|[A-Za-z\-._~+/]{24,}=*)"
        ),
        group="value",
    ),
    Kind("[SECRET]", re.compile(rf"(?<![A-Za-z0-9_-])(?:{SECRET_TOKENS})(?![A-Za-z0-9_-])")),
    # api_key=…, "password": "…", secret: … (the name stays, the value goes).
    Kind(
        "[SECRET]",
        re.compile(
            r"(?i)\b(?:api[_-]?key|secret(?:[_-]?key)?|password|passwd|access[_-]?token|auth[_-]?token|client[_-]?secret)"
            r"[\"']?\s*[:=]\s*[\"']?(?P<value>[^\s\"',;]{6,})"
        ),
        group="value",
    ),
    Kind("[EMAIL]", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")),
    Kind(
        "[IBAN]",
        re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"),
        iban_valid,
    ),
    # 13–19 digits, contiguous or in groups split by one kind of separator.
    Kind(
        "[CARD]",
        re.compile(r"(?<![\w.+-])(?:\d{13,19}|\d{4}(?P<sep>[ -])\d{4,6}(?:(?P=sep)\d{3,5}){1,3})(?![\w]|[.-]\d)"),
        card_valid,
    ),
    Kind(
        "[IP]",
        re.compile(
            r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?:%\w+)?(?![\w:]|\.\d)"
        ),
        ipv6_valid,
    ),
    # Four dotted numbers, not part of a longer dotted run (1.2.3.4.5 is a version, not an address).
    Kind("[IP]", re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\w)"), ipv4_valid),
    # Phone numbers: international (+44 …, 0044 …), a trunk prefix 0 (020 7946 0958,
    # 06 12 34 56 78), or North American (555) 123-4567 / 555-123-4567. Plain digit runs are not
    # phones here: they are far more often ids and amounts. Nor is a group right after another
    # number ("3704 0044 0532": the tail of an account number).
    Kind(
        "[PHONE]",
        re.compile(
            r"(?<![\w.+/-])(?<!\d )(?:"
            r"(?:\+|00)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){1,5}"
            r"|0\d{1,4}(?:[ .-]\d{2,4}){2,4}"
            r"|\(\d{3}\)[ ]?\d{3}[ .-]\d{4}"
            r"|[2-9]\d{2}([ .-])\d{3}\1\d{4}"
            r")(?![\w]|[.:/-]\d)"
        ),
        phone_valid,
    ),
]


def _substitute(kind: Kind) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        value = match.group(kind.group)
        if kind.check is not None and not kind.check(value):
            return match.group(0)
        start, end = match.span(kind.group)
        offset = match.start(0)
        whole = match.group(0)
        return whole[: start - offset] + kind.placeholder + whole[end - offset :]

    return replace


def redact(text: str) -> str:
    """Replace e-mail addresses, phone numbers, card numbers, IBANs, IP addresses and API keys or
    bearer tokens with typed placeholders: [EMAIL], [PHONE], [CARD], [IBAN], [IP], [SECRET]."""
    for kind in KINDS:
        text = kind.pattern.sub(_substitute(kind), text)
    return text
