"""Chunked PyTorch fused linear log-probs: the CPU / default path.

Never holds an (N, V) tensor: rows are processed in chunks of ``C`` rows whose fp32 logits fit a
memory budget. Two modes, picked from what needs a gradient:

* **frozen head** (LoRA: ``weight``/``bias`` do not require grad) -- ONE pass. The forward forms the
  per-row gradient direction ``G_n = (softmax(z_n) - onehot(t_n)) W`` (N, H) while the chunk's logits
  are still in memory, so the backward is a single broadcast multiply ``grad_h = -s * g_n * G_n``
  (s = 1/temperature, g_n = dL/dlogp_n). Cost: 2 GEMMs, no recompute. This is the most common
  training mode of this project, hence first-class.
* **trainable head** -- TWO passes. The forward keeps only the log-sum-exp (N,); the backward
  recomputes each chunk's logits, turns them in place into ``g_n s (onehot - softmax)`` and feeds the
  two GEMMs (grad_hidden chunk, grad_weight accumulated in fp32). ``grad_weight`` depends on the
  upstream ``g_n`` which is only known in the backward, so a one-pass form would need all (N, V).

Low-precision inputs (bf16/fp16) run the GEMMs in their dtype (AVX-512 BF16 / tensor cores) and
the log-sum-exp, softmax and gradient accumulation in fp32. Written by hand because neither
PyTorch nor TRL exposes a fused linear log-prob with a frozen-weight one-pass mode and per-token
outputs (TRL's chunked path recomputes; Liger's fuses a whole loss, not per-token log-probs).
"""

from __future__ import annotations

import torch

DEFAULT_BUDGET_MB = 64.0


def chunk_rows_for(vocab: int, dtype: torch.dtype, budget_mb: float, stats: bool = False) -> int:
    """Rows per chunk so the chunk's working buffers fit ``budget_mb``.

    Per row: V fp32 logits (+ V in the input dtype for the low-precision GEMM output and the
    gradient cast, + V fp32 when entropy is requested).
    """
    per_row = vocab * 4
    if dtype not in (torch.float32, torch.float64):
        per_row += 2 * vocab * torch.finfo(dtype).bits // 8
    if dtype == torch.float64:
        per_row = vocab * 8
    if stats:
        per_row += vocab * 4
    return max(1, int(budget_mb * 2**20) // per_row)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias, scale: float, out: torch.Tensor):
    """h (C, H), weight (V, H) -> out[:C] = (h W^T + b) * scale in fp32 (acc dtype), in place."""
    z = out[: h.shape[0]]
    if h.dtype == z.dtype:
        torch.mm(h, weight.t(), out=z)
    else:
        z.copy_(torch.mm(h, weight.t()))  # low-precision GEMM (fp32 accumulate inside), upcast
    if bias is not None:
        z.add_(bias.to(z.dtype))
    if scale != 1.0:
        z.mul_(scale)
    return z


def _softmax_inplace(z: torch.Tensor, stats: bool, tmp: torch.Tensor | None):
    """z (C, V) logits -> softmax in place; returns (lse (C,), entropy (C,) or None, mean (C,) or None)."""
    mean = z.mean(1) if stats else None
    m = z.amax(1, keepdim=True)
    z.sub_(m)
    if stats:
        zc = tmp[: z.shape[0]]
        zc.copy_(z)
    z.exp_()
    s = z.sum(1, keepdim=True)
    lse = (m + s.log()).squeeze(1)
    entropy = None
    if stats:
        # H = lse - sum p z = log s - sum(e z') / s   with z' = z - m, e = exp(z')
        entropy = s.log().squeeze(1) - zc.mul_(z).sum(1) / s.squeeze(1)
    z.div_(s)
    return lse, entropy, mean


def plan_passes(ctx, bias, chunk: int, rows: int) -> tuple[bool, bool, int]:
    """``(one_pass, need_w, rows per chunk)`` of a forward: one pass when only ``hidden`` needs a grad."""
    need_h = ctx.needs_input_grad[0]
    need_w = ctx.needs_input_grad[1] or (bias is not None and ctx.needs_input_grad[2])
    return need_h and not need_w, need_w, max(1, min(chunk, rows))


def stash_for_backward(
    ctx, scale: float, chunk: int, one_pass: bool, gdir, recompute: tuple, stats_out: tuple
):
    """End of a forward: ``stats_out`` (entropy, mean) get no gradient; keep the one-pass gradient
    direction ``gdir``, or ``recompute`` = (hidden, weight, bias, targets, lse) for the two-pass backward."""
    ctx.mark_non_differentiable(*stats_out)
    ctx.scale, ctx.chunk, ctx.one_pass, ctx.has_bias = scale, chunk, one_pass, recompute[2] is not None
    if one_pass:
        ctx.save_for_backward(gdir)
    else:
        ctx.save_for_backward(*recompute)


def one_pass_backward(ctx, grad_logp):
    """Backward of the frozen-head mode: ``grad_h = -s * g_n * G_n``; nothing else has a gradient."""
    (gdir,) = ctx.saved_tensors
    coef = (grad_logp * -ctx.scale).to(gdir.dtype).unsqueeze(1)
    return gdir * coef, None, None, None, None, None, None


class ChunkedLinearLogprobs(torch.autograd.Function):
    """autograd.Function over COMPACTED rows (every target valid).

    forward(hidden (M, H), weight (V, H), bias (V,) | None, targets (M,) int64, scale, chunk, stats)
    -> (logp (M,), entropy (M,) | empty, mean_logit (M,) | empty), fp32 (fp64 for fp64 inputs).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale, chunk, stats):
        m, v = hidden.shape[0], weight.shape[0]
        one_pass, need_w, c = plan_passes(ctx, bias, chunk, m)
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        buf = hidden.new_empty((c, v), dtype=acc)
        tmp = hidden.new_empty((c, v), dtype=acc) if stats else None
        logp = hidden.new_empty(m, dtype=acc)
        lse = hidden.new_empty(m, dtype=acc) if need_w else None
        ent = hidden.new_empty(m if stats else 0, dtype=acc)
        mean = hidden.new_empty(m if stats else 0, dtype=acc)
        gdir = hidden.new_empty(hidden.shape) if one_pass else None
        for s0 in range(0, m, c):
            s1 = min(s0 + c, m)
            h, t = hidden[s0:s1], targets[s0:s1]
            z = _chunk_logits(h, weight, bias, scale, buf)
            tgt = z.gather(1, t.unsqueeze(1)).squeeze(1)
            lse_c, ent_c, mean_c = _softmax_inplace(z, stats, tmp)
            logp[s0:s1] = tgt - lse_c
            if lse is not None:
                lse[s0:s1] = lse_c
            if stats:
                ent[s0:s1], mean[s0:s1] = ent_c, mean_c
            if one_pass:
                # z is softmax now; subtract the one-hot in place -> (p - onehot), then one GEMM.
                z.scatter_add_(1, t.unsqueeze(1), z.new_full((s1 - s0, 1), -1.0))
                if z.dtype == hidden.dtype:
                    torch.mm(z, weight, out=gdir[s0:s1])
                else:
                    gdir[s0:s1] = torch.mm(z.to(weight.dtype), weight)
        stash_for_backward(ctx, scale, c, one_pass, gdir, (hidden, weight, bias, targets, lse), (ent, mean))
        return logp, ent, mean

    @staticmethod
    def backward(ctx, grad_logp, _grad_ent, _grad_mean):
        if ctx.one_pass:
            return one_pass_backward(ctx, grad_logp)
        return _two_pass_backward(ctx, grad_logp)


def _two_pass_backward(ctx, grad_logp):
    """Recompute chunk logits; dz = g s (onehot - p); grad_h = dz W, grad_W += dz^T h, grad_b += sum dz."""
    hidden, weight, bias, targets, lse = ctx.saved_tensors
    need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_b = ctx.has_bias and ctx.needs_input_grad[2]
    acc = lse.dtype
    m, v = hidden.shape[0], weight.shape[0]
    c = ctx.chunk
    buf = hidden.new_empty((c, v), dtype=acc)
    grad_h = torch.empty_like(hidden) if need_h else None
    # fp32 accumulator for the weight gradient: summing chunk contributions in bf16 would lose bits.
    grad_w = weight.new_zeros(weight.shape, dtype=acc) if need_w else None
    grad_b = weight.new_zeros(v, dtype=acc) if need_b else None
    for s0 in range(0, m, c):
        s1 = min(s0 + c, m)
        h, t = hidden[s0:s1], targets[s0:s1]
        z = _chunk_logits(h, weight, bias, ctx.scale, buf)
        z.sub_(lse[s0:s1].unsqueeze(1)).exp_()  # softmax from the saved log-sum-exp
        z.scatter_add_(1, t.unsqueeze(1), z.new_full((s1 - s0, 1), -1.0))
        z.mul_((grad_logp[s0:s1] * -ctx.scale).unsqueeze(1))  # dz = g s (onehot - p)
        if need_h:
            if z.dtype == hidden.dtype:
                torch.mm(z, weight, out=grad_h[s0:s1])
            else:
                grad_h[s0:s1] = torch.mm(z.to(weight.dtype), weight)
        if need_w:
            hh = h if h.dtype == acc else h.to(acc)
            grad_w.addmm_(z.t(), hh)
        if need_b:
            grad_b += z.sum(0)
    if grad_w is not None:
        grad_w = grad_w.to(weight.dtype)
    if grad_b is not None:
        grad_b = grad_b.to(bias.dtype)
    return grad_h, grad_w, grad_b, None, None, None, None
