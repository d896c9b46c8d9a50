"""TRL conversational preference rows: ``prompt``/``chosen``/``rejected`` as message lists, or the
implicit-prompt form (``chosen``/``rejected`` only, each the whole conversation; the shared leading
messages become the prompt, as TRL's ``extract_prompt`` does)."""

from __future__ import annotations

from typing import Any

from onbrand.data.records import OPTIONAL_LIST, OPTIONAL_STR, RecordError

META = (*OPTIONAL_STR, *OPTIONAL_LIST)


def detect(obj: dict[str, Any]) -> bool:
    lists = isinstance(obj.get("chosen"), list) and isinstance(obj.get("rejected"), list)
    return lists and ("prompt" not in obj or isinstance(obj.get("prompt"), list))


def split_shared_prefix(chosen: list[Any], rejected: list[Any]) -> tuple[list, list, list]:
    """Longest common leading messages -> (prompt, chosen rest, rejected rest); the prompt is cut
    back to end on a user turn so both completions start with the assistant."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and not (isinstance(chosen[n - 1], dict) and chosen[n - 1].get("role") == "user"):
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def convert(obj: dict[str, Any]) -> dict[str, Any]:
    out = {k: obj[k] for k in META if k in obj}
    c = obj.get("chosen")
    if (
        isinstance(obj.get("prompt"), str)
        and isinstance(c, list)
        and c
        and isinstance(c[0], dict)
        and c[0].get("role") == "user"
    ):
        obj = {k: v for k, v in obj.items() if k != "prompt"}  # prompt string + full conversations
    if "prompt" in obj:
        out.update(prompt=obj["prompt"], chosen=obj.get("chosen"), rejected=obj.get("rejected"))
        for k in ("chosen", "rejected"):
            if k not in obj:
                raise RecordError("missing_field", k, "is required")
        return out
    prompt, chosen, rejected = split_shared_prefix(obj["chosen"], obj["rejected"])
    if not prompt:
        raise RecordError(
            "bad_structure", "prompt", "implicit prompt: chosen and rejected share no leading user turn"
        )
    out.update(prompt=prompt, chosen=chosen, rejected=rejected)
    return out
