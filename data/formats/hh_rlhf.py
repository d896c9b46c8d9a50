"""Anthropic HH-RLHF rows: ``{"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": ...}``.

Both strings are parsed into turns; the shared leading turns (ending on a Human turn) become the
prompt and the rest of each the completion."""

from __future__ import annotations

import re
from typing import Any

from onbrand.data.formats.trl import META, split_shared_prefix
from onbrand.data.records import RecordError

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def detect(obj: dict[str, Any]) -> bool:
    c = obj.get("chosen")
    return (
        "prompt" not in obj
        and isinstance(c, str)
        and isinstance(obj.get("rejected"), str)
        and (c.lstrip().startswith("Human:") or "\n\nHuman:" in c)
    )


def parse_turns(text: str, field: str) -> list[dict[str, str]]:
    """``"\n\nHuman: a\n\nAssistant: b"`` -> [{"role": "user", "content": "a"}, {"role": "assistant", ...}]."""
    text = text.lstrip(" \t")
    marks = list(_TURN.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        raise RecordError("bad_structure", field, "does not start with a 'Human:' turn")
    turns = []
    for m, nxt in zip(marks, [*marks[1:], None]):
        end = nxt.start() if nxt else len(text)
        turns.append({"role": _ROLE[m.group(1)], "content": text[m.end() : end].strip()})
    return turns


def convert(obj: dict[str, Any]) -> dict[str, Any]:
    chosen = parse_turns(obj["chosen"], "chosen")
    rejected = parse_turns(obj["rejected"], "rejected")
    prompt, c, r = split_shared_prefix(chosen, rejected)
    if not prompt:
        raise RecordError("bad_structure", "prompt", "chosen and rejected share no leading Human turn")
    return {"prompt": prompt, "chosen": c, "rejected": r, **{k: obj[k] for k in META if k in obj}}
