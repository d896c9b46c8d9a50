"""Metrics that need teacher-forced log-probs: implicit reward, KL(aligned || base), perplexity.

Where the log-probs come from (``EvalConfig.logprobs``): the engine that generated (``engine``:
``score()`` of the vLLM engine that already holds base + aligned + reference LoRAs, kept open after
generation), or a transformers PEFT model loaded for it (``transformers``: one model with the
aligned and reference adapters, :func:`onbrand.logprobs.token_logprobs`; always the path for a merged
checkpoint). ``auto`` = the engine when it is vLLM. Both give the raw log-softmax of each response
token (docs/eval.md states the measured tolerance); each result records ``scored_by``. One pass
(the ``logprobs`` entry of the registry, order 1: right after generation, before the reward model
loads) computes every enabled family and closes the scorer, so the engine never shares memory with
the reward model; the families then store its results in their usual places.

- Implicit reward (DPO): ``r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))``; accuracy = fraction of
  held-out pairs with ``r(chosen) > r(rejected)``, margin = mean ``r(chosen) - r(rejected)``.
- KL estimate on aligned samples ``y ~ pi``: ``KL(pi || pi_base) ~= mean_y sum_t [log pi(y_t|.) -
  log pi_base(y_t|.)]`` (the k1 estimator). Unbiased for sampled outputs; with greedy decoding it is
  the log-ratio at the aligned model's mode, a drift signal rather than an exact KL.
- Perplexity of raw general text: ``exp(-sum log p / tokens)`` over windows of ``window`` tokens.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from onbrand.engines import render_prompt
from onbrand.engines.base import ScoreItem, stop_token_ids
from onbrand.engines.hf import load_with_adapters, use_adapter
from onbrand.engines.pool import POOL
from onbrand.eval.inputs import general_text_files, with_system
from onbrand.eval.metrics.registry import (
    RATE_NULL,
    EvalContext,
    Metric,
    all_metrics,
    enabled,
    fmt_ci,
    register,
    row,
    side,
)
from onbrand.logprobs import token_logprobs
from onbrand.models import load_model
from onbrand.stats.ci import bootstrap, mean_ci

__all__ = [
    "ALIGNED",
    "REFERENCE",
    "FAMILIES",
    "token_logprobs",
    "implicit_reward",
    "kl_estimate",
    "perplexity",
]

# (prompt ids, response ids) -> per-token log-probs of each response, float64 arrays.
LogProbFn = Callable[[Sequence[list[int]], Sequence[list[int]]], list[np.ndarray]]


def implicit_reward(
    policy: LogProbFn,
    reference: LogProbFn,
    prompts,
    chosen,
    rejected,
    beta: float,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """DPO implicit reward accuracy and margin on held-out pairs (ids already tokenized)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0 for the implicit reward, got {beta}")

    def seq(fn, resp):
        return np.array([x.sum() for x in fn(prompts, resp)])

    rc = beta * (seq(policy, chosen) - seq(reference, chosen))
    rr = beta * (seq(policy, rejected) - seq(reference, rejected))
    margin = rc - rr
    return {
        "beta": beta,
        "accuracy": mean_ci((margin > 0).astype(float), n_boot=n_boot, seed=seed).to_dict(),
        "margin": mean_ci(margin, n_boot=n_boot, seed=seed).to_dict(),
        "chosen_reward": float(rc.mean()),
        "rejected_reward": float(rr.mean()),
        "n_pairs": len(margin),
    }


def kl_estimate(
    aligned: LogProbFn, base: LogProbFn, prompts, samples, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """k1 estimate of KL(aligned || base) on the aligned model's own samples."""
    la, lb = aligned(prompts, samples), base(prompts, samples)
    per_seq = np.array([(a - b).sum() for a, b in zip(la, lb)])
    tokens = np.array([len(a) for a in la])
    return {
        "per_sequence": mean_ci(per_seq, n_boot=n_boot, seed=seed).to_dict(),
        "per_token": float(per_seq.sum() / max(tokens.sum(), 1)),
    }


def windows(ids: list[int], window: int) -> list[list[int]]:
    return [ids[i : i + window] for i in range(0, len(ids) - 1, window) if len(ids[i : i + window]) > 1]


def perplexity(fn: LogProbFn, token_windows: list[list[int]]) -> dict[str, Any]:
    """Perplexity over windows (the first token of each window is context only)."""
    lps = fn([w[:1] for w in token_windows], [w[1:] for w in token_windows])
    nll = -np.array([x.sum() for x in lps])
    count = np.array([len(x) for x in lps])
    # CI by resampling windows; the statistic is the ratio of sums, not a mean of per-window ppl.
    est = bootstrap(lambda a, c: float(np.exp(a.sum() / c.sum())), nll, count, n_boot=300)
    return {"ppl": est.to_dict(), "tokens": int(count.sum()), "windows": len(token_windows)}


# ----------------------------------------------------------------------------- the eval's families
ALIGNED, REFERENCE = "aligned", "reference"
FAMILIES = ("kl", "implicit", "perplexity")  # the metric families that need log-probs (in order)


class LogProbModels:
    """Teacher-forced log-probs for base / aligned / reference from one transformers PEFT model
    (plus a second model when aligned is a merged checkpoint)."""

    scored_by = "transformers"

    def __init__(self, aligned, batch_size: int):
        adapters = {}
        if aligned.kind == "adapter":
            adapters[ALIGNED] = aligned.path
        if aligned.reference_adapter is not None:
            adapters[REFERENCE] = aligned.reference_adapter
        self.model, self.tokenizer = load_with_adapters(aligned.base_model, adapters)
        self.stops = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        self.merged = None
        if aligned.kind == "merged":
            self.merged = load_model(aligned.path).eval()
        self.has_reference = aligned.reference_adapter is not None
        self.batch_size = batch_size

    def fn(self, which: str) -> LogProbFn:
        def run(prompts, responses):
            if which == ALIGNED and self.merged is not None:
                return token_logprobs(self.merged, prompts, responses, self.batch_size)
            with use_adapter(self.model, _adapter(which, self.has_reference)) as m:
                return token_logprobs(m, prompts, responses, self.batch_size)

        return run

    def close(self) -> None:
        self.model = self.merged = None
        gc.collect()


class EngineScorer:
    """Teacher-forced log-probs from the engine that generated (``engine.score``): base, aligned and
    reference are the engine's base model and its LoRAs ``aligned`` / ``reference``."""

    def __init__(self, engine, has_reference: bool):
        self.engine, self.has_reference = engine, has_reference
        self.scored_by = engine.kind
        self.tokenizer, self.stops = engine.tokenizer, engine.stops

    def fn(self, which: str) -> LogProbFn:
        adapter = _adapter(which, self.has_reference)

        def run(prompts, responses):
            return self.engine.score([ScoreItem(p, r, adapter) for p, r in zip(prompts, responses)])

        return run

    def close(self) -> None:
        POOL.release(self.engine)


def _adapter(which: str, has_reference: bool) -> str | None:
    """``base`` / ``aligned`` / ``reference`` -> the adapter name (``None`` = base; the reference is
    the base when the aligned run has no parent adapter)."""
    return {"base": None, ALIGNED: ALIGNED, REFERENCE: REFERENCE if has_reference else None}[which]


def kl_note(sampling) -> str:
    """What the KL number means for these samples: only plain sampling (temperature 1, top_p 1,
    no repetition penalty) draws from the aligned model itself, so only then is it a KL estimate."""
    if sampling.greedy:
        how = "greedy samples: log-ratio at the aligned mode"
        return how + (
            f" (repetition penalty {sampling.repetition_penalty})"
            if sampling.repetition_penalty != 1.0
            else ""
        )
    if sampling.temperature == 1.0 and sampling.top_p == 1.0 and sampling.repetition_penalty == 1.0:
        return "sampled from the aligned model: Monte Carlo KL estimate"
    return (
        f"samples at temperature {sampling.temperature}, top_p {sampling.top_p}, repetition penalty "
        f"{sampling.repetition_penalty} (as served): mean log-ratio on the served outputs, not an unbiased KL"
    )


def _score_pass(ctx: EvalContext) -> None:
    """The ``logprobs`` pass (order 1: right after generation, before the reward model loads):
    every enabled log-prob family is computed on one scorer, which is then closed, so the engine
    that generated never holds memory beside the reward model. The families (orders 40-60) then
    only store these results; the pass's seconds are ``timings.logprob_s`` (and ``metric_s.logprobs``)."""
    todo = [m.name for m in all_metrics() if m.name in FAMILIES and enabled(m, ctx.cfg.metrics)]
    if not ctx.prompts.pairs and "implicit" in todo:
        todo.remove("implicit")  # the implicit family records the skip itself
    results: dict[str, dict[str, Any]] = ctx.shared("logprob_results", dict)
    t0, lp = time.perf_counter(), None
    try:
        for name in todo:
            lp = lp or _load(ctx)
            results[name] = {**_COMPUTE[name](ctx, lp), "scored_by": lp.scored_by}
    finally:
        if lp is not None:
            lp.close()
        engine = ctx.shared("logprob_engine", lambda: None)
        POOL.release(engine)  # idempotent; the runner releases it again on any error
    if todo:
        ctx.timing("logprob_s", t0)


def _load(ctx: EvalContext):
    """The engine the runner kept open after generation (``logprob_engine``), else transformers."""
    engine = ctx.shared("logprob_engine", lambda: None)
    if engine is not None:
        return EngineScorer(engine, ctx.aligned.reference_adapter is not None)
    return LogProbModels(ctx.aligned, ctx.cfg.batch_size)


def _stored(key: str) -> Callable[[EvalContext], dict[str, Any] | None]:
    """A family's compute: its result from the ``logprobs`` pass."""
    return lambda ctx: ctx.shared("logprob_results", dict).get(key)


def _kl(ctx: EvalContext, lp) -> dict[str, Any]:
    prompt_ids = [render_prompt(lp.tokenizer, c) for c in ctx.chats]
    samples = [g.token_ids[0] for g in ctx.aligned_gen]
    out = kl_estimate(lp.fn(ALIGNED), lp.fn("base"), prompt_ids, samples, ctx.cfg.bootstrap, ctx.cfg.seed)
    out["note"] = kl_note(ctx.cfg.sampling)
    return out


def _implicit(ctx: EvalContext, lp) -> dict[str, Any]:
    tok, pairs = lp.tokenizer, ctx.prompts.pairs
    end = lp.stops[:1]
    system = ctx.card.system_prompt() if ctx.card is not None else None
    p_ids = [render_prompt(tok, with_system(p["prompt"], system)) for p in pairs]

    def resp(p, key):
        text = "".join(x["content"] for x in p[key] if x["role"] == "assistant")
        return tok.encode(text, add_special_tokens=False) + end

    chosen, rejected = [resp(p, "chosen") for p in pairs], [resp(p, "rejected") for p in pairs]
    out = implicit_reward(lp.fn(ALIGNED), lp.fn(REFERENCE), p_ids, chosen, rejected, ctx.aligned.beta,
                          ctx.cfg.bootstrap, ctx.cfg.seed)  # fmt: skip
    out["reference"] = str(ctx.aligned.reference_adapter or "base model")
    return out


def _implicit_compute(ctx: EvalContext) -> dict[str, Any] | None:
    if not ctx.prompts.pairs:
        ctx.skip(
            "implicit", "no held-out preference pairs (needs a snapshot or records with chosen/rejected)"
        )
        return None
    return _stored("implicit")(ctx)


def _perplexity(ctx: EvalContext, lp) -> dict[str, Any]:
    ids: list[int] = []
    for f in general_text_files():
        ids += lp.tokenizer.encode(f.read_text(encoding="utf-8"), add_special_tokens=False)
    ids = ids[: ctx.cfg.ppl_max_tokens] if ctx.cfg.ppl_max_tokens else ids
    win = windows(ids, ctx.cfg.ppl_window)
    pb, pa = perplexity(lp.fn("base"), win), perplexity(lp.fn(ALIGNED), win)
    return {"base": pb, "aligned": pa, "ratio": pa["ppl"]["value"] / pb["ppl"]["value"]}


def _kl_rows(m: dict[str, Any], judge) -> list[dict[str, str]]:
    k = m["kl"]
    return [row("KL(aligned‖base) per sequence", "0", fmt_ci(k["per_sequence"]), f"{k['per_token']:.4f}/token",
                "info", k["note"])]  # fmt: skip


def _implicit_rows(m: dict[str, Any], judge) -> list[dict[str, str]]:
    im = m["implicit"]
    return [row("Implicit reward accuracy", "—", fmt_ci(im["accuracy"]), f"margin {fmt_ci(im['margin'])}",
                side(im["accuracy"], RATE_NULL), f"{im['n_pairs']} held-out pairs, beta {im['beta']}")]  # fmt: skip


def _perplexity_rows(m: dict[str, Any], judge) -> list[dict[str, str]]:
    p = m["perplexity"]
    # Which side the CIs favour; how much of a rise is acceptable is the gate's (max_ppl_increase).
    pa, pb = p["aligned"]["ppl"], p["base"]["ppl"]
    better = "aligned" if pa["high"] < pb["low"] else ("base" if pa["low"] > pb["high"] else "no regression")
    return [row("Perplexity, general text (lower = better)", fmt_ci(pb, 2), fmt_ci(pa, 2), f"×{p['ratio']:.3f}",
                better, "release limit: the gate's max_ppl_increase")]  # fmt: skip


_COMPUTE: dict[str, Callable[[EvalContext, Any], dict[str, Any]]] = {
    "kl": _kl,
    "implicit": _implicit,
    "perplexity": _perplexity,
}
register(Metric("logprobs", order=1, compute=_score_pass, default=None,
                help="the teacher-forced log-prob pass of kl / implicit / perplexity (no result of its own)"))  # fmt: skip
register(Metric("kl", order=40, compute=_stored("kl"), rows=((110, _kl_rows),),
                help="KL(aligned || base) estimate on aligned samples", gate_checks=("kl_per_token",)))  # fmt: skip
register(Metric("implicit", order=50, compute=_implicit_compute, rows=((80, _implicit_rows),),
                help="DPO implicit reward on held-out pairs; needs a snapshot", gate_checks=("implicit_accuracy",)))  # fmt: skip
register(Metric("perplexity", order=60, compute=_stored("perplexity"),
                rows=((90, _perplexity_rows),), help="capability: perplexity on the shipped general-text set",
                gate_checks=("perplexity_increase",)))  # fmt: skip
