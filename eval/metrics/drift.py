"""Goodhart and drift signals that need no model: response lengths, distinct-2, repetition.

- ``distinct_2``: unique word bigrams / all word bigrams over all responses of a model (corpus
  level; low = the model says the same things to everyone).
- ``repetition``: per response, the fraction of word 4-grams that repeat an earlier 4-gram of the
  same response (degenerate loops score high), averaged over responses.
The KL(aligned || base) estimate needs log-probs and lives in ``logprobs.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onbrand.eval.metrics.registry import EvalContext, Metric, fmt_ci, register, row
from onbrand.stats.ci import mean_ci
from onbrand.stats.text import distinct_n, repetition_rate


def length_stats(token_counts) -> dict[str, Any]:
    x = np.asarray(token_counts, dtype=float)
    return {"mean": mean_ci(x).to_dict(), "median": float(np.median(x)), "max": float(x.max())}


def drift(aligned_texts, base_texts, aligned_tokens, base_tokens) -> dict[str, Any]:
    """Lengths (tokens), distinct-2 and repetition for both models, and the length ratio."""
    out = {}
    for name, texts, toks in (("aligned", aligned_texts, aligned_tokens), ("base", base_texts, base_tokens)):
        out[name] = {
            "tokens": length_stats(toks),
            "distinct_2": distinct_n(texts, 2),
            "repetition": mean_ci([repetition_rate(t) for t in texts]).to_dict(),
        }
    base_mean = out["base"]["tokens"]["mean"]["value"]
    out["length_ratio"] = out["aligned"]["tokens"]["mean"]["value"] / base_mean if base_mean else float("inf")
    return out


def _compute(ctx: EvalContext) -> dict[str, Any]:
    return drift(ctx.aligned_texts, ctx.base_texts, ctx.aligned_tokens, ctx.base_tokens)


def _repetition_rows(m: dict[str, Any], judge) -> list[dict[str, str]]:
    rb, ra = m["drift"]["base"]["repetition"], m["drift"]["aligned"]["repetition"]
    return [row("Repetition rate (repeated word 4-grams)", fmt_ci(rb), fmt_ci(ra), f"{ra['value'] - rb['value']:+.3f}",
                "info", "a win partly from fixing loops when base is much higher")]  # fmt: skip


def _goodhart_rows(m: dict[str, Any], judge) -> list[dict[str, str]]:
    """Goodhart / drift rows (information, never a side)."""
    d = m["drift"]
    b2, a2 = d["base"]["distinct_2"], d["aligned"]["distinct_2"]
    return [
        row("Mean response tokens", fmt_ci(d["base"]["tokens"]["mean"], 1), fmt_ci(d["aligned"]["tokens"]["mean"], 1),
            f"×{d['length_ratio']:.2f}", "info", "Goodhart: verbosity"),
        row("distinct-2 (corpus)", f"{b2:.3f}", f"{a2:.3f}", f"{a2 - b2:+.3f}", "info", "diversity down = drift"),
    ]  # fmt: skip


register(Metric("drift", order=0, compute=_compute, default=None, help="lengths, distinct-2, repetition",
                rows=((20, _repetition_rows), (100, _goodhart_rows)), gate_checks=("length_ratio",)))  # fmt: skip
