"""One-pass fused linear preference loss: hidden states + head weight -> DPO-family loss and ALL gradients.

Why: with a TRAINABLE head, per-token log-probs need two passes (the weight gradient depends on
the upstream gradient, known only in the backward: 4 GEMMs). A preference loss is a sum of
per-pair terms, so the upstream gradient of every token of pair i is a per-sequence scalar
``c_s = dL/dlogp_s`` that is known as soon as pair i's two sequences have been scored. So, pair
by pair (like Liger's chunked losses, but streaming each sequence in row chunks so no
(T, V) block is held), the forward forms for each sequence s::

    D_n  = softmax(z_n) - onehot(t_n)          (chunk of rows, in place over the logits)
    G_n  = D_n W                               -> grad_hidden_n = -s c_s G_n
    M_s  = sum_n D_n^T h_n   (V, H) fp32       -> grad_W += -s c_s M_s,  grad_b += -s c_s sum_n D_n

then c_chosen, c_rejected from autograd of :func:`onbrand.kernels.losses.preference_loss` on that
pair. 3 GEMMs in total (as naive), the backward is a scalar multiply. Extra memory: two (V, H)
fp32 accumulators + one row chunk (for very large heads, where 2 V H fp32 outweighs the logits, use
:func:`onbrand.kernels.fused_linear_logprobs` + ``preference_loss`` instead). With a frozen head the
accumulators are skipped: same cost as the one-pass frozen mode of fused_linear_logprobs.
"""

from __future__ import annotations

import torch

from onbrand.kernels.chunked import DEFAULT_BUDGET_MB, _chunk_logits, _softmax_inplace, chunk_rows_for
from onbrand.kernels.losses import LOSS_TYPES, PreferenceLossOutput, nll_weight_for, preference_loss


def _score_sequence(h, t, weight, bias, scale, buf, gdir, m_acc, b_acc):
    """Rows h (n, H), targets t (n,) of one sequence -> summed logp; fills gdir (n, H), m_acc (V, H)."""
    total = h.new_zeros((), dtype=buf.dtype)
    c = buf.shape[0]
    for s0 in range(0, h.shape[0], c):
        s1 = min(s0 + c, h.shape[0])
        hc, tc = h[s0:s1], t[s0:s1]
        z = _chunk_logits(hc, weight, bias, scale, buf)
        tgt = z.gather(1, tc.unsqueeze(1)).squeeze(1)
        lse, _, _ = _softmax_inplace(z, False, None)
        total += (tgt - lse).sum()
        z.scatter_add_(1, tc.unsqueeze(1), z.new_full((s1 - s0, 1), -1.0))  # D = p - onehot
        if z.dtype == weight.dtype:
            torch.mm(z, weight, out=gdir[s0:s1])
        else:  # low-precision GEMM on the fp32 (p - onehot), cast once
            gdir[s0:s1] = torch.mm(z.to(weight.dtype), weight)
        if m_acc is not None:  # beta=0 on the first chunk: no zero-fill pass over the (V, H) buffer
            m_acc.addmm_(z.t(), hc if hc.dtype == z.dtype else hc.to(z.dtype), beta=0.0 if s0 == 0 else 1.0)
        if b_acc is not None:
            if s0 == 0:
                b_acc.copy_(z.sum(0))
            else:
                b_acc.add_(z.sum(0))
    return total


def _pair_coefficients(logps, counts, refs, b, loss_kw, nll_weight, total_chosen):
    """dL/dlogp for (chosen, rejected) of one pair; L = (1/B) sum_pairs l_i + w * NLL."""
    x = logps.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = preference_loss(
            x[:1], x[1:], refs[0], refs[1], chosen_tokens=counts[:1], rejected_tokens=counts[1:],
            nll_weight=0.0, **loss_kw,
        )  # fmt: skip
        (grad,) = torch.autograd.grad(out.loss, x)
    grad = grad / b
    grad[0] = grad[0] - nll_weight / max(total_chosen, 1)  # NLL = -sum(chosen logps) / #chosen tokens
    return grad


class _FusedPreference(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden, weight, bias, targets, seq_ids, n_pairs, refs, loss_kw, nll_weight, scale, chunk
    ):
        need_w = ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        v, hd = weight.shape
        buf = hidden.new_empty((chunk, v), dtype=acc)
        grad_h = torch.zeros_like(hidden)
        grad_w = weight.new_zeros((v, hd), dtype=acc) if need_w else None
        grad_b = weight.new_zeros(v, dtype=acc) if need_b else None
        m_acc = [weight.new_empty((v, hd), dtype=acc) for _ in range(2)] if need_w else [None, None]
        b_acc = [weight.new_empty(v, dtype=acc) for _ in range(2)] if need_b else [None, None]
        counts = torch.bincount(seq_ids[seq_ids >= 0], minlength=2 * n_pairs)
        total_chosen = int(counts[:n_pairs].sum())
        logps = hidden.new_zeros(2 * n_pairs, dtype=acc)
        for i in range(n_pairs):
            idx = [(seq_ids == i).nonzero().squeeze(1), (seq_ids == n_pairs + i).nonzero().squeeze(1)]
            gdirs = []
            for k in range(2):
                h, t = hidden[idx[k]], targets[idx[k]]
                gdirs.append(hidden.new_empty(h.shape))
                if h.shape[0]:
                    logps[i + k * n_pairs] = _score_sequence(
                        h, t, weight, bias, scale, buf, gdirs[k], m_acc[k], b_acc[k]
                    )
            pair = torch.stack([logps[i], logps[n_pairs + i]])
            pair_counts = torch.stack([counts[i], counts[n_pairs + i]])
            pair_refs = [None if r is None else r[i : i + 1].to(acc) for r in refs]
            coef = _pair_coefficients(
                pair, pair_counts, pair_refs, n_pairs, loss_kw, nll_weight, total_chosen
            )
            for k in range(2):
                if idx[k].numel() == 0:
                    continue
                a = float(-scale * coef[k])
                grad_h[idx[k]] = gdirs[k] * a
                if grad_w is not None:
                    grad_w.add_(m_acc[k], alpha=a)
                if grad_b is not None:
                    grad_b.add_(b_acc[k], alpha=a)
        full = preference_loss(
            logps[:n_pairs], logps[n_pairs:], *[None if r is None else r.to(acc) for r in refs],
            chosen_tokens=counts[:n_pairs], rejected_tokens=counts[n_pairs:], nll_weight=nll_weight, **loss_kw,
        )  # fmt: skip
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(logps, counts)
        return full.loss.detach(), logps, counts

    @staticmethod
    def backward(ctx, grad_loss, _grad_logps, _grad_counts):
        """The forward already formed dL/d(hidden, weight, bias); only the upstream scalar remains."""
        grad_h, grad_w, grad_b = ctx.saved_tensors
        out_h = grad_h * grad_loss.to(grad_h.dtype)
        out_w = None if grad_w is None else (grad_w * grad_loss).to(ctx.weight_dtype)
        out_b = None if grad_b is None else (grad_b * grad_loss).to(ctx.weight_dtype)
        return out_h, out_w, out_b, None, None, None, None, None, None, None, None


def _flat_rows(hidden, weight, targets, seq_ids, ignore_index: int):
    """Validate and flatten the inputs -> ``(h (N, H), t (N,), seq_ids (N,), n_pairs)``.

    Without ``seq_ids`` hidden is TRL's (2B, T, H) [chosen; rejected] batch and row b is sequence b;
    tokens whose target is ``ignore_index`` get sequence id -1."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1).long()
    if seq_ids is None:
        if hidden.dim() != 3 or hidden.shape[0] % 2:
            raise ValueError(
                f"hidden {tuple(hidden.shape)}: expected (2B, T, H) [chosen; rejected] or pass seq_ids"
            )
        seq_ids = torch.arange(hidden.shape[0], device=h.device).repeat_interleave(hidden.shape[1])
        n_pairs = hidden.shape[0] // 2
    else:
        seq_ids = seq_ids.reshape(-1).long()
        if seq_ids.shape != t.shape:
            raise ValueError(
                f"seq_ids {tuple(seq_ids.shape)} must have one entry per target {tuple(t.shape)}"
            )
        n_pairs = (int(seq_ids.max()) + 2) // 2
    if t.shape[0] != h.shape[0]:
        raise ValueError(
            f"targets {tuple(targets.shape)} must match hidden's leading dims {tuple(hidden.shape[:-1])}"
        )
    valid = t != ignore_index
    if valid.any() and (int(t[valid].min()) < 0 or int(t[valid].max()) >= weight.shape[0]):
        raise ValueError(
            f"targets out of range: valid ids are 0..{weight.shape[0] - 1} or ignore_index={ignore_index}"
        )
    return h, t, torch.where(valid, seq_ids, -1), n_pairs


def fused_linear_preference_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    *,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    seq_ids: torch.Tensor | None = None,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    nll_weight: float | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    memory_budget_mb: float = DEFAULT_BUDGET_MB,
) -> PreferenceLossOutput:
    """Preference loss straight from hidden states, one pass, no (N, V) tensor.

    Layout: hidden (2B, T, H) and targets (2B, T) with rows [chosen_0..chosen_{B-1}, rejected_0..]
    (TRL's concatenated batch), or hidden (N, H), targets (N,) and ``seq_ids`` (N,) giving each token's
    sequence (0..B-1 chosen, B..2B-1 rejected, -1 none: packed rows). Only targets != ignore_index
    count. Same loss and outputs as ``preference_loss(per-sequence sums of fused_linear_logprobs)``
    (token counts are taken from the targets); ``extras`` adds chosen_logps / rejected_logps.
    ``policy_chosen_nll`` is not supported here (the NLL is the chosen completion-token mean).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: must be one of {LOSS_TYPES}")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    h, t, seq_ids, n_pairs = _flat_rows(hidden, weight, targets, seq_ids, ignore_index)
    nll_weight = nll_weight_for(loss_type, nll_weight)
    loss_kw = dict(loss_type=loss_type, beta=beta, label_smoothing=label_smoothing, simpo_gamma=simpo_gamma)
    chunk = chunk_size or chunk_rows_for(weight.shape[0], hidden.dtype, memory_budget_mb)
    refs = (ref_chosen_logps, ref_rejected_logps)
    loss, logps, counts = _FusedPreference.apply(
        h, weight, bias, t.clamp(min=0), seq_ids, n_pairs, refs, loss_kw, nll_weight, 1.0 / temperature, chunk
    )
    out = preference_loss(
        logps[:n_pairs], logps[n_pairs:], *refs, chosen_tokens=counts[:n_pairs], rejected_tokens=counts[n_pairs:],
        nll_weight=nll_weight, **loss_kw,
    )  # fmt: skip
    out.loss = loss
    out.extras.update(chosen_logps=logps[:n_pairs], rejected_logps=logps[n_pairs:])
    return out
