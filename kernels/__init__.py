"""onbrand.kernels: fused linear log-prob / cross-entropy for the loss hot path, and the DPO family.

Public API (signatures are stable; see docs/architecture.md):

* :func:`fused_linear_logprobs` -- per-token log-probs of targets from hidden states and the head
  weight, never holding the (N, V) logits.
* :func:`fused_linear_cross_entropy` -- mean NLL for SFT on the same machinery.
* :func:`onbrand.kernels.losses.preference_loss` -- sigmoid / ipo / hinge / robust / sigmoid_norm /
  simpo / orpo (+ NLL weight, RPO) with TRL 1.x semantics.
* :func:`fused_linear_preference_loss` -- hidden states + head -> the same preference loss in ONE pass
  (3 GEMMs even with a trainable head; :mod:`onbrand.kernels.fused_preference`).

The path is picked by device: Triton kernels for CUDA tensors (when ``triton`` imports), the
chunked PyTorch path (:mod:`onbrand.kernels.chunked`) everywhere else.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# Shadowing trap: this folder is installed as onbrand.kernels. Imported bare (for example from the
# repository root without PYTHONSAFEPATH=1) it would hide the unrelated PyPI package 'kernels'.
if __name__ != "onbrand.kernels":  # pragma: no cover
    raise ImportError(f"'{__name__}' is onbrand's kernels folder: import onbrand.kernels instead")

from onbrand.kernels.chunked import DEFAULT_BUDGET_MB, ChunkedLinearLogprobs, chunk_rows_for  # noqa: E402

BACKENDS = ("auto", "torch", "triton", "reference")


class LogprobStats(NamedTuple):
    """Outputs of ``fused_linear_logprobs(..., return_stats=True)``; each has the shape of targets.

    ``logp`` is differentiable; ``entropy`` (nats) and ``mean_logit`` (mean over the vocabulary of
    the tempered logits) are detached metrics computed in the same pass; all 0 at ignored positions.
    """

    logp: torch.Tensor
    entropy: torch.Tensor
    mean_logit: torch.Tensor


def _check_inputs(hidden, weight, targets, bias, ignore_index, temperature, backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: must be one of {BACKENDS}")
    if hidden.dim() < 1 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}: expected hidden (*, H) and weight (V, H)"
        )
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"targets {tuple(targets.shape)} must match hidden's leading dims {tuple(hidden.shape[:-1])}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor, got {targets.dtype}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias {tuple(bias.shape)} must be (V,) = ({weight.shape[0]},)")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    valid = targets != ignore_index
    if valid.any():
        t = targets[valid]
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= weight.shape[0]:
            raise ValueError(
                f"targets out of range [{lo}, {hi}]: valid ids are 0..{weight.shape[0] - 1} or ignore_index={ignore_index}"
            )
    return valid


def _autocast_inputs(hidden, weight, bias):
    """Under autocast, run the GEMMs in the autocast dtype (as nn.Linear would); casts are differentiable."""
    dev = hidden.device.type
    if not torch.is_autocast_enabled(dev):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(dev)
    return hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def _pick_backend(backend: str, hidden: torch.Tensor) -> str:
    if backend != "auto":
        return backend
    if hidden.is_cuda:
        try:
            import onbrand.kernels.triton.autograd  # noqa: F401  (imports triton)

            return "triton"
        except ImportError:
            return "torch"
    return "torch"


def _compact_rows(hidden, targets, valid):
    """Flatten to rows and drop the ignored ones: ``(hidden (M, H), targets (M,) long, all_valid)``."""
    h2 = hidden.reshape(-1, hidden.shape[-1])
    flat_valid = valid.reshape(-1)
    all_valid = bool(flat_valid.all())
    hv = h2 if all_valid else h2[flat_valid]
    tv = targets.reshape(-1) if all_valid else targets.reshape(-1)[flat_valid]
    return hv.contiguous(), tv.long().contiguous(), all_valid


def _autograd_function(backend: str):
    if backend == "triton":
        from onbrand.kernels.triton.autograd import TritonLinearLogprobs

        return TritonLinearLogprobs
    return ChunkedLinearLogprobs


def _expand_rows(outs, valid, shape, all_valid: bool, return_stats: bool):
    """Compacted (M,) ``(logp, entropy, mean)`` -> the targets' ``shape``, 0 at ignored positions
    (entropy and mean are None without ``return_stats``)."""
    logp_v, ent_v, mean_v = outs
    if all_valid:
        logp = logp_v.view(shape)
        ent = ent_v.view(shape) if return_stats else None
        mean = mean_v.view(shape) if return_stats else None
    else:
        # masked_scatter keeps an all-masked batch connected to the graph (a differentiable zero).
        logp = logp_v.new_zeros(shape).masked_scatter(valid, logp_v)
        ent = ent_v.new_zeros(shape).masked_scatter(valid, ent_v) if return_stats else None
        mean = mean_v.new_zeros(shape).masked_scatter(valid, mean_v) if return_stats else None
    return logp, ent, mean


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    *,
    temperature: float = 1.0,
    return_stats: bool = False,
    chunk_size: int | None = None,
    memory_budget_mb: float = DEFAULT_BUDGET_MB,
    backend: str = "auto",
) -> torch.Tensor | LogprobStats:
    """Per-token log-probabilities of ``targets`` under ``softmax((hidden @ weight.T + bias) / temperature)``.

    Shapes: hidden (*, H), weight (V, H), targets (*) int, bias (V,) or None -> logp (*), float32
    (float64 for float64 inputs), 0 where ``targets == ignore_index``::

        logp_n = z_n[t_n] - logsumexp_v z_n,v,     z_n = (h_n W^T + b) / temperature

    Never materialises (N, V): rows are processed in chunks (``chunk_size`` rows, default from
    ``memory_budget_mb``); ignored rows are skipped entirely (no GEMM). The custom backward gives
    grad_hidden and, only when ``weight``/``bias`` require grad, grad_weight/grad_bias. With a frozen
    head (LoRA) the backward is a broadcast multiply of a direction formed during the forward.

    bf16/fp16 inputs: GEMMs in that dtype, log-sum-exp and softmax in fp32. ``return_stats=True``
    returns :class:`LogprobStats` (logp, entropy, mean_logit) from the same pass.
    ``backend``: "auto" (Triton on CUDA, chunked torch elsewhere), "torch", "triton", "reference"
    (full logits; tests and benchmarks only).
    """
    valid = _check_inputs(hidden, weight, targets, bias, ignore_index, temperature, backend)
    shape = targets.shape
    backend = _pick_backend(backend, hidden)
    if backend == "reference":
        from onbrand.kernels.reference import reference_linear_logprobs

        out = reference_linear_logprobs(hidden, weight, targets, bias, ignore_index, temperature)
        return LogprobStats(*out) if return_stats else out[0]
    hv, tv, all_valid = _compact_rows(hidden, targets, valid)
    chunk = chunk_size or chunk_rows_for(weight.shape[0], hidden.dtype, memory_budget_mb, return_stats)
    if chunk < 1:
        raise ValueError(f"chunk_size={chunk_size}: must be >= 1")
    fn = _autograd_function(backend)
    hv, weight, bias = _autocast_inputs(hv, weight, bias)
    with torch.autocast(hv.device.type, enabled=False):  # the Function picks its own precisions
        outs = fn.apply(hv, weight, bias, tv, 1.0 / temperature, int(chunk), return_stats)
    logp, ent, mean = _expand_rows(outs, valid, shape, all_valid, return_stats)
    return LogprobStats(logp, ent, mean) if return_stats else logp


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    *,
    reduction: str = "mean",
    temperature: float = 1.0,
    chunk_size: int | None = None,
    memory_budget_mb: float = DEFAULT_BUDGET_MB,
    backend: str = "auto",
) -> torch.Tensor:
    """SFT loss: ``-sum_n logp_n / #valid`` over targets != ignore_index (``reduction="mean"``, 0 when
    nothing is valid, like TRL's fused head), or ``-sum_n logp_n`` (``"sum"``).

    Shapes as :func:`fused_linear_logprobs`; returns a scalar fp32 tensor. Same as
    ``torch.nn.functional.cross_entropy(hidden @ weight.T + bias, targets, ignore_index=...)`` without
    the (N, V) logits.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}: must be 'mean' or 'sum'")
    logp = fused_linear_logprobs(
        hidden,
        weight,
        targets,
        bias,
        ignore_index,
        temperature=temperature,
        chunk_size=chunk_size,
        memory_budget_mb=memory_budget_mb,
        backend=backend,
    )
    total = -logp.sum()
    if reduction == "sum":
        return total
    return total / (targets != ignore_index).sum().clamp(min=1)


from onbrand.kernels.fused_preference import fused_linear_preference_loss  # noqa: E402

__all__ = [
    "BACKENDS",
    "LogprobStats",
    "fused_linear_cross_entropy",
    "fused_linear_logprobs",
    "fused_linear_preference_loss",
]
