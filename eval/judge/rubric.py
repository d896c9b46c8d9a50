"""What the pairwise judge reads and how its answer is read back.

- :func:`render_rubric`: the brand card as a judging rubric (voice, do / don't, banned phrases and
  claims, required elements, length limits), in the card's own words (its rules' ``reason``
  fields, never their regexes).
- :func:`judge_messages`: one chat per (prompt, answer order): the rubric as the system message,
  the conversation and the two answers as the user message, and the strict answer format.
- :func:`parse_verdict`: ``"A" | "B" | "tie"`` or ``None``. Only a JSON object with a valid
  ``winner`` or a reply that is exactly one verdict token (``A``, ``**B**``, ``[[A]]``, ``tie.``)
  counts; anything else is unparseable and counted as such, never guessed. "A good answer would
  be B" is unparseable (MT-Bench's ``\\b[AB]\\b`` search would read it as "A").
"""

from __future__ import annotations

import json
import re
from typing import Any

# Bump when the wording below changes: it is part of every cached verdict's key.
RUBRIC_VERSION = 1
VERDICTS = ("A", "B", "tie")
# JSON schema for guided decoding; "winner" first so a verdict is decided before the reason.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "winner": {"type": "string", "enum": list(VERDICTS)},
        "reason": {"type": "string", "maxLength": 300},
    },
    "required": ["winner", "reason"],
    "additionalProperties": False,
}

# The same object as a regular expression with no free whitespace and a bounded reason: vLLM
# applies it per request (its JSON-schema mode lets a weak model pad whitespace until max_tokens,
# and whitespace can only be switched off for a whole server).
REGEX = r'\{"winner": ?"(A|B|tie)", ?"reason": ?"[^"\\\x00-\x1f]{0,300}"\}'

SYSTEM = """You are an impartial judge. You compare two answers written by an assistant for the brand below and decide which one is better for this brand: more helpful to the customer, in the brand's voice, and within its rules. A rule broken counts heavily against an answer. Do not let the order of the answers, their length or the names A and B influence you.

{rubric}"""

FORMATS = {
    "json": 'Reply with one JSON object and nothing else: {"winner": "A" | "B" | "tie", '
    '"reason": "<one sentence>"}. Use "tie" when neither answer is better.',
    "token": "Reply with exactly one word and nothing else: A, B or tie.",
}

USER = """[Conversation]
{conversation}

[Answer A]
{a}
[End of answer A]

[Answer B]
{b}
[End of answer B]
{channel}
Which answer is better for {brand}? {format}"""


def _bullets(items: list[str]) -> list[str]:
    return [f"- {' '.join(str(x).split())}" for x in items]


def _channel_line(name: str, ch: Any) -> str:
    limits = []
    if ch.min_words or ch.max_words:
        limits.append(f"{ch.min_words or 0}-{ch.max_words or 'any'} words")
    if ch.max_chars:
        limits.append(f"at most {ch.max_chars} characters")
    desc = f" ({ch.description})" if ch.description else ""
    return f"{name}{desc}" + (f": {', '.join(limits)}" if limits else "")


def render_rubric(card) -> str:
    """The brand card as the judge's rubric (deterministic: the same card renders the same text)."""
    lines = [f"Brand: {card.name}. {' '.join(card.description.split())}"]
    if card.audience:
        lines.append(f"Audience: {' '.join(card.audience.split())}")
    if card.voice:
        lines.append(f"Voice: {', '.join(card.voice)}.")
    if card.do:
        lines += ["", "The brand always:"] + _bullets(card.do)
    if card.dont:
        lines += ["", "The brand never:"] + _bullets(card.dont)
    phrases = [r.reason for r in card.banned if r.kind == "phrase"]
    claims = [r.reason for r in card.banned if r.kind == "claim"]
    if phrases:
        lines += ["", "Banned wording (an answer using it breaks a rule):"] + _bullets(phrases)
    if claims:
        lines += ["", "Banned claims (an answer making one breaks a rule):"] + _bullets(claims)
    if card.required:
        req = []
        for r in card.required:
            where = f" (in {', '.join(r.channels)} answers)" if r.channels else ""
            req.append(f"{r.reason}{where}")
        lines += ["", "Required elements (an answer missing one breaks a rule):"] + _bullets(req)
    if card.channels:
        lines += ["", "Channels and their length limits:"] + _bullets(
            [_channel_line(n, c) for n, c in card.channels.items()]
        )
    return "\n".join(lines)


def _conversation(messages: list[dict[str, str]]) -> str:
    """The prompt's turns without its system message (the rubric replaces the brand prompt)."""
    names = {"user": "Customer", "assistant": "Assistant"}
    return "\n".join(
        f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages if m["role"] != "system"
    )


def judge_messages(
    rubric: str, brand: str, prompt: list[dict[str, str]], a: str, b: str, channel: str | None, output: str
) -> list[dict[str, str]]:
    """The chat sent to the judge for one answer order (``a`` shown as Answer A)."""
    if output not in FORMATS:
        raise ValueError(f"judge output must be one of {', '.join(FORMATS)}, got {output!r}")
    chan = f"\nChannel: {channel}\n" if channel else ""
    user = USER.format(
        conversation=_conversation(prompt), a=a, b=b, channel=chan, brand=brand, format=FORMATS[output]
    )
    return [{"role": "system", "content": SYSTEM.format(rubric=rubric)}, {"role": "user", "content": user}]


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_TOKEN = re.compile(r"^[\s\"'`*\[\(]*(A|B|tie)[\s\"'`*\]\).!]*$", re.IGNORECASE)


def _winner(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    v = value.strip()
    if v in ("A", "B"):
        return v
    return "tie" if v.lower() == "tie" else None


def parse_verdict(text: str | None) -> str | None:
    """``"A"``, ``"B"``, ``"tie"``, or ``None`` (unparseable: counted, never guessed)."""
    if text is None:
        return None
    t = text.strip()
    fenced = _FENCE.match(t)
    if fenced:
        t = fenced.group(1).strip()
    if t.startswith("{"):
        try:
            obj = json.loads(t)
        except json.JSONDecodeError:
            return None
        return _winner(obj.get("winner")) if isinstance(obj, dict) else None
    m = _TOKEN.match(t)
    if m is None:
        return None
    tok = m.group(1)
    return "tie" if tok.lower() == "tie" else (tok if tok in ("A", "B") else None)
