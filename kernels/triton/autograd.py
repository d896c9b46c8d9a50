"""autograd.Function for the Triton path: torch.mm (cuBLAS) GEMMs around the Triton row kernels.

Same modes as :mod:`onbrand.kernels.chunked` (frozen head: one pass; trainable head: two passes),
over COMPACTED rows (all targets valid). Logits chunks are stored in the input dtype (bf16/fp16 on
GPU, as cuBLAS returns them); log-sum-exp, softmax and gradients are computed in fp32 in registers;
the weight gradient is accumulated in fp32.
"""

from __future__ import annotations

import torch

from onbrand.kernels.chunked import one_pass_backward, plan_passes, stash_for_backward
from onbrand.kernels.triton.kernels import row_logsumexp, row_softmax_grad


def _logits(h, weight, bias):
    return torch.mm(h, weight.t()) if bias is None else torch.addmm(bias.to(h.dtype), h, weight.t())


class TritonLinearLogprobs(torch.autograd.Function):
    """forward(hidden (M, H), weight (V, H), bias | None, targets (M,), scale, chunk, stats)
    -> (logp (M,), entropy (M,) | empty, mean_logit (M,) | empty), fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale, chunk, stats):
        m = hidden.shape[0]
        one_pass, _need_w, c = plan_passes(ctx, bias, chunk, m)
        f32 = dict(device=hidden.device, dtype=torch.float32)
        logp, lse = torch.empty(m, **f32), torch.empty(m, **f32)
        ent, mean = torch.empty(m if stats else 0, **f32), torch.empty(m if stats else 0, **f32)
        gdir = torch.empty_like(hidden) if one_pass else None
        for s0 in range(0, m, c):
            s1 = min(s0 + c, m)
            z = _logits(hidden[s0:s1], weight, bias)
            lp, ls, en, mn = row_logsumexp(z, targets[s0:s1], scale, stats, write_grad=one_pass)
            logp[s0:s1], lse[s0:s1] = lp, ls
            if stats:
                ent[s0:s1], mean[s0:s1] = en, mn
            if one_pass:
                torch.mm(z, weight, out=gdir[s0:s1])  # z now holds softmax - onehot
        stash_for_backward(ctx, scale, c, one_pass, gdir, (hidden, weight, bias, targets, lse), (ent, mean))
        return logp, ent, mean

    @staticmethod
    def backward(ctx, grad_logp, _grad_ent, _grad_mean):
        if ctx.one_pass:
            return one_pass_backward(ctx, grad_logp)
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros(weight.shape[0], device=weight.device, dtype=torch.float32) if need_b else None
        grad_logp = grad_logp.float().contiguous()
        for s0 in range(0, hidden.shape[0], ctx.chunk):
            s1 = min(s0 + ctx.chunk, hidden.shape[0])
            h = hidden[s0:s1]
            z = row_softmax_grad(
                _logits(h, weight, bias), targets[s0:s1], lse[s0:s1], grad_logp[s0:s1], ctx.scale
            )
            if need_h:
                torch.mm(z, weight, out=grad_h[s0:s1])
            if need_w:
                if z.dtype == torch.float32:
                    grad_w.addmm_(z.t(), h)
                else:
                    grad_w += torch.mm(z.t(), h).float()
            if need_b:
                grad_b += z.float().sum(0)
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None
