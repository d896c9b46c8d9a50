"""Label Studio JSON export (the full "JSON" export: one array of tasks) of a pairwise project.

A task of a project labelled with the ``<Pairwise>`` tag (the "Human Preference collection for
RLHF" template, or onbrand's own ``annotate export --to label-studio``)::

    {"id": 7, "data": {"prompt": "...", "answer1": "...", "answer2": "...", "channel"?: "..."},
     "annotations": [{"completed_by": 3, "was_cancelled": false, "created_at": "2026-...",
                      "result": [{"type": "pairwise", "from_name": "comparison",
                                  "value": {"selected": "left"}}]}, ...],
     "drafts": [...], "predictions": [...]}

``selected: "left"`` prefers the first name of the tag's ``toName`` (``answer1``), ``"right"`` the
second. Data layouts read without options: ``prompt`` + ``answer1``/``answer2`` (the RLHF
template) or ``prompt`` + ``text1``/``text2`` (the Pairwise template's names); other names come
from the options ``ls_prompt_field``, ``ls_left_field``, ``ls_right_field``
(``--ls-prompt-field`` ...). A task whose data has none of these is quarantined naming the missing
fields: the layout is never guessed.

Each annotation is one judgement: annotators = ``[completed_by]`` (the user id; an expanded user
object gives its id, its email only when it has no id). Cancelled annotations, annotations without
a pairwise choice (or ``selected: "none"``) and drafts are skipped and counted; predictions are
model output, not judgements, and are not read. JSON-min exports (one flat row per annotation,
``annotator``/``annotation_id`` keys) do not say which answer was left: they are quarantined
(``unknown_format``), asking for the full JSON export. Old exports' ``completions`` (Label Studio
before 1.0) are read like ``annotations``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onbrand.data.formats.judgements import (
    PROMPT_MESSAGES,
    Judgement,
    keys_hint,
    option,
    optional_meta,
    prompt_value,
    text_field,
)
from onbrand.data.records import RecordError

PROMPT = "prompt"
LAYOUTS = (("answer1", "answer2"), ("text1", "text2"))  # (left, right) data keys, in this order
OPTIONS = ("ls_prompt_field", "ls_left_field", "ls_right_field")


def _is_json_min(obj: dict[str, Any]) -> bool:
    return "data" not in obj and "annotation_id" in obj and "annotator" in obj


def detect(obj: dict[str, Any]) -> bool:
    judged = isinstance(obj.get("annotations"), list) or isinstance(obj.get("completions"), list)
    return (isinstance(obj.get("data"), dict) and judged) or _is_json_min(obj)


def _layout(data: dict[str, Any], options: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(prompt, left, right) data keys, from the options or a documented template layout."""
    prompt = option(options, "ls_prompt_field", PROMPT)
    left, right = option(options, "ls_left_field", None), option(options, "ls_right_field", None)
    if left or right:
        pairs = [(left or LAYOUTS[0][0], right or LAYOUTS[0][1])]
    else:
        pairs = [p for p in LAYOUTS if p[0] in data and p[1] in data] or [LAYOUTS[0]]
    left, right = pairs[0]
    missing = [k for k in (prompt, left, right) if k not in data]
    if missing:
        known = " or ".join(f"{PROMPT} + {a}/{b}" for a, b in LAYOUTS)
        raise RecordError(
            "missing_field",
            f"data.{missing[0]}",
            f"missing data field(s) {', '.join(missing)} (data has: {keys_hint(data)}); the templates use "
            f"{known}: name yours with --ls-prompt-field/--ls-left-field/--ls-right-field",
        )
    return prompt, left, right


def _annotator(who: Any) -> str | None:
    if isinstance(who, Mapping):
        who = who.get("id") if who.get("id") is not None else who.get("email")
    if who is None or isinstance(who, bool):
        return None
    return str(who)


def _judge(ann: Any, k: int, pair: dict[str, Any]) -> Judgement:
    where = f"annotations[{k - 1}]"
    if not isinstance(ann, dict):
        return Judgement(k, error=RecordError("wrong_type", where, "expected an annotation object"))
    if ann.get("was_cancelled"):
        return Judgement(k, skip="cancelled")
    result = ann.get("result") or []
    if not isinstance(result, list):
        return Judgement(k, error=RecordError("wrong_type", f"{where}.result", "expected a list"))
    picks = [r for r in result if isinstance(r, dict) and r.get("type") == "pairwise"]
    if len(picks) > 1:
        names = ", ".join(sorted({str(r.get("from_name")) for r in picks}))
        msg = f"{len(picks)} pairwise results (from_name: {names}); one Pairwise tag per task is read"
        return Judgement(k, error=RecordError("bad_structure", f"{where}.result", msg))
    value = picks[0].get("value") if picks else None
    selected = value.get("selected") if isinstance(value, dict) else None
    if selected not in ("left", "right"):
        return Judgement(k, skip="no_preference")
    chosen, rejected = (pair["left"], pair["right"]) if selected == "left" else (pair["right"], pair["left"])
    rec: dict[str, Any] = {"prompt": pair["prompt"], "chosen": chosen, "rejected": rejected, **pair["meta"]}
    who = _annotator(ann.get("completed_by"))
    if who:
        rec["annotators"] = [who]
    if isinstance(ann.get("created_at"), str) and ann["created_at"]:
        rec["created_at"] = ann["created_at"]
    return Judgement(k, record=rec)


def convert_many(obj: dict[str, Any], options: Mapping[str, Any] | None = None) -> list[Judgement]:
    """One judgement per annotation (then one skip per draft); a task with neither is one skip."""
    if _is_json_min(obj):
        raise RecordError(
            "unknown_format",
            "",
            "Label Studio JSON-min row (one flat row per annotation, no left/right): "
            "export the project as 'JSON' instead",
        )
    data = obj.get("data")
    if not isinstance(data, dict):
        raise RecordError(
            "missing_field", "data", f"a Label Studio task needs a data object (row has: {keys_hint(obj)})"
        )
    anns = obj.get("annotations", obj.get("completions")) or []
    drafts = obj.get("drafts") or []
    if not isinstance(anns, list) or not isinstance(drafts, list):
        raise RecordError("wrong_type", "annotations", "expected lists of annotations and drafts")
    if not anns and not drafts:
        return [Judgement(0, skip="unannotated")]
    prompt, left, right = _layout(data, options)
    pair = {
        "prompt": prompt_value(data, prompt, "data", data.get(PROMPT_MESSAGES)),
        "left": text_field(data, left, "data"),
        "right": text_field(data, right, "data"),
        "meta": optional_meta(data, "data"),
    }
    out = [_judge(ann, k, pair) for k, ann in enumerate(anns, start=1)]
    out += [Judgement(k, skip="draft") for k in range(len(anns) + 1, len(anns) + len(drafts) + 1)]
    return out
