"""Tokenizer-aware checks, with the model's tokenizer and chat template, exactly as training sees
the pair: ``[system = card.system_prompt()] + prompt`` then each completion.

For each record:

- the tokenized prompt (``add_generation_prompt=True``) must be a token prefix of the tokenized
  prompt + completion, for chosen and rejected (else ``template_mismatch``: the chat template
  rewrites earlier turns, so the loss mask would be wrong);
- lengths: ``P`` prompt tokens, ``C``/``R`` completion tokens (full minus prompt);
- truncation: a pair longer than ``max_length`` keeps its prompt and cuts completions to
  ``max_length - P`` tokens; when that is below ``min_completion_tokens`` the WHOLE pair is dropped
  (``too_long``), never one side, and never a completion cut to nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from onbrand.data.validate import Quarantined


def render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def with_system(record: dict[str, Any], system_prompt: str | None) -> list[dict[str, str]]:
    """The prompt as training renders it: the card's system prompt first unless the record has one."""
    prompt = list(record["prompt"])
    if system_prompt and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system_prompt}, *prompt]
    return prompt


def pair_lengths(tokenizer, record: dict[str, Any], system_prompt: str | None) -> dict[str, Any]:
    """``{"prompt": P, "chosen": C, "rejected": R, "prefix_ok": {"chosen": bool, "rejected": bool}}``."""
    prompt = with_system(record, system_prompt)
    p_ids = render(tokenizer, prompt, True)
    out: dict[str, Any] = {"prompt": len(p_ids), "prefix_ok": {}}
    for key in ("chosen", "rejected"):
        full = render(tokenizer, prompt + record[key], False)
        out["prefix_ok"][key] = full[: len(p_ids)] == p_ids
        out[key] = len(full) - len(p_ids)
    return out


def _quantiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "p50": 0, "p95": 0, "max": 0, "mean": 0.0}
    s = sorted(values)

    def q(f: float) -> int:
        return s[min(len(s) - 1, int(round(f * (len(s) - 1))))]

    return {"min": s[0], "p50": q(0.5), "p95": q(0.95), "max": s[-1], "mean": round(sum(s) / len(s), 2)}


def check_records(
    records: Iterable[dict[str, Any]],
    tokenizer,
    system_prompt: str | None,
    max_length: int,
    min_completion_tokens: int,
) -> tuple[list[dict[str, Any]], list[Quarantined], dict[str, Any]]:
    """Returns (kept records, quarantined pairs, statistics for the manifest/report).

    The statistics hold token-length quantiles, how many pairs exceed ``max_length`` (truncated
    vs dropped whole) and ``lengths``: ``{id: [prompt, chosen, rejected]}`` token counts."""
    kept, dropped = [], []
    lens: dict[str, list[int]] = {"prompt": [], "chosen": [], "rejected": []}
    per_id: dict[str, list[int]] = {}
    exceeding = truncated = 0
    for rec in records:
        info = pair_lengths(tokenizer, rec, system_prompt)
        src = rec.get("source") or {}
        where = (src.get("file", "?"), int(src.get("line") or 0))
        bad = [k for k, ok in info["prefix_ok"].items() if not ok]
        if bad:
            msg = "tokenized prompt is not a prefix of prompt + completion (chat template rewrites turns)"
            dropped.append(Quarantined(*where, "template_mismatch", bad[0], msg, rec["id"]))
            continue
        longest = info["prompt"] + max(info["chosen"], info["rejected"])
        if longest > max_length:
            exceeding += 1
            room = max_length - info["prompt"]
            if room < min_completion_tokens:
                msg = (
                    f"prompt {info['prompt']} tokens leaves {room} < min_completion_tokens "
                    f"{min_completion_tokens} within max_length {max_length}: pair dropped whole"
                )
                dropped.append(Quarantined(*where, "too_long", "prompt", msg, rec["id"]))
                continue
            truncated += 1
        for k in lens:
            lens[k].append(info[k])
        per_id[rec["id"]] = [info["prompt"], info["chosen"], info["rejected"]]
        kept.append(rec)
    stats = {
        "max_length": max_length,
        "min_completion_tokens": min_completion_tokens,
        "tokens": {k: _quantiles(v) for k, v in lens.items()},
        "pairs_exceeding_max_length": exceeding,
        "pairs_truncated": truncated,
        "pairs_dropped_too_long": sum(q.reason == "too_long" for q in dropped),
        "pairs_template_mismatch": sum(q.reason == "template_mismatch" for q in dropped),
        "lengths": per_id,  # id -> [prompt, chosen, rejected] tokens (token_lengths.json)
    }
    return kept, dropped, stats
