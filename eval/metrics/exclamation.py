"""Exclamation marks: the share of answers with at least one '!' and the mean number of '!' per
answer, for base and aligned, each with a bootstrap CI over answers, and aligned - base (paired).

Information only (no side in the verdict): on brand may mean fewer exclamation marks for one brand
and more for another. ``metrics.exclamation=false`` turns it off.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onbrand.eval.metrics.registry import EvalContext, Metric, fmt_ci, register, row
from onbrand.stats.ci import mean_ci


def exclamation(
    aligned: list[str], base: list[str], n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """``{"share": {...}, "per_answer": {...}, "n"}``; each with ``base``, ``aligned``, ``diff`` estimates."""
    if len(aligned) != len(base):
        raise ValueError(f"exclamation: {len(aligned)} aligned vs {len(base)} base answers")
    counts = {
        "aligned": np.array([t.count("!") for t in aligned], float),
        "base": np.array([t.count("!") for t in base], float),
    }

    def estimates(f) -> dict[str, Any]:
        a, b = f(counts["aligned"]), f(counts["base"])
        return {"base": mean_ci(b, n_boot, ci, seed).to_dict(), "aligned": mean_ci(a, n_boot, ci, seed).to_dict(),
                "diff": mean_ci(a - b, n_boot, ci, seed).to_dict()}  # fmt: skip

    return {
        "share": estimates(lambda c: (c > 0).astype(float)),
        "per_answer": estimates(lambda c: c),
        "n": len(aligned),
    }


def _compute(ctx: EvalContext) -> dict[str, Any]:
    return exclamation(ctx.aligned_texts, ctx.base_texts, ctx.cfg.bootstrap, ctx.cfg.ci, ctx.cfg.seed)


def _rows(m: dict[str, Any], judge) -> list[dict[str, str]]:
    """One row (the verdict table is the first screen): the share, and '!' per answer in the note."""
    share, per = m["exclamation"]["share"], m["exclamation"]["per_answer"]
    note = f"'!' per answer {per['base']['value']:.2f} → {per['aligned']['value']:.2f}, Δ {fmt_ci(per['diff'], 2)}"
    return [row("Answers with '!' (share)", fmt_ci(share["base"]), fmt_ci(share["aligned"]), fmt_ci(share["diff"]), "info", note)]  # fmt: skip


register(Metric("exclamation", order=80, compute=_compute, rows=((120, _rows),),
                help="share of answers with '!' and '!' per answer"))  # fmt: skip
