"""Brand-voice similarity of aligned vs base answers (the similarity itself is ``onbrand.embedder``).

Without card exemplars, eval passes the train split's chosen answers (each in its
channel when the card has it, else channel-free).
"""

from __future__ import annotations

from typing import Any

from onbrand.embedder import Embedder, load_embedder, similarities
from onbrand.eval.inputs import train_exemplars
from onbrand.eval.metrics.registry import EvalContext, Metric, fmt_ci, register, row, side
from onbrand.stats.ci import mean_ci


def voice(
    embedder: Embedder, aligned, base, channels, exemplars, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    sa = similarities(embedder, aligned, channels, exemplars)
    sb = similarities(embedder, base, channels, exemplars)
    return {
        "aligned": mean_ci(sa, n_boot=n_boot, seed=seed).to_dict(),
        "base": mean_ci(sb, n_boot=n_boot, seed=seed).to_dict(),
        "diff": mean_ci(sa - sb, n_boot=n_boot, seed=seed).to_dict(),
        "aligned_per_sample": sa.tolist(),
        "base_per_sample": sb.tolist(),
    }


def _compute(ctx: EvalContext) -> dict[str, Any] | None:
    """Similarity to the card's exemplars; without any, to the snapshot's train chosen answers."""
    exemplars = list(getattr(ctx.card, "exemplars", []) or [])
    reference = f"the brand card's {len(exemplars)} exemplars"
    if not exemplars and ctx.cfg.snapshot:
        exemplars = train_exemplars(ctx.cfg.snapshot, ctx.card)
        reference = f"{len(exemplars)} train chosen answers, the card has no exemplars"
    if not exemplars:
        ctx.skip("voice", "the brand card has no exemplars (and no snapshot train split to fall back on)")
        return None
    embedder = ctx.embedder or load_embedder()
    out = voice(
        embedder, ctx.aligned_texts, ctx.base_texts, ctx.channels, exemplars, ctx.cfg.bootstrap, ctx.cfg.seed
    )
    out["reference"] = reference
    return out


def _rows(m: dict[str, Any], judge) -> list[dict[str, str]]:
    v = m["voice"]
    note = (
        "voice vs train chosen answers, the card has no exemplars"
        if "train chosen" in v.get("reference", "")
        else "cosine to exemplar centroid"
    )
    return [row("Brand-voice similarity", fmt_ci(v["base"]), fmt_ci(v["aligned"]), fmt_ci(v["diff"]), side(v["diff"], 0), note)]  # fmt: skip


register(Metric("voice", order=30, compute=_compute, rows=((70, _rows),),
                help="similarity to the card's exemplars (all-MiniLM-L6-v2)"))  # fmt: skip
