"""Shared pieces of the annotation-tool export formats (Label Studio, Argilla).

One row of such an export (a task, a record) holds the two answers *and* every annotator's verdict
on them, so these formats expose ``convert_many(obj, options) -> list[Judgement]`` instead of
``convert(obj)``: one :class:`Judgement` per verdict, each of which becomes its own canonical record
(or quarantine entry, or a counted skip). Agreeing annotators thus give the same content id: the
importer keeps the first record and reports the rest as ``duplicate`` (the snapshot merges their
annotators into the kept record).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from onbrand.data.records import RecordError

# Verdicts that carry no preference: counted per reason in the import stats (never quarantined,
# so ``--strict`` does not fail on an annotator pressing "skip").
SKIP_REASONS = {
    "cancelled": "the annotator cancelled (skipped) the task (Label Studio was_cancelled)",
    "draft": "a draft, never submitted (Label Studio drafts, Argilla status draft)",
    "discarded": "the annotator discarded the record (Argilla status discarded)",
    "no_preference": "the verdict picks neither answer (no pairwise result, selected none, a label naming neither)",
    "tie": "the ranking puts both answers at the same rank",
    "unannotated": "the task or record has no annotations or responses at all",
}

# onbrand's own exports keep a prompt that is not a single user turn here, exactly (the tools
# show the rendered text in the prompt field).
PROMPT_MESSAGES = "prompt_messages"


@dataclass
class Judgement:
    """One verdict of a tool export row: a canonical-shaped record, an error, or a skip reason."""

    index: int  # 1-based position of the verdict in the row (0: the row as a whole)
    record: dict[str, Any] | None = None
    error: RecordError | None = None
    skip: str = ""

    def __post_init__(self) -> None:
        assert not self.skip or self.skip in SKIP_REASONS, self.skip  # programming error


def keys_hint(obj: Mapping[str, Any], limit: int = 10) -> str:
    keys = sorted(map(str, obj))
    more = f", ... ({len(keys)} keys)" if len(keys) > limit else ""
    return (", ".join(keys[:limit]) or "no keys") + more


def text_field(container: Mapping[str, Any], key: str, where: str) -> str:
    """A required text value (an answer): a string; anything else names the field."""
    value = container[key]
    if not isinstance(value, str):
        raise RecordError("wrong_type", f"{where}.{key}", f"expected a string, got {type(value).__name__}")
    return value


def prompt_value(container: Mapping[str, Any], key: str, where: str, exact: Any = None) -> str | list:
    """The prompt: ``exact`` messages when onbrand wrote them, else the field (a string is one user
    turn; a message list is validated later like any canonical prompt)."""
    if exact is not None:
        if isinstance(exact, str):
            try:
                exact = json.loads(exact)
            except json.JSONDecodeError as e:
                raise RecordError("wrong_type", PROMPT_MESSAGES, f"is not valid JSON ({e.msg})") from None
        if not isinstance(exact, list):
            raise RecordError("wrong_type", PROMPT_MESSAGES, "expected a list of messages")
        return exact
    value = container[key]
    if not isinstance(value, (str, list)):
        raise RecordError(
            "wrong_type", f"{where}.{key}", f"expected a string or messages, got {type(value).__name__}"
        )
    return value


def optional_meta(container: Any, where: str, keys: tuple[str, ...] = ("channel", "brand")) -> dict[str, str]:
    """``channel``/``brand`` strings carried with the task (onbrand's exports write them)."""
    out: dict[str, str] = {}
    if not isinstance(container, Mapping):
        return out
    for key in keys:
        value = container.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise RecordError(
                "wrong_type", f"{where}.{key}", f"expected a string, got {type(value).__name__}"
            )
        out[key] = value
    return out


def option(options: Mapping[str, Any] | None, key: str, default: Any) -> Any:
    value = (options or {}).get(key)
    return default if value in (None, "", ()) else value
