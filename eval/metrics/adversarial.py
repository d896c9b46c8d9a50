"""The adversarial brand suite: violation rates of the rule each prompt targets, base vs aligned.

Prompts come from the card (``onbrand.data.adversarial.adversarial_prompts``: ``per_rule`` per
banned and required rule) and from user JSONL files (``{"prompt", "rule_id", "channel"?, "id"?}``
per line). Each answer is scored with ``card.check(answer, channel)`` on the targeted rule only:
a violation is a failed check of that rule. A required rule with a ``when`` trigger applies only
when the answer itself mentions the trigger (the card's own semantics); ``applied`` counts how
often a targeted rule applied at all. No reward model is run on these answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onbrand.data.adversarial import adversarial_prompts
from onbrand.eval.metrics.registry import EvalContext, Metric, fmt_ci, register, side
from onbrand.eval.metrics.registry import row as table_row
from onbrand.stats.ci import mean_ci


def _rule_kinds(card) -> dict[str, str]:
    return {r.id: "banned" for r in card.banned} | {r.id: "required" for r in card.required}


def _check_row(row: Any, where: str, kinds: dict[str, str], channels: set[str]) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: each line must be a JSON object")
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise ValueError(f"{where}: field 'prompt' must be a non-empty string (the user message)")
    if row.get("rule_id") not in kinds:
        raise ValueError(
            f"{where}: field 'rule_id' {row.get('rule_id')!r} is not a rule of the brand card; rules: {', '.join(kinds)}"
        )
    ch = row.get("channel")
    if ch is not None and ch not in channels:
        raise ValueError(
            f"{where}: field 'channel' {ch!r} is not a channel of the brand card; channels: {', '.join(sorted(channels)) or 'none'}"
        )


def load_inputs(paths: list[str], card) -> list[dict[str, Any]]:
    """User adversarial prompts; errors name the file, line and field."""
    kinds, channels = _rule_kinds(card), set(card.channels)
    out = []
    for path in paths:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"adversarial.inputs: {path}: no such file")
        with open(p, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
                _check_row(row, where, kinds, channels)
                out.append({"id": str(row.get("id") or f"{p.stem}-{n}"), "rule_id": row["rule_id"],
                            "rule_kind": kinds[row["rule_id"]], "channel": row.get("channel"),
                            "prompt": row["prompt"], "source": where})  # fmt: skip
    return out


def suite(card, per_rule: int, inputs: list[str]) -> list[dict[str, Any]]:
    """Generated (card) prompts first, then the user files'; ids must be unique."""
    items = [{**p, "source": "card"} for p in adversarial_prompts(card, per_rule)] + load_inputs(inputs, card)
    ids = [it["id"] for it in items]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"adversarial prompt ids must be unique; repeated: {', '.join(dup)}")
    return items


def _violations(card, items, texts_per_item) -> tuple[np.ndarray, np.ndarray]:
    """Per answer row: (violated, applied) of the item's targeted rule."""
    violated, applied = [], []
    for it, texts in zip(items, texts_per_item):
        for text in texts:
            chk = next((c for c in card.check(text, it["channel"]) if c.rule_id == it["rule_id"]), None)
            applied.append(chk is not None)
            violated.append(chk is not None and not chk.passed)
    return np.asarray(violated, dtype=bool), np.asarray(applied, dtype=bool)


def _rates(vb, va, nb, ci, seed) -> dict[str, Any]:
    return {
        "base": mean_ci(vb, n_boot=nb, ci=ci, seed=seed).to_dict(),
        "aligned": mean_ci(va, n_boot=nb, ci=ci, seed=seed).to_dict(),
        "diff": mean_ci(va.astype(float) - vb, n_boot=nb, ci=ci, seed=seed).to_dict(),  # paired
        "base_violations": int(vb.sum()),
        "aligned_violations": int(va.sum()),
    }


def adversarial(card, items, base_texts, aligned_texts, n_boot=1000, ci=0.95, seed=0) -> dict[str, Any]:
    """``base_texts[i]`` / ``aligned_texts[i]``: the answers (``n`` samples, sample j paired with
    sample j) to ``items[i]``. Rates are violations of the targeted rule per answer (lower is better)."""
    if not (len(items) == len(base_texts) == len(aligned_texts)):
        raise ValueError(
            f"adversarial: {len(items)} prompts, {len(base_texts)} base, {len(aligned_texts)} aligned"
        )
    vb, ab = _violations(card, items, base_texts)
    va, aa = _violations(card, items, aligned_texts)
    rows = np.asarray([it["rule_id"] for it, t in zip(items, base_texts) for _ in t])
    kinds = _rule_kinds(card)
    per_rule = {}
    for rid in [r for r in kinds if r in set(rows.tolist())]:
        sel = rows == rid
        per_rule[rid] = {"kind": kinds[rid], "n": int(sel.sum()),
                         "applied": {"base": int(ab[sel].sum()), "aligned": int(aa[sel].sum())},
                         **_rates(vb[sel], va[sel], n_boot, ci, seed)}  # fmt: skip
    worse = [r for r, v in per_rule.items() if v["aligned_violations"] > v["base_violations"]]
    per_prompt = [{"id": it["id"], "rule_id": it["rule_id"], "source": it["source"]} for it in items]
    k = 0
    for row, texts in zip(per_prompt, base_texts):
        row["base_violations"], row["aligned_violations"] = (
            int(vb[k : k + len(texts)].sum()),
            int(va[k : k + len(texts)].sum()),
        )
        k += len(texts)
    return {
        "n_prompts": len(items),
        "n_answers": int(len(rows)),
        "sources": {
            "card": sum(it["source"] == "card" for it in items),
            "files": sum(it["source"] != "card" for it in items),
        },
        "overall": _rates(vb, va, n_boot, ci, seed),
        "per_rule": per_rule,
        "worse_rules": worse,
        "per_prompt": per_prompt,
    }


# ----------------------------------------------------------------------------- the eval's family
@dataclass
class AdversarialRun:
    """The suite for this eval: prepared before generation (its prompts go into the same engine
    call as the main prompts), answered, then scored by the registered family below."""

    items: list[dict[str, Any]]
    skipped: str | None = None  # why there is no suite
    base_gen: list | None = None  # Generation per item (every sample), filled after generation
    aligned_gen: list | None = None

    def answer_rows(self) -> list[dict[str, Any]]:
        """``adversarial.jsonl``: each prompt with every answer of both models."""
        if not self.items:
            return []
        return [
            {**it, "base": b.texts, "aligned": a.texts}
            for it, b, a in zip(self.items, self.base_gen, self.aligned_gen)
        ]


def prepare_suite(cfg, card) -> AdversarialRun | None:
    """The adversarial prompts of ``cfg.adversarial`` for ``card`` (None when the suite is off)."""
    if not cfg.adversarial.enabled:
        return None
    if card is None:
        return AdversarialRun([], "no brand card (set brand: configs/brands/<id>.yaml)")
    items = suite(card, cfg.adversarial.per_rule, cfg.adversarial.inputs)
    return AdversarialRun(
        items, None if items else "no adversarial prompts (adversarial.per_rule=0 and no inputs)"
    )


def _compute(ctx: EvalContext) -> dict[str, Any] | None:
    run, cfg = ctx.adversarial, ctx.cfg
    if run is None or not run.items:
        if run is not None and run.skipped:
            ctx.skip("adversarial", run.skipped)
        return None
    texts = lambda gens: [g.texts for g in gens]  # noqa: E731 - every sample of each prompt
    out = adversarial(ctx.card, run.items, texts(run.base_gen), texts(run.aligned_gen), cfg.bootstrap, cfg.ci,
                      cfg.seed)  # fmt: skip
    if out["worse_rules"]:
        ctx.warnings.append(
            "adversarial prompts: aligned breaks these rules more often than base: "
            + ", ".join(out["worse_rules"])
        )
    return out


def _rows(m: dict[str, Any], judge) -> list[dict[str, str]]:
    a = m["adversarial"]
    o, worse = a["overall"], a["worse_rules"]
    note = f"{a['n_prompts']} prompts tempting the card's rules" + (
        f"; worse on: {', '.join(worse)}" if worse else ""
    )
    return [table_row("Adversarial prompts: violation rate (lower = better)", fmt_ci(o["base"]), fmt_ci(o["aligned"]),
                fmt_ci(o["diff"]), side(o["diff"], 0, lower_is_better=True), note)]  # fmt: skip


def adversarial_md(m: dict[str, Any]) -> list[str]:
    a = m["adversarial"]
    out = [
        "",
        "## Adversarial prompts (tempting each brand rule)",
        "",
        f"{a['n_prompts']} prompts ({a['sources']['card']} generated from the brand card, {a['sources']['files']} from "
        "files), each scored on the rule it targets; rate = answers breaking that rule (lower is better). "
        "A `when`-triggered rule applies only when the answer itself mentions the trigger (`applied`). "
        "Answers: `adversarial.jsonl`.",
        "",
        "| Rule | Kind | Answers | Base violation rate | Aligned violation rate | Δ aligned − base | Applied base / aligned |",
        "|---|---|---|---|---|---|---|",
    ]
    o = a["overall"]
    for rid, r in a["per_rule"].items():
        out.append(f"| {rid} | {r['kind']} | {r['n']} | {fmt_ci(r['base'], 2)} | {fmt_ci(r['aligned'], 2)} | "
                   f"{fmt_ci(r['diff'], 2)} | {r['applied']['base']} / {r['applied']['aligned']} |")  # fmt: skip
    out.append(
        f"| **all** | | {a['n_answers']} | {fmt_ci(o['base'], 2)} | {fmt_ci(o['aligned'], 2)} | {fmt_ci(o['diff'], 2)} | |"
    )
    if a["worse_rules"]:
        out += ["", "Aligned breaks these rules more often than base: " + ", ".join(a["worse_rules"]) + "."]
    return out


# No `metrics.` switch: the suite has its own section (`adversarial.enabled`, per_rule, inputs).
register(Metric("adversarial", order=75, compute=_compute, default=None, rows=((30, _rows),),
                section=(20, adversarial_md), gate_checks=("adversarial_no_worse",)))  # fmt: skip
