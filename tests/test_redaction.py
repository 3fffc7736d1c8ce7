"""llm.redaction: a table of what is scrubbed and what must be left alone."""

from __future__ import annotations

import pytest

from llm.redaction import iban_valid, luhn_valid, redact

# (text, expected after redaction)
POSITIVE = [
    # e-mail
    ("mail alice@example.com now", "mail [EMAIL] now"),
    ("Contact: j.doe+tag@mail.example.co.uk.", "Contact: [EMAIL]."),
    ("<bob_smith@sub-domain.org>", "<[EMAIL]>"),
    # phone
    ("call +44 20 7946 0958 today", "call [PHONE] today"),
    ("call +1 (555) 123-4567", "call [PHONE]"),
    ("tel:+14155552671", "tel:[PHONE]"),
    ("ring 0044 20 7946 0958", "ring [PHONE]"),
    ("mobile 06 12 34 56 78", "mobile [PHONE]"),
    ("office 020 7946 0958.", "office [PHONE]."),
    ("US (555) 123-4567 or 555-123-4567 or 555.123.4567", "US [PHONE] or [PHONE] or [PHONE]"),
    ("Tel. +49 30 901820", "Tel. [PHONE]"),
    # payment card (Luhn valid)
    ("card 4111111111111111 exp", "card [CARD] exp"),
    ("card 4111 1111 1111 1111", "card [CARD]"),
    ("mc 5555-5555-5555-4444.", "mc [CARD]."),
    ("amex 378282246310005", "amex [CARD]"),
    ("amex 3782 822463 10005", "amex [CARD]"),
    ("discover 6011111111111117", "discover [CARD]"),
    # IBAN (mod-97 valid)
    ("IBAN DE89 3704 0044 0532 0130 00 thanks", "IBAN [IBAN] thanks"),
    ("pay to GB82WEST12345698765432", "pay to [IBAN]"),
    ("FR1420041010050500013M02606", "[IBAN]"),
    ("NL91 ABNA 0417 1643 00", "[IBAN]"),
    # IP addresses
    ("from 192.168.1.20 port", "from [IP] port"),
    ("server 10.0.0.1.", "server [IP]."),
    ("v6 2001:db8:85a3::8a2e:370:7334 here", "v6 [IP] here"),
    ("loopback ::1 and fe80::1%eth0", "loopback [IP] and [IP]"),
    ("mapped ::ffff:192.0.2.1", "mapped [IP]"),
    ("full 2001:0db8:0000:0000:0000:ff00:0042:8329", "full [IP]"),
    # secrets
    ("Authorization: Bearer abc123.DEF-456_ghi", "Authorization: Bearer [SECRET]"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic [SECRET]"),
    ("key gsk_abcdefghijklmnopqrstuvwxyz0123456789AB", "key [SECRET]"),
    ("OPENAI sk-proj-abcdefghijklmnopqrstuvwx1234", "OPENAI [SECRET]"),
    ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "[SECRET]"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "token [SECRET]"),
    ("aws AKIAIOSFODNN7EXAMPLE id", "aws [SECRET] id"),
    ("slack xoxb-123456789012-abcdefghij", "slack [SECRET]"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0T", "jwt [SECRET]"),
    ("api_key=abcd1234efgh", "api_key=[SECRET]"),
    ('{"password": "hunter22"}', '{"password": "[SECRET]"}'),
    ("client_secret: s3cr3t-value", "client_secret: [SECRET]"),
    # several kinds at once
    (
        "I'm bob@example.org, +33 6 12 34 56 78, card 4111111111111111 from 203.0.113.9",
        "I'm [EMAIL], [PHONE], card [CARD] from [IP]",
    ),
]

# Text that must come out unchanged.
NEGATIVE = [
    "The answer is 42, or 3.14159, or 1,234,567.89 USD.",
    "Order 12345678 shipped; order #100234 and ORD-2024-000123 too.",
    "Invoice 4111111111111112 (not a valid card number)",
    "Tracking 1234 5678 9012 3456 fails the checksum",
    "Dates: 2024-05-12, 12/05/2024, 01.02.2024, 2024-05-12T10:30:00Z",
    "Times: 12:30, 09:15:42, 23:59:59.999",
    "Versions: v1.2.3, Python 3.11.4, 1.2.3.4.5, release 10.0.19041.1, 2.0.1-rc1",
    "UUID 123e4567-e89b-12d3-a456-426614174000 and 550e8400-e29b-41d4-a716-446655440000",
    "Hash 3f786850e387550fdab836ed7e6dc881de23001b",
    "Invalid IP 999.1.1.1 and 256.256.256.256",
    "MAC 00:1A:2B:3C:4D:5E",
    "C++ std::vector and Foo::Bar",
    "Ratio 16:9 and score 3:2:1",
    "IBAN-looking DE89 3704 0044 0532 0130 01 with a bad checksum",
    "Population 8 000 000; year 1999; zip 94105; 1e-9",
    "Bearer bonds and Bearer instruments are finance words.",
    "The password is not in this sentence.",
    "Tokens: 1500 prompt, 300 completion, latency 212.4 ms, cost $0.000945",
    "sk-short and gsk_short are too short to be keys",
    "Math: 2 + 2 = 4 and -5 * 3",
]


@pytest.mark.parametrize(("text", "expected"), POSITIVE)
def test_redacts_each_kind(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", NEGATIVE)
def test_leaves_ordinary_text_alone(text):
    assert redact(text) == text


def test_redaction_is_idempotent():
    once = redact(" ".join(text for text, _ in POSITIVE))
    assert redact(once) == once


@pytest.mark.parametrize(
    ("digits", "valid"),
    [("4111111111111111", True), ("79927398713", True), ("4111111111111112", False), ("79927398710", False)],
)
def test_luhn(digits, valid):
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize(
    ("iban", "valid"),
    [("DE89370400440532013000", True), ("GB82 WEST 1234 5698 7654 32", True), ("DE89370400440532013001", False)],
)
def test_iban_checksum(iban, valid):
    assert iban_valid(iban) is valid
