"""Argilla record exports with a ranking or label question over two response fields.

Argilla 2.x ``dataset.records.to_json(path)`` (one JSON array) or the same dicts one per line
(``records.to_list(flatten=False)`` written as JSONL)::

    {"id": "r1", "fields": {"prompt": "...", "response1": "...", "response2": "..."},
     "metadata": {"channel"?: "..."},
     "responses": {"preference": [{"user_id": "u1", "value": ["response2", "response1"],
                                   "status": "submitted"}, ...]}}

Argilla 1.x ``FeedbackDataset`` records are read too: ``responses`` is a list of
``{"user_id", "values": {question: {"value": ...}}, "status"}``.

Fields: ``prompt`` + ``response1``/``response2`` unless the options ``argilla_prompt_field`` and
``argilla_response_fields`` (two names; ``--argilla-prompt-field``, ``--argilla-response-fields
a,b``) name others; missing fields are quarantined, never guessed. The question read is
``argilla_question`` (``--argilla-question``), else the only question whose answers name a response
field (two candidates, or none, quarantine the record and list the questions). Its value is:

* a ranking, best first: a plain list of field names (2.x) or ``[{"value": name, "rank": n}]``
  (1.x and the server's shape; rank 1 is best). Equal ranks are a ``tie`` (skipped, counted);
* a label (single choice) naming the better field; a label naming neither field (e.g. "tie") is
  skipped as ``no_preference``.

One judgement per submitted response (a response without ``status``, as older 2.x exports write
it, counts as submitted); ``draft`` and ``discarded`` responses are skipped and counted.
Annotators = ``[user_id]``. Suggestions are model output and are not read. Flattened rows
(``to_list(flatten=True)``, ``to_datasets``/Hub exports) are not this format.
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
RESPONSES = ("response1", "response2")
OPTIONS = ("argilla_prompt_field", "argilla_response_fields", "argilla_question")
SKIPPED_STATUS = ("draft", "discarded")


def detect(obj: dict[str, Any]) -> bool:
    return isinstance(obj.get("fields"), dict) and isinstance(obj.get("responses"), (dict, list))


def _by_question(responses: Any) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """2.x ``{question: [{user_id, value, status}]}`` or 1.x ``[{user_id, values, status}]`` ->
    (``{question: [{user_id, value, status, ...}]}``, 1.x responses without values)."""
    if isinstance(responses, dict):
        for q, answers in responses.items():
            if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
                raise RecordError("wrong_type", f"responses.{q}", "expected a list of response objects")
        return {str(q): a for q, a in responses.items() if a}, []
    out: dict[str, list[dict[str, Any]]] = {}
    empty = []
    for i, r in enumerate(responses):
        if not isinstance(r, dict) or not isinstance(r.get("values") or {}, dict):
            msg = "expected {user_id, values: {question: {value}}, status}"
            raise RecordError("wrong_type", f"responses[{i}]", msg)
        if not r.get("values"):  # e.g. a 1.x response discarded before any answer
            empty.append(r)
        for q, v in (r.get("values") or {}).items():
            out.setdefault(str(q), []).append({**r, "value": v.get("value") if isinstance(v, dict) else v})
    return out, empty


def _names(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [v.get("value") if isinstance(v, dict) else v for v in value]
    return [value]


def _question(by_q: dict[str, list], fields: tuple[str, str], options: Mapping[str, Any] | None) -> str:
    wanted = option(options, "argilla_question", None)
    if wanted:
        return wanted
    named = sorted(
        q
        for q, answers in by_q.items()
        if q and any(n in fields for a in answers for n in _names(a.get("value")))
    )
    if len(named) == 1:
        return named[0]
    asked = ", ".join(sorted(q for q in by_q if q)) or "none"
    what = "several questions name" if named else "no ranking or label question names"
    raise RecordError(
        "unknown_format",
        "responses",
        f"{what} the response fields {fields[0]}/{fields[1]} (questions: {asked}); pass --argilla-question",
    )


def _preference(value: Any, fields: tuple[str, str], where: str) -> tuple[int | None, str]:
    """(index of the better field in ``fields`` or None, skip reason when None)."""
    if isinstance(value, str):
        return (fields.index(value), "") if value in fields else (None, "no_preference")
    if not isinstance(value, list):
        raise RecordError(
            "wrong_type", where, f"expected a ranking list or a label, got {type(value).__name__}"
        )
    ranks: dict[str, Any] = {}
    for pos, item in enumerate(value, start=1):
        name, rank = (item.get("value"), item.get("rank")) if isinstance(item, dict) else (item, pos)
        if name in fields:
            ranks[name] = rank
    missing = [f for f in fields if f not in ranks]
    if missing:
        raise RecordError("bad_structure", where, f"the ranking does not rank {', '.join(missing)}")
    a, b = ranks[fields[0]], ranks[fields[1]]
    if not all(isinstance(r, int) and not isinstance(r, bool) for r in (a, b)):
        raise RecordError("wrong_type", where, f"ranks must be integers, got {a!r} and {b!r}")
    if a == b:
        return None, "tie"
    return (0 if a < b else 1), ""


def _judge(resp: dict[str, Any], k: int, where: str, fields: tuple[str, str], pair: dict) -> Judgement:
    status = resp.get("status") or "submitted"
    if status in SKIPPED_STATUS:
        return Judgement(k, skip=status)
    if status != "submitted":
        return Judgement(k, error=RecordError("wrong_type", f"{where}.status", f"unknown status {status!r}"))
    try:
        best, skip = _preference(resp.get("value"), fields, f"{where}.value")
    except RecordError as e:
        return Judgement(k, error=e)
    if best is None:
        return Judgement(k, skip=skip)
    texts = pair["texts"]
    rec: dict[str, Any] = {
        "prompt": pair["prompt"],
        "chosen": texts[best],
        "rejected": texts[1 - best],
        **pair["meta"],
    }
    if resp.get("user_id") is not None:
        rec["annotators"] = [str(resp["user_id"])]
    when = resp.get("updated_at") or resp.get("inserted_at")
    if isinstance(when, str) and when:
        rec["created_at"] = when
    return Judgement(k, record=rec)


def _fields(obj: dict[str, Any], options: Mapping[str, Any] | None) -> tuple[str, tuple[str, str]]:
    prompt = option(options, "argilla_prompt_field", PROMPT)
    names = option(options, "argilla_response_fields", RESPONSES)
    if isinstance(names, str):
        names = tuple(x.strip() for x in names.split(","))
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"argilla response fields: expected two different names, got {names!r}")
    missing = [k for k in (prompt, *names) if k not in obj["fields"]]
    if missing:
        raise RecordError(
            "missing_field",
            f"fields.{missing[0]}",
            f"missing field(s) {', '.join(missing)} (fields: {keys_hint(obj['fields'])}); name them with "
            "--argilla-prompt-field/--argilla-response-fields",
        )
    return prompt, (names[0], names[1])


def convert_many(obj: dict[str, Any], options: Mapping[str, Any] | None = None) -> list[Judgement]:
    """One judgement per response to the preference question; no responses at all is one skip."""
    if not isinstance(obj.get("fields"), dict):
        raise RecordError(
            "unknown_format",
            "fields",
            f"not an Argilla record with a fields object (row has: {keys_hint(obj)}); flattened rows "
            "(to_list(flatten=True), to_datasets, Hub) are not read: export with dataset.records.to_json",
        )
    by_q, empty = _by_question(obj.get("responses") or {})
    tail = [r.get("status") if r.get("status") in SKIPPED_STATUS else "no_preference" for r in empty]
    if not by_q:
        return [Judgement(k, skip=s) for k, s in enumerate(tail, 1)] or [Judgement(0, skip="unannotated")]
    prompt, fields = _fields(obj, options)
    question = _question(by_q, fields, options)
    answers = by_q.get(question, [])
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    pair = {
        "prompt": prompt_value(obj["fields"], prompt, "fields", meta.get(PROMPT_MESSAGES)),
        "texts": [text_field(obj["fields"], f, "fields") for f in fields],
        "meta": optional_meta(meta, "metadata"),
    }
    out = [_judge(r, k, f"responses.{question}[{k - 1}]", fields, pair) for k, r in enumerate(answers, 1)]
    out += [Judgement(len(out) + k, skip=s) for k, s in enumerate(tail, 1)]
    return out or [Judgement(0, skip="unannotated")]
