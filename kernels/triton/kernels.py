"""Triton kernels and launch code for the fused linear log-prob path (CUDA).

Design (as Liger's fused linear cross-entropy, but per-token and with a frozen-head one-pass mode):
the two GEMMs per row chunk stay on cuBLAS (``torch.mm``, tensor cores, fp32 accumulation), and the
Triton kernels do the part PyTorch would spread over several memory-bound passes:

* :func:`row_logsumexp` -- one program per row: online log-sum-exp over vocabulary tiles of the
  chunk's logits (fp32 registers whatever the storage dtype), the target logit, optional entropy and
  mean logit, and (``write_grad``) the softmax-minus-one-hot written back IN PLACE over the logits
  so the next GEMM consumes it directly.
* :func:`row_softmax_grad` -- backward of the trainable-head path: rewrites recomputed logits in
  place into ``dz = g * s * (onehot - softmax)`` from the saved log-sum-exp.

Formulas per row n (z = logits * s, s = 1/temperature)::

    lse = m + log sum_v exp(z_v - m)      (m, sum updated tile by tile)
    H   = lse - sum_v p_v z_v             (accumulated with the same rescaling)

Works under ``TRITON_INTERPRET=1`` on CPU tensors (the tests use it); no ``tl.dot`` is used here, so
the interpreter's broken bf16 dot is not involved.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_lse_kernel(
    Z, stride_z, T, LOGP, LSE, ENT, MEAN, V, scale,
    BLOCK_V: tl.constexpr, STATS: tl.constexpr, WRITE_GRAD: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    z_row = Z + row * stride_z
    t = tl.load(T + row)
    m = -float("inf")
    s = 0.0
    w = 0.0
    tot = 0.0
    zt = 0.0
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        ok = cols < V
        z = tl.load(z_row + cols, mask=ok, other=-float("inf")).to(tl.float32) * scale
        m_new = tl.maximum(m, tl.max(z, axis=0))
        alpha = tl.exp(m - m_new)
        e = tl.exp(z - m_new)
        s = s * alpha + tl.sum(e, axis=0)
        if STATS:
            w = w * alpha + tl.sum(e * tl.where(ok, z, 0.0), axis=0)  # e = 0 where masked
            tot += tl.sum(tl.where(ok, z, 0.0), axis=0)
        zt += tl.sum(tl.where(cols == t, z, 0.0), axis=0)
        m = m_new
    lse = m + tl.log(s)
    tl.store(LOGP + row, zt - lse)
    tl.store(LSE + row, lse)
    if STATS:
        tl.store(ENT + row, lse - w / s)
        tl.store(MEAN + row, tot / V)
    if WRITE_GRAD:
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            ok = cols < V
            z = tl.load(z_row + cols, mask=ok, other=0.0).to(tl.float32) * scale
            d = tl.exp(z - lse) - tl.where(cols == t, 1.0, 0.0)
            tl.store(z_row + cols, d.to(Z.dtype.element_ty), mask=ok)


@triton.jit
def _row_grad_kernel(Z, stride_z, T, LSE, G, V, scale, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    z_row = Z + row * stride_z
    t = tl.load(T + row)
    lse = tl.load(LSE + row)
    coef = -tl.load(G + row).to(tl.float32) * scale
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        ok = cols < V
        z = tl.load(z_row + cols, mask=ok, other=0.0).to(tl.float32) * scale
        d = (tl.exp(z - lse) - tl.where(cols == t, 1.0, 0.0)) * coef
        tl.store(z_row + cols, d.to(Z.dtype.element_ty), mask=ok)


def _block_v(vocab: int) -> tuple[int, int]:
    block = min(triton.next_power_of_2(vocab), 4096)
    return block, (8 if block >= 2048 else 4)


def row_logsumexp(z: torch.Tensor, targets: torch.Tensor, scale: float, stats: bool, write_grad: bool):
    """z (C, V) logits (any float dtype, row-contiguous), targets (C,) int64.

    Returns (logp, lse, entropy | None, mean | None), each (C,) fp32. With ``write_grad`` z is
    overwritten by ``softmax(z * scale) - onehot(targets)`` (in z's dtype).
    """
    c, v = z.shape
    if z.stride(1) != 1:
        raise ValueError("row_logsumexp needs row-contiguous logits")
    f32 = dict(device=z.device, dtype=torch.float32)
    logp, lse = torch.empty(c, **f32), torch.empty(c, **f32)
    ent = torch.empty(c if stats else 1, **f32)
    mean = torch.empty(c if stats else 1, **f32)
    block, warps = _block_v(v)
    _row_lse_kernel[(c,)](
        z, z.stride(0), targets, logp, lse, ent, mean, v, float(scale),
        BLOCK_V=block, STATS=stats, WRITE_GRAD=write_grad, num_warps=warps,
    )  # fmt: skip
    return logp, lse, (ent if stats else None), (mean if stats else None)


def row_softmax_grad(
    z: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor, scale: float
):
    """In place: z (C, V) logits -> g * scale * (onehot(targets) - softmax(z * scale)) (z's dtype)."""
    c, v = z.shape
    if z.stride(1) != 1:
        raise ValueError("row_softmax_grad needs row-contiguous logits")
    block, warps = _block_v(v)
    _row_grad_kernel[(c,)](
        z, z.stride(0), targets, lse, grad.contiguous(), v, float(scale), BLOCK_V=block, num_warps=warps
    )
    return z
