"""Brand compliance per rule of the brand card, for base and aligned.

Uses ``card.check(text, channel) -> list[RuleCheck(rule_id, kind, passed, detail)]`` (the same
checks RL's rule reward uses). Per rule: pass rate over responses with a bootstrap CI and the
number of violations; overall: the fraction of responses passing every rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onbrand.eval.metrics.registry import EvalContext, Metric, fmt_ci, register, row, side
from onbrand.stats.ci import mean_ci


def rule_table(card, texts: list[str], channels: list[str | None]) -> tuple[dict[str, dict], np.ndarray]:
    """``{rule_id: {"kind", "passed": (N,) bool, "details": [...]}}`` and the all-pass vector."""
    rules: dict[str, dict] = {}
    all_pass = np.ones(len(texts), dtype=bool)
    for i, (text, channel) in enumerate(zip(texts, channels)):
        for chk in card.check(text, channel):
            row = rules.setdefault(
                chk.rule_id, {"kind": chk.kind, "passed": np.ones(len(texts), dtype=bool), "details": []}
            )
            if not chk.passed:
                row["passed"][i] = False
                all_pass[i] = False
                if len(row["details"]) < 3:
                    row["details"].append(str(chk.detail))
    return rules, all_pass


def compliance(
    card, aligned: list[str], base: list[str], channels: list[str | None], n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Per-rule and overall pass rates (with CIs) for both models; ``worse_rules`` lists rules where
    aligned passes less often than base."""
    if not (len(aligned) == len(base) == len(channels)):
        raise ValueError(f"compliance: {len(aligned)} aligned, {len(base)} base, {len(channels)} channels")
    ra, all_a = rule_table(card, aligned, channels)
    rb, all_b = rule_table(card, base, channels)
    per_rule = {}
    for rule_id in sorted(set(ra) | set(rb)):
        a = ra.get(rule_id) or {
            "kind": rb[rule_id]["kind"],
            "passed": np.ones(len(aligned), bool),
            "details": [],
        }
        b = rb.get(rule_id) or {"kind": a["kind"], "passed": np.ones(len(base), bool), "details": []}
        per_rule[rule_id] = {
            "kind": a["kind"],
            "aligned": mean_ci(a["passed"], n_boot=n_boot, seed=seed).to_dict(),
            "base": mean_ci(b["passed"], n_boot=n_boot, seed=seed).to_dict(),
            "aligned_violations": int((~a["passed"]).sum()),
            "base_violations": int((~b["passed"]).sum()),
            "aligned_examples": a["details"],
            "base_examples": b["details"],
        }
    worse = [r for r, v in per_rule.items() if v["aligned_violations"] > v["base_violations"]]
    return {
        "per_rule": per_rule,
        "overall": {
            "aligned": mean_ci(all_a, n_boot=n_boot, seed=seed).to_dict(),
            "base": mean_ci(all_b, n_boot=n_boot, seed=seed).to_dict(),
            "diff": mean_ci(all_a.astype(float) - all_b, n_boot=n_boot, seed=seed).to_dict(),
        },
        "worse_rules": worse,
    }


def _compute(ctx: EvalContext) -> dict[str, Any] | None:
    if ctx.card is None:
        ctx.skip("compliance", "no brand card (set brand: configs/brands/<id>.yaml)")
        return None
    return compliance(
        ctx.card, ctx.aligned_texts, ctx.base_texts, ctx.channels, ctx.cfg.bootstrap, ctx.cfg.seed
    )


ROW = "Brand compliance (all rules pass)"


def _rows(m: dict[str, Any], judge) -> list[dict[str, str]]:
    c = m["compliance"]
    o, worse = c["overall"], c["worse_rules"]
    better = "base" if worse and side(o["diff"], 0) != "aligned" else side(o["diff"], 0)
    note = f"rules worse than base: {', '.join(worse)}" if worse else "no rule worse"
    return [row(ROW, fmt_ci(o["base"]), fmt_ci(o["aligned"]), fmt_ci(o["diff"]), better, note)]


def _section(m: dict[str, Any]) -> list[str]:
    out = ["", "## Compliance per rule", "",
           "| Rule | Kind | Base pass | Aligned pass | Violations base → aligned |", "|---|---|---|---|---|"]  # fmt: skip
    for rid, r in m["compliance"]["per_rule"].items():
        out.append(f"| {rid} | {r['kind']} | {fmt_ci(r['base'], 2)} | {fmt_ci(r['aligned'], 2)} | "
                   f"{r['base_violations']} → {r['aligned_violations']} |")  # fmt: skip
    return out


register(Metric("compliance", order=20, compute=_compute, help="per-rule brand compliance; needs `brand`",
                rows=((60, _rows),), primary={ROW: 3}, section=(10, _section),
                gate_checks=("compliance_no_worse", "compliance_gain")))  # fmt: skip
