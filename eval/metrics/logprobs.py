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

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

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

    from onbrand.kernels import fused_linear_logprobs

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
