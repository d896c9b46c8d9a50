"""Metrics that need teacher-forced log-probs: implicit reward, KL(aligned || base), perplexity.

All three rest on :func:`token_logprobs`: the decoder's last hidden states and the LM head go through
``onbrand.kernels.fused_linear_logprobs`` (never holds the ``(B, T, V)`` logits), so long texts on a
49k vocabulary fit in a small memory budget.

- Implicit reward (DPO): ``r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))``; accuracy = fraction of
  held-out pairs with ``r(chosen) > r(rejected)``, margin = mean ``r(chosen) - r(rejected)``.
- KL estimate on aligned samples ``y ~ pi``: ``KL(pi || pi_base) ~= mean_y sum_t [log pi(y_t|.) -
  log pi_base(y_t|.)]`` (the k1 estimator). Unbiased for sampled outputs; with greedy decoding it is
  the log-ratio at the aligned model's mode, a drift signal rather than an exact KL.
- Perplexity of raw general text: ``exp(-sum log p / tokens)`` over windows of ``window`` tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from onbrand.engines import render_prompt
from onbrand.engines.base import stop_token_ids
from onbrand.engines.hf import load_with_adapters, use_adapter
from onbrand.eval.inputs import general_text_files, with_system
from onbrand.eval.metrics.registry import RATE_NULL, EvalContext, Metric, fmt_ci, register, row, side
from onbrand.kernels import fused_linear_logprobs
from onbrand.models import load_model
from onbrand.stats.ci import bootstrap, mean_ci

# (prompt ids, response ids) -> per-token log-probs of each response, float64 arrays.
LogProbFn = Callable[[Sequence[list[int]], Sequence[list[int]]], list[np.ndarray]]


def token_logprobs(
    model, prompts: Sequence[list[int]], responses: Sequence[list[int]], batch_size: int = 8
) -> list[np.ndarray]:
    """Log-probs of each response token given prompt + earlier response tokens.

    Right-padded batches ``(B, T)``; position ``t`` of the hidden states ``(B, T, H)`` predicts token
    ``t + 1``; only response positions are scored (the rest get ``ignore_index``). Sequences are
    batched in length order (less padding: the decoder forward is the cost) and returned in input order.
    """
    from tqdm.auto import tqdm

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
    out: list[np.ndarray | None] = [None] * len(prompts)
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc="log-probs", unit="batch", disable=len(starts) < 4, leave=False):
        idx = order[s : s + batch_size]
        for i, lp in zip(idx, _batch_logprobs(model, [prompts[i] for i in idx], [responses[i] for i in idx])):
            out[i] = lp
    return out  # type: ignore[return-value]


def _batch_logprobs(model, ps: Sequence[list[int]], rs: Sequence[list[int]]) -> list[np.ndarray]:
    import torch

    decoder, head = model.get_decoder(), model.get_output_embeddings()
    seqs = [list(p) + list(r) for p, r in zip(ps, rs)]
    width = max(len(q) for q in seqs)
    ids = torch.tensor([q + [0] * (width - len(q)) for q in seqs])
    mask = torch.tensor([[1] * len(q) + [0] * (width - len(q)) for q in seqs])
    tgt = torch.full((len(seqs), width - 1), -100, dtype=torch.long)
    for b, (p, r) in enumerate(zip(ps, rs)):
        if r:
            tgt[b, len(p) - 1 : len(p) - 1 + len(r)] = torch.tensor(r)
    with torch.no_grad():
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        logp = fused_linear_logprobs(hidden.float(), head.weight.float(), tgt, getattr(head, "bias", None))
    return [
        logp[b, len(p) - 1 : len(p) - 1 + len(r)].double().numpy() for b, (p, r) in enumerate(zip(ps, rs))
    ]


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


class LogProbModels:
    """Teacher-forced log-probs for base / aligned / reference from one PEFT model (plus a second
    model when aligned is a merged checkpoint)."""

    def __init__(self, aligned, batch_size: int):
        adapters = {}
        if aligned.kind == "adapter":
            adapters[ALIGNED] = aligned.path
        if aligned.reference_adapter is not None:
            adapters[REFERENCE] = aligned.reference_adapter
        self.model, self.tokenizer = load_with_adapters(aligned.base_model, adapters)
        self.merged = None
        if aligned.kind == "merged":
            self.merged = load_model(aligned.path).eval()
        self.has_reference = aligned.reference_adapter is not None
        self.batch_size = batch_size

    def fn(self, which: str) -> LogProbFn:
        def run(prompts, responses):
            if which == ALIGNED and self.merged is not None:
                return token_logprobs(self.merged, prompts, responses, self.batch_size)
            adapter = {"base": None, ALIGNED: ALIGNED, REFERENCE: REFERENCE if self.has_reference else None}[
                which
            ]
            with use_adapter(self.model, adapter) as m:
                return token_logprobs(m, prompts, responses, self.batch_size)

        return run


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


def _with_models(key: str, fn: Callable[[EvalContext, LogProbModels], dict[str, Any] | None]):
    """A compute for ``metrics[key]`` on the log-prob models, loaded once for every family here;
    ``timings.logprob_s`` runs from their load to the end of the last family."""

    def compute(ctx: EvalContext) -> None:
        lp, t0 = ctx.shared("logprob_models", lambda: _load(ctx))
        result = fn(ctx, lp)
        if result is not None:
            ctx.metrics[key] = result
        ctx.timing("logprob_s", t0)

    return compute


def _load(ctx: EvalContext) -> tuple[LogProbModels, float]:
    t0 = time.perf_counter()
    return LogProbModels(ctx.aligned, ctx.cfg.batch_size), t0


def _kl(ctx: EvalContext, lp: LogProbModels) -> dict[str, Any]:
    prompt_ids = [render_prompt(lp.tokenizer, c) for c in ctx.chats]
    samples = [g.token_ids[0] for g in ctx.aligned_gen]
    out = kl_estimate(lp.fn(ALIGNED), lp.fn("base"), prompt_ids, samples, ctx.cfg.bootstrap, ctx.cfg.seed)
    out["note"] = kl_note(ctx.cfg.sampling)
    return out


def _implicit(ctx: EvalContext, lp: LogProbModels) -> dict[str, Any]:
    tok, pairs = lp.tokenizer, ctx.prompts.pairs
    end = stop_token_ids(tok, getattr(lp.model, "generation_config", None))[:1]
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


def _implicit_compute(ctx: EvalContext) -> None:
    if not ctx.prompts.pairs:
        ctx.skip(
            "implicit", "no held-out preference pairs (needs a snapshot or records with chosen/rejected)"
        )
        return
    _with_models("implicit", _implicit)(ctx)


def _perplexity(ctx: EvalContext, lp: LogProbModels) -> dict[str, Any]:
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


register(Metric("kl", order=40, compute=_with_models("kl", _kl), rows=((110, _kl_rows),),
                help="KL(aligned || base) estimate on aligned samples", gate_checks=("kl_per_token",)))  # fmt: skip
register(Metric("implicit", order=50, compute=_implicit_compute, rows=((80, _implicit_rows),),
                help="DPO implicit reward on held-out pairs; needs a snapshot", gate_checks=("implicit_accuracy",)))  # fmt: skip
register(Metric("perplexity", order=60, compute=_with_models("perplexity", _perplexity),
                rows=((90, _perplexity_rows),), help="capability: perplexity on the shipped general-text set",
                gate_checks=("perplexity_increase",)))  # fmt: skip
