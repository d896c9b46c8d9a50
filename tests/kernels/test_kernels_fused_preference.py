"""fused_linear_preference_loss (one pass) vs reference log-probs (float64) + preference_loss (TRL-checked)."""

from __future__ import annotations

import pytest
import torch

from onbrand.kernels import fused_linear_logprobs, fused_linear_preference_loss
from onbrand.kernels.losses import LOSS_TYPES, preference_loss

B, T, H, V = 3, 19, 31, 123


def _inputs(seed, bias):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2 * B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.4
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    targets = torch.randint(0, V, (2 * B, T), generator=g)
    targets[:, :4] = -100  # prompt
    targets[1, 9:] = -100  # a shorter chosen completion
    refs = (
        -torch.rand(B, generator=g, dtype=torch.float64) * 40,
        -torch.rand(B, generator=g, dtype=torch.float64) * 40,
    )
    return hidden, weight, b, targets, refs


def _grads(fn, hidden, weight, bias, train_head, dtype=torch.float64):
    h = hidden.to(dtype).requires_grad_(True)
    w = weight.to(dtype).requires_grad_(train_head)
    b = None if bias is None else bias.to(dtype).requires_grad_(train_head)
    out = fn(h, w, b)
    (out.loss * 1.7).backward()  # a non-unit upstream gradient
    return out, h.grad, w.grad, None if b is None else b.grad


def _reference(targets, refs, kw):
    def fn(h, w, b):
        logp = fused_linear_logprobs(h, w, targets, b, backend="reference").sum(1)
        n = (targets != -100).sum(1)
        return preference_loss(logp[:B], logp[B:], *refs, chosen_tokens=n[:B], rejected_tokens=n[B:], **kw)

    return fn


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_matches_reference_all_losses_float64(loss_type, bias):
    hidden, weight, b, targets, refs = _inputs(len(loss_type), bias)
    kw = dict(loss_type=loss_type, beta=0.3, nll_weight=None if loss_type == "orpo" else 0.4)
    want = _grads(_reference(targets, refs, kw), hidden, weight, b, True)

    def ours(h, w, bb):
        return fused_linear_preference_loss(h, w, targets, bb, ref_chosen_logps=refs[0], ref_rejected_logps=refs[1],
                                            chunk_size=7, **kw)  # fmt: skip

    got = _grads(ours, hidden, weight, b, True)
    torch.testing.assert_close(got[0].loss, want[0].loss, rtol=1e-12, atol=1e-12)
    for g, w in zip(got[1:], want[1:]):
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[0].margins, want[0].margins)
    torch.testing.assert_close(got[0].accuracies, want[0].accuracies)


@pytest.mark.parametrize("train_head", [False, True], ids=["frozen", "trainable"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)], ids=["fp32", "bf16"])
def test_fp32_and_bf16_within_tolerance(train_head, dtype, tol):
    hidden, weight, b, targets, refs = _inputs(1, True)
    rounded = [x.to(dtype).double() for x in (hidden, weight, b)]
    kw = dict(loss_type="sigmoid", beta=0.1)
    want = _grads(_reference(targets, refs, kw), *rounded, train_head)

    def ours(h, w, bb):
        return fused_linear_preference_loss(
            h, w, targets, bb, ref_chosen_logps=refs[0], ref_rejected_logps=refs[1], **kw
        )

    got = _grads(ours, hidden, weight, b, train_head, dtype)
    assert got[1].dtype == dtype
    for g, w in zip(got[1:], want[1:]):
        if w is None:
            assert g is None
            continue
        scale = w.abs().max()
        assert (g.double() - w).abs().max() <= tol * scale


def test_packed_rows_with_seq_ids_and_empty_sequence():
    hidden, weight, _, targets, refs = _inputs(2, False)
    targets = targets.clone()
    targets[4] = -100  # rejected sequence of pair 1 fully masked: logp 0, still a valid pair
    kw = dict(loss_type="sigmoid", beta=0.2)
    want = _grads(_reference(targets, refs, kw), hidden, weight, None, True)
    # Pack all 2B sequences into one row of 2B*T tokens with a sequence id per token.
    seq_ids = torch.arange(2 * B).repeat_interleave(T)
    perm = torch.randperm(2 * B * T, generator=torch.Generator().manual_seed(0))

    def ours(h, w, bb):
        hp = h.reshape(-1, H)[perm]
        return fused_linear_preference_loss(hp, w, targets.reshape(-1)[perm], seq_ids=seq_ids[perm],
                                            ref_chosen_logps=refs[0], ref_rejected_logps=refs[1], **kw)  # fmt: skip

    got = _grads(ours, hidden, weight, None, True)
    torch.testing.assert_close(got[0].loss, want[0].loss)
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(got[2], want[2])
    assert got[0].extras["rejected_logps"][1] == 0


def test_bad_layout_raises():
    hidden, weight, _, targets, refs = _inputs(3, False)
    with pytest.raises(ValueError, match="expected \\(2B, T, H\\)"):
        fused_linear_preference_loss(
            hidden[:5], weight, targets[:5], ref_chosen_logps=refs[0], ref_rejected_logps=refs[1]
        )
    with pytest.raises(ValueError, match="loss_type='kto'"):
        fused_linear_preference_loss(hidden, weight, targets, loss_type="kto")
    with pytest.raises(ValueError, match="targets out of range"):
        fused_linear_preference_loss(
            hidden, weight, targets + V, ref_chosen_logps=refs[0], ref_rejected_logps=refs[1]
        )
