"""TRL standard (non-conversational) rows: ``prompt``/``chosen``/``rejected`` as plain strings
(the prompt becomes one user turn, each completion one assistant turn), or ``chosen``/``rejected``
strings only with an implicit prompt (their longest common prefix, cut at a word boundary)."""

from __future__ import annotations

from typing import Any

from onbrand.data.records import OPTIONAL_LIST, OPTIONAL_STR, RecordError

META = (*OPTIONAL_STR, *OPTIONAL_LIST)


def detect(obj: dict[str, Any]) -> bool:
    strings = isinstance(obj.get("chosen"), str) and isinstance(obj.get("rejected"), str)
    return strings and ("prompt" not in obj or isinstance(obj.get("prompt"), str))


def convert(obj: dict[str, Any]) -> dict[str, Any]:
    out = {k: obj[k] for k in META if k in obj}
    if "prompt" in obj:
        out.update(prompt=obj["prompt"], chosen=obj.get("chosen"), rejected=obj.get("rejected"))
        return out
    chosen, rejected = obj["chosen"], obj["rejected"]
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and not chosen[n - 1].isspace():  # do not split inside a word
        n -= 1
    if not chosen[:n].strip():
        raise RecordError("bad_structure", "prompt", "implicit prompt: chosen and rejected share no prefix")
    out.update(prompt=chosen[:n].strip(), chosen=chosen[n:], rejected=rejected[n:])
    return out
