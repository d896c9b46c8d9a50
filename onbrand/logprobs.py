"""Teacher-forced per-token log-probs with transformers: the ONE implementation behind
``HFEngine.score`` and the eval's transformers scoring path (``onbrand.eval.metrics.logprobs``), and
the oracle the vLLM engine's ``score`` is tested against.

The decoder's last hidden states and the LM head go through ``onbrand.kernels.fused_linear_logprobs``
(which never holds the ``(B, T, V)`` logits), so long texts on a 49k vocabulary fit in a small
memory budget. Log-probs are the raw log-softmax of the logits (temperature 1, no sampling
processing), returned as float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["token_logprobs"]


def token_logprobs(
    model, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], batch_size: int = 8
) -> list[np.ndarray]:
    """Log-probs of each response token given prompt + earlier response tokens.

    Right-padded batches ``(B, T)``; position ``t`` of the hidden states ``(B, T, H)`` predicts token
    ``t + 1``; only response positions are scored (the rest get ``ignore_index``). Sequences are
    batched in length order (less padding: the decoder forward is the cost) and returned in input order.
    """
    from tqdm.auto import tqdm

    if any(len(p) == 0 for p in prompts):
        raise ValueError(
            "token_logprobs: every prompt needs at least one token (the first token has no log-prob)"
        )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
    out: list[np.ndarray | None] = [None] * len(prompts)
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc="log-probs", unit="batch", disable=len(starts) < 4, leave=False):
        idx = order[s : s + batch_size]
        for i, lp in zip(idx, _batch_logprobs(model, [prompts[i] for i in idx], [responses[i] for i in idx])):
            out[i] = lp
    return out  # type: ignore[return-value]


def _batch_logprobs(model, ps: Sequence[Sequence[int]], rs: Sequence[Sequence[int]]) -> list[np.ndarray]:
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
            tgt[b, len(p) - 1 : len(p) - 1 + len(r)] = torch.tensor(list(r))
    with torch.no_grad():
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        logp = fused_linear_logprobs(hidden.float(), head.weight.float(), tgt, getattr(head, "bias", None))
    return [
        logp[b, len(p) - 1 : len(p) - 1 + len(r)].double().numpy() for b, (p, r) in enumerate(zip(ps, rs))
    ]
