"""The canonical preference record and its validation.

One JSON object per line (see docs/architecture.md)::

    {"id": "<sha256 of normalized prompt+chosen+rejected>",
     "prompt":   [{"role": "user", "content": "..."}],          # optional system first; ends with user
     "chosen":   [{"role": "assistant", "content": "..."}],     # assistant first and last
     "rejected": [{"role": "assistant", "content": "..."}],
     "brand": "aurora", "channel": "complaint_reply", "annotators": ["a1"], "reason_tags": ["tone"],
     "created_at": "2026-12-01T00:00:00+00:00", "origin": "synthetic",
     "source": {"file": "x.jsonl", "line": 3}}

Only ``prompt``, ``chosen`` and ``rejected`` are required. ``origin`` says who decided which answer
is chosen: absent (null or ``"human"`` are stored as absent) = people, ``"synthetic"`` = the automatic
judges (``onbrand annotate queue --strategy uncertain``). It is a field of its own, not a flag in
``source``: ``source`` is provenance ({file, line}), replaced on import and left out of the
snapshot id, while who judged a pair changes what the data means (snapshots keep synthetic pairs
out of dev/test/judge and count them apart; training can exclude or down-weight them). Human
records keep the ids and snapshot ids they had before the field existed. Every problem raises
:class:`RecordError` with a ``reason`` code (one of :data:`REASONS`) and the offending ``field``,
so importers can quarantine the row with file, line, field and reason.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
ROLES = ("system", "user", "assistant")
# ``origin`` is listed here so every row format (canonical, TRL, standard, CSV) carries it through.
OPTIONAL_STR = ("brand", "channel", "created_at", "origin")
OPTIONAL_LIST = ("annotators", "reason_tags")
ORIGINS = ("human", "synthetic")
FIELDS = ("id", "prompt", "chosen", "rejected", *OPTIONAL_STR, *OPTIONAL_LIST, "source")
DEFAULT_MAX_CHARS = 20_000  # per record (all message text); longer rows are "absurd size"

# Quarantine reason codes: stable strings (tests, reports and docs use them).
REASONS = {
    "blank_line": "line is empty or whitespace only",
    "invalid_utf8": "bytes are not valid UTF-8",
    "invalid_json": "line is not valid JSON",
    "not_object": "row is not a JSON object",
    "missing_field": "a required field is absent",
    "null_field": "a required field is null",
    "wrong_type": "a field has the wrong type",
    "empty_text": "a text is empty or whitespace only",
    "missing_content": "a message has no content",
    "unknown_role": "a message role is not system/user/assistant",
    "bad_structure": "turn order is wrong (prompt must end with user; completions start/end with assistant)",
    "identical_pair": "chosen is identical to rejected (after normalization)",
    "prompt_in_completion": "a completion repeats the prompt",
    "too_large": "row exceeds the size cap",
    "unknown_format": "row matches no supported format",
    "bad_scores": "chosen score is not above rejected score",
    "duplicate": "exact duplicate of an earlier record (after normalization)",
    "too_long": "prompt leaves no room for the completion within max_length",
    "template_mismatch": "tokenized prompt is not a prefix of tokenized prompt+completion",
    "split_leak": "prompt or chosen text near-duplicates a record of another split (or an adversarial prompt)",
    "synthetic_in_eval": "a synthetic (machine-judged) pair in a dev/test/judge input: evaluation is on human judgements",
}


class RecordError(ValueError):
    """A row that cannot become a canonical record: ``reason`` code + ``field`` + message."""

    def __init__(self, reason: str, field: str, message: str):
        assert reason in REASONS, reason  # programming error, not user input
        super().__init__(f"{field}: {message}" if field else message)
        self.reason = reason
        self.field = field
        self.message = message


def normalize_text(text: str) -> str:
    """NFKC, whitespace collapsed, case-folded: what 'the same text' means for ids and dedup."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def _norm_messages(messages: list[dict[str, str]]) -> list[list[str]]:
    return [[m["role"], normalize_text(m["content"])] for m in messages]


def _digest(obj: Any) -> str:
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def record_id(record: dict[str, Any]) -> str:
    """sha256 of the normalized prompt + chosen + rejected (stable content hash, also the dedup key)."""
    return _digest([_norm_messages(record[k]) for k in ("prompt", "chosen", "rejected")])


def prompt_key(record: dict[str, Any]) -> str:
    """Group key for splitting: the normalized non-system prompt turns."""
    return _digest(_norm_messages([m for m in record["prompt"] if m["role"] != "system"]))


def _messages(value: Any, field: str) -> list[dict[str, str]]:
    if value is None:
        raise RecordError("null_field", field, "is null")
    if isinstance(value, str):  # standard (non-conversational) form
        if not value.strip():
            raise RecordError("empty_text", field, "is empty or whitespace only")
        return [{"role": "user" if field == "prompt" else "assistant", "content": value}]
    if not isinstance(value, list):
        raise RecordError(
            "wrong_type", field, f"expected a list of messages or a string, got {type(value).__name__}"
        )
    if not value:
        raise RecordError("empty_text", field, "has no messages")
    out = []
    for i, m in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise RecordError("wrong_type", where, f"expected a message object, got {type(m).__name__}")
        if m.get("role") is None:
            raise RecordError("missing_field", f"{where}.role", "message has no role")
        if m["role"] not in ROLES:
            raise RecordError(
                "unknown_role", f"{where}.role", f"{m['role']!r} is not one of {', '.join(ROLES)}"
            )
        content = m.get("content")
        if content is None:
            raise RecordError("missing_content", f"{where}.content", "message has no content")
        if not isinstance(content, str):
            raise RecordError(
                "wrong_type", f"{where}.content", f"expected a string, got {type(content).__name__}"
            )
        if not content.strip():
            raise RecordError("empty_text", f"{where}.content", "is empty or whitespace only")
        out.append({"role": m["role"], "content": content})
    return out


def _check_structure(rec: dict[str, Any]) -> None:
    prompt = rec["prompt"]
    if prompt[-1]["role"] != "user":
        raise RecordError(
            "bad_structure", "prompt", f"must end with a user turn, ends with {prompt[-1]['role']}"
        )
    if any(m["role"] == "system" for m in prompt[1:]):
        raise RecordError("bad_structure", "prompt", "a system message may only come first")
    for key in ("chosen", "rejected"):
        msgs = rec[key]
        if msgs[0]["role"] != "assistant" or msgs[-1]["role"] != "assistant":
            raise RecordError("bad_structure", key, "must start and end with an assistant message")
        if any(m["role"] == "system" for m in msgs):
            raise RecordError("bad_structure", key, "system messages belong in the prompt")


def _check_content(rec: dict[str, Any], max_chars: int) -> None:
    size = sum(len(m["content"]) for k in ("prompt", "chosen", "rejected") for m in rec[k])
    if size > max_chars:
        raise RecordError("too_large", "", f"{size} characters of text > cap {max_chars}")
    if _norm_messages(rec["chosen"]) == _norm_messages(rec["rejected"]):
        raise RecordError("identical_pair", "chosen", "is identical to rejected")
    last_user = normalize_text(rec["prompt"][-1]["content"])
    if len(last_user) >= 16:
        for key in ("chosen", "rejected"):
            if normalize_text(rec[key][0]["content"]).startswith(last_user):
                raise RecordError("prompt_in_completion", key, "starts by repeating the prompt")


def _optional(rec: dict[str, Any], obj: dict[str, Any]) -> None:
    for key in OPTIONAL_STR:
        v = obj.get(key)
        if v is not None:
            if not isinstance(v, str):
                raise RecordError("wrong_type", key, f"expected a string, got {type(v).__name__}")
            rec[key] = v
    for key in OPTIONAL_LIST:
        v = obj.get(key)
        if v is not None:
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise RecordError("wrong_type", key, "expected a list of strings")
            rec[key] = list(v)
    origin = rec.get("origin")
    if origin is not None and origin.strip() and origin not in ORIGINS:
        raise RecordError("wrong_type", "origin", f"expected one of {', '.join(ORIGINS)}, got {origin!r}")
    rec["origin"] = "synthetic" if origin == "synthetic" else None  # human: null (the default)


def is_synthetic(record: dict[str, Any]) -> bool:
    """True for a pair judged by the automatic judges, not by people (``origin: "synthetic"``)."""
    return record.get("origin") == "synthetic"


def canonicalize(
    obj: Any, source: dict[str, Any] | None = None, max_chars: int = DEFAULT_MAX_CHARS
) -> dict[str, Any]:
    """Validate a canonical-shaped object (standard strings or message lists) -> canonical record.

    Raises :class:`RecordError`. ``source`` ({"file", "line"}) is attached when given.
    """
    if not isinstance(obj, dict):
        raise RecordError("not_object", "", f"expected a JSON object, got {type(obj).__name__}")
    rec: dict[str, Any] = {}
    for key in ("prompt", "chosen", "rejected"):
        if key not in obj:
            raise RecordError("missing_field", key, "is required")
        rec[key] = _messages(obj[key], key)
    _check_structure(rec)
    _check_content(rec, max_chars)
    _optional(rec, obj)
    rec["source"] = (
        dict(source) if source else obj.get("source") if isinstance(obj.get("source"), dict) else None
    )
    rec["id"] = record_id(rec)
    # A human record has no "origin" key at all: its JSON is byte for byte what it was before the field.
    return {k: rec.get(k) for k in FIELDS if k != "origin" or rec.get(k)}


def to_json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSONL atomically (temp file renamed into place). Returns the count."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                f.write(to_json_line(r))
                n += 1
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
