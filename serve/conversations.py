"""Read conversation logs, streaming: the guard's records or any OpenAI-format conversation log.

Accepted (one JSON object per JSONL line or per Parquet row; a directory is read recursively, its
``*.jsonl`` and ``*.parquet`` files in name order):

- ``schema = "onbrand.conversation/1"`` (what ``onbrand guard`` writes): ``messages`` is the request,
  ``response`` the text the client got, ``rules``/``action`` the guard's checks and decision;
- any OpenAI-format log: ``{"messages": [..., {"role": "assistant", "content": ...}], "ts", "channel"}``
  (the last assistant turn is the response, the turns before it the prompt; missing fields are null).

``ts`` (ISO-8601; a time without a zone is read as UTC) is required: it places the exchange in a
window. Rows that cannot be read are never skipped silently: each is counted by reason in
:class:`Problems` (with the first examples as ``file:line: field: message``), or raises
``ValueError`` in strict mode. Memory is constant in the log size: JSONL is read line by line,
Parquet row group by row group (``iter_batches``).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onbrand.serve.convlog import ReadReport, iter_parquet, without_compacted

SCHEMA = "onbrand.conversation/1"
SUFFIXES = (".jsonl", ".parquet")
PARQUET_BATCH = 2048


@dataclass(slots=True)
class Conversation:
    """One exchange: the prompt turns, the response, and what the guard did (when known)."""

    id: str
    ts: _dt.datetime  # UTC
    channel: str | None
    prompt: list[dict[str, str]]
    response: str
    rules: list[dict[str, Any]] | None  # the guard's rule results; None: compute from the card
    action: str | None  # the guard's action; None for a plain OpenAI-format log
    original_response: str | None
    file: str
    line: int


@dataclass
class Problems:
    """Unreadable rows by reason, with the first ``keep`` examples (``file:line: field: message``)."""

    strict: bool = False
    keep: int = 10
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, field_name: str, message: str, reason: str) -> None:
        text = f"{where}: {field_name}: {message}" if field_name else f"{where}: {message}"
        if self.strict:
            raise ValueError(text)
        self.counts[reason] += 1
        if len(self.examples) < self.keep:
            self.examples.append(text)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_reason": dict(sorted(self.counts.items())),
            "examples": self.examples,
        }


class RowError(ValueError):
    def __init__(self, field_name: str, message: str, reason: str):
        super().__init__(message)
        self.field, self.message, self.reason = field_name, message, reason


def log_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files to read: each file given, and each directory's ``*.jsonl``/``*.parquet`` (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = without_compacted(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES))
            if not found:
                raise FileNotFoundError(f"{p}: no .jsonl or .parquet conversation logs in this directory")
            out += found
        elif p.is_file():
            if p.suffix not in SUFFIXES:
                raise ValueError(f"{p}: a conversation log must be .jsonl or .parquet")
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    if not out:
        raise ValueError("no conversation logs given")
    return out


def parse_ts(value: Any) -> _dt.datetime:
    if not isinstance(value, str):
        raise RowError("ts", f"expected an ISO-8601 time string, got {value!r}", "bad_ts")
    try:
        t = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise RowError("ts", f"not an ISO-8601 time: {value[:40]!r}", "bad_ts") from None
    return t.replace(tzinfo=_dt.UTC) if t.tzinfo is None else t.astimezone(_dt.UTC)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowError("messages", "expected a non-empty list of {role, content}", "bad_messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RowError(f"messages[{i}]", "expected {role, content}", "bad_messages")
        content = m.get("content")
        if not isinstance(content, str):
            raise RowError(f"messages[{i}].content", "expected a string", "bad_messages")
        out.append({"role": m["role"], "content": content})
    return out


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    v = obj.get(key)
    if v is not None and not isinstance(v, str):
        raise RowError(key, f"expected a string or null, got {type(v).__name__}", "wrong_type")
    return v


def _rules(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise RowError("rules", "expected a list of {rule, kind, passed, detail}", "bad_rules")
    for i, r in enumerate(value):
        if (
            not isinstance(r, dict)
            or not isinstance(r.get("rule"), str)
            or not isinstance(r.get("passed"), bool)
        ):
            raise RowError(f"rules[{i}]", "expected {rule: str, kind, passed: bool, detail}", "bad_rules")
    return value


def parse_record(obj: Any, file: str, line: int) -> Conversation:
    """One JSON object / Parquet row -> :class:`Conversation` (raises :class:`RowError`)."""
    if not isinstance(obj, dict):
        raise RowError("", f"expected a JSON object, got {type(obj).__name__}", "not_object")
    if "ts" not in obj or obj["ts"] is None:
        raise RowError("ts", "missing (every exchange needs its time)", "missing_ts")
    ts = parse_ts(obj["ts"])
    messages = _messages(obj.get("messages"))
    response = obj.get("response")
    if obj.get("schema") == SCHEMA or response is not None:
        if not isinstance(response, str):
            raise RowError("response", "expected a string", "bad_response")
        prompt = messages
    else:
        if messages[-1]["role"] != "assistant":
            raise RowError("messages", "the last turn must be the assistant's answer", "no_response")
        prompt, response = messages[:-1], messages[-1]["content"]
    action = _opt_str(obj, "action")
    return Conversation(
        id=str(obj.get("id") or f"{file}:{line}"),
        ts=ts,
        channel=_opt_str(obj, "channel"),
        prompt=prompt,
        response=response,
        rules=_rules(obj.get("rules")),
        action=action,
        original_response=_opt_str(obj, "original_response"),
        file=file,
        line=line,
    )


def _jsonl_rows(path: Path, problems: Problems) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield n, json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                # A torn last line after a crash lands here too: counted, never silently dropped.
                problems.add(f"{path}:{n}", "", f"invalid JSON ({e.__class__.__name__})", "invalid_json")


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    return enumerate(iter_parquet(path, ReadReport(), PARQUET_BATCH), start=1)


def iter_conversations(
    paths: Iterable[str | Path], problems: Problems | None = None
) -> Iterator[Conversation]:
    """Every readable exchange of the logs, in file order, one at a time."""
    problems = problems if problems is not None else Problems()
    for path in log_files(paths):
        rows = _parquet_rows(path) if path.suffix == ".parquet" else _jsonl_rows(path, problems)
        name = str(path)
        for n, obj in rows:
            try:
                yield parse_record(obj, name, n)
            except RowError as e:
                problems.add(f"{name}:{n}", e.field, e.message, e.reason)
