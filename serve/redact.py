"""Mask personal data in conversation text before it is written to the guard's log.

What is masked (on by default, ``log.redact`` in the guard config):

- e-mail addresses -> ``[email]``;
- card numbers: 13-19 digits, optionally grouped by spaces or dashes, that pass the Luhn check
  -> ``[card]`` (a digit run that fails Luhn is not a card number and is left for the phone rule);
- phone numbers: 7-15 digits with an optional ``+country`` prefix, optional ``(area)`` and
  space/dot/dash groups -> ``[phone]``. ISO dates (``2024-05-01``) and plain numbers of fewer
  than 7 digits are left alone.

Redaction errs on the side of masking: a long order number written like a phone number is masked
too. ``redact(text)`` returns the masked text and how many spans were masked.
"""

from __future__ import annotations

import re
from typing import Any

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
CARD_RE = re.compile(r"(?<![\d\w])\d(?:[ \-]?\d){12,18}(?![\d\w])")
PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{1,4}\)[\s.\-]?)?\d{2,5}(?:[\s.\-]?\d{2,5}){1,4}(?![\w])"
)
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MASKS = {"email": "[email]", "card": "[card]", "phone": "[phone]"}


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string (card numbers pass it)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    return MASKS["card"] if 13 <= len(digits) <= 19 and luhn_ok(digits) else m.group(0)


def _phone(m: re.Match[str]) -> str:
    span = m.group(0)
    n = sum(ch.isdigit() for ch in span)
    if n < 7 or n > 15 or DATE_RE.match(span):
        return span
    return MASKS["phone"]


def redact(text: str) -> tuple[str, int]:
    """``text`` with e-mails, card numbers (Luhn) and phone numbers masked; and the count masked."""
    if not text:
        return text, 0
    out = EMAIL_RE.sub(MASKS["email"], text)
    out = CARD_RE.sub(_card, out)
    out = PHONE_RE.sub(_phone, out)
    if out == text:
        return text, 0
    return out, sum(out.count(mask) - text.count(mask) for mask in MASKS.values())


def redact_record(record: dict[str, Any]) -> int:
    """Mask the free text of a conversation record in place (messages, response, original
    response, rule details); returns how many spans were masked and sets ``record["redacted"] = True``."""
    n = 0
    for msg in record.get("messages") or []:
        if isinstance(msg.get("content"), str):
            msg["content"], k = redact(msg["content"])
            n += k
    for key in ("response", "original_response"):
        if isinstance(record.get(key), str):
            record[key], k = redact(record[key])
            n += k
    for rule in record.get("rules") or []:
        if isinstance(rule.get("detail"), str) and rule["detail"]:
            rule["detail"], k = redact(rule["detail"])
            n += k
    record["redacted"] = True
    return n
