"""Pure-torch reference for the fused linear log-prob / cross-entropy kernels.

It materialises the full (N, V) logits, so it is only for tests (run it in float64 as the oracle)
and for the "naive" column of ``scripts/bench_kernels.py``. Autograd gives its gradients.

Formulas (row n, target t_n, logits z_n = (h_n W^T + b) / T)::

    logp_n    = z_n[t_n] - logsumexp(z_n)                 (0 where t_n == ignore_index)
    entropy_n = logsumexp(z_n) - sum_v softmax(z_n)_v z_n,v
    mean_n    = mean_v z_n,v
"""

from __future__ import annotations

import torch


def reference_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden (*, H), weight (V, H), targets (*) -> (logp, entropy, mean_logit), each (*).

    Computed in the dtype of ``hidden`` (pass float64 tensors for the oracle). Ignored positions
    give 0 in all three outputs.
    """
    shape = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    logits = h @ weight.T
    if bias is not None:
        logits = logits + bias
    logits = logits / temperature
    mask = t != ignore_index
    logsm = torch.log_softmax(logits, dim=-1)
    logp = logsm.gather(1, t.clamp(min=0).unsqueeze(1)).squeeze(1) * mask
    probs = logsm.exp()
    entropy = -(probs * logsm).sum(-1) * mask
    mean_logit = logits.mean(-1) * mask
    return logp.view(shape), entropy.detach().view(shape), mean_logit.detach().view(shape)


def reference_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean NLL over the non-ignored targets (0 when every target is ignored)."""
    logp, _, _ = reference_linear_logprobs(hidden, weight, targets, bias, ignore_index)
    count = (targets != ignore_index).sum().clamp(min=1)
    return -logp.sum() / count
