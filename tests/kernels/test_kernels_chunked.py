"""Chunked CPU path of fused_linear_logprobs / fused_linear_cross_entropy vs the float64 reference."""

from __future__ import annotations

import pytest
import torch

from onbrand.kernels import LogprobStats, fused_linear_cross_entropy, fused_linear_logprobs
from onbrand.kernels.reference import reference_linear_logprobs

N, H, V = 3 * 47, 31, 123  # odd shapes: nothing divides the chunk sizes
# dtype -> (atol, rtol) against float64 for logp and gradients.
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (6e-2, 3e-2),
    torch.float16: (1e-2, 1e-2),
}


def _inputs(seed=0, bias=False, n=N, masked_every=5):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.4
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    targets = torch.randint(0, V, (n,), generator=g)
    if masked_every:
        targets[::masked_every] = -100
    upstream = torch.randn(n, generator=g, dtype=torch.float64)  # random dL/dlogp, never ones/zeros
    return hidden, weight, b, targets, upstream


def _reference_grads(hidden, weight, bias, targets, upstream, train_head, temperature=1.0):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(train_head)
    b = None if bias is None else bias.clone().requires_grad_(train_head)
    logp, ent, mean = reference_linear_logprobs(h, w, targets, b, temperature=temperature)
    (logp * upstream).sum().backward()
    return logp.detach(), ent, mean, h.grad, w.grad, None if b is None else b.grad


def _ours(hidden, weight, bias, targets, upstream, train_head, dtype, **kw):
    h = hidden.to(dtype).requires_grad_(True)
    w = weight.to(dtype).requires_grad_(train_head)
    b = None if bias is None else bias.to(dtype).requires_grad_(train_head)
    out = fused_linear_logprobs(h, w, targets, b, return_stats=True, **kw)
    (out.logp.double() * upstream).sum().backward()
    return out, h.grad, w.grad, None if b is None else b.grad


def _close(got, want, dtype, what):
    atol, rtol = TOL.get(dtype, (1e-12, 1e-12))
    # Scale atol by the magnitude so the table means "relative to the typical entry".
    scale = want.abs().max().clamp(min=1.0)
    torch.testing.assert_close(got.double(), want, atol=atol * scale, rtol=rtol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("train_head", [False, True], ids=["frozen", "trainable"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("chunk", [1, 17, None], ids=["chunk1", "chunk17", "auto"])
def test_fp32_matches_float64_reference(train_head, bias, chunk):
    x = _inputs(seed=chunk or 3, bias=bias)
    ref = _reference_grads(*x, train_head)
    out, gh, gw, gb = _ours(*x, train_head, torch.float32, chunk_size=chunk)
    _close(out.logp, ref[0], torch.float32, "logp")
    _close(out.entropy, ref[1], torch.float32, "entropy")
    _close(out.mean_logit, ref[2], torch.float32, "mean_logit")
    _close(gh, ref[3], torch.float32, "grad_hidden")
    assert out.logp.dtype == torch.float32
    assert (out.logp[::5] == 0).all() and (gh[::5] == 0).all()  # ignored rows: 0 and no gradient
    if train_head:
        _close(gw, ref[4], torch.float32, "grad_weight")
        if bias:
            _close(gb, ref[5], torch.float32, "grad_bias")
    else:
        assert gw is None and gb is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("train_head", [False, True], ids=["frozen", "trainable"])
def test_low_and_high_precision_dtypes(dtype, train_head):
    x = _inputs(seed=7, bias=True)
    ref = _reference_grads(*x, train_head)
    # Compare against the reference on the ROUNDED inputs: the kernel's error, not the input rounding.
    rounded = [t.to(dtype).double() if t is not None and t.is_floating_point() else t for t in x[:3]]
    ref = _reference_grads(*rounded, x[3], x[4], train_head)
    out, gh, gw, gb = _ours(*x, train_head, dtype, chunk_size=29)
    assert out.logp.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert gh.dtype == dtype
    _close(out.logp, ref[0], dtype, "logp")
    _close(gh, ref[3], dtype, "grad_hidden")
    if train_head:
        _close(gw, ref[4], dtype, "grad_weight")
        _close(gb, ref[5], dtype, "grad_bias")


def test_temperature_and_leading_dims():
    hidden, weight, _, targets, upstream = _inputs(seed=4)
    ref = _reference_grads(hidden, weight, None, targets, upstream, True, temperature=0.7)
    h = hidden.float().view(3, 47, H).requires_grad_(True)
    w = weight.float().requires_grad_(True)
    logp = fused_linear_logprobs(h, w, targets.view(3, 47), temperature=0.7, chunk_size=40)
    assert logp.shape == (3, 47)
    (logp.double().view(-1) * upstream).sum().backward()
    _close(logp.view(-1), ref[0], torch.float32, "logp")
    _close(h.grad.view(-1, H), ref[3], torch.float32, "grad_hidden")
    _close(w.grad, ref[4], torch.float32, "grad_weight")


@pytest.mark.parametrize("train_head", [False, True], ids=["frozen", "trainable"])
def test_fully_masked_sequence_and_batch(train_head):
    hidden, weight, _, targets, upstream = _inputs(seed=5, masked_every=0)
    targets = targets.view(3, 47).clone()
    targets[1] = -100  # one whole sequence masked
    h = hidden.float().view(3, 47, H).requires_grad_(True)
    w = weight.float().requires_grad_(train_head)
    logp = fused_linear_logprobs(h, w, targets)
    (logp * upstream.float().view(3, 47)).sum().backward()
    assert (logp[1] == 0).all() and (h.grad[1] == 0).all()
    assert (logp[0] < 0).all() and h.grad[0].abs().sum() > 0
    # Everything masked: zeros, still connected to the graph (backward works, zero gradients).
    h2 = hidden.float().requires_grad_(True)
    logp2 = fused_linear_logprobs(h2, w, torch.full((N,), -100))
    logp2.sum().backward()
    assert (logp2 == 0).all() and (h2.grad == 0).all()
    loss = fused_linear_cross_entropy(h2, w, torch.full((N,), -100))
    assert loss.item() == 0.0


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_cross_entropy_matches_torch(bias):
    hidden, weight, b, targets, _ = _inputs(seed=6, bias=bias)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    logits = h @ w.T + (b if b is not None else 0)
    want = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    want_grads = torch.autograd.grad(want, (h, w))
    hf, wf = hidden.float().requires_grad_(True), weight.float().requires_grad_(True)
    got = fused_linear_cross_entropy(hf, wf, targets, None if b is None else b.float(), chunk_size=50)
    got.backward()
    _close(got, want.detach(), torch.float32, "loss")
    _close(hf.grad, want_grads[0], torch.float32, "grad_hidden")
    _close(wf.grad, want_grads[1], torch.float32, "grad_weight")
    total = fused_linear_cross_entropy(hf, wf, targets, None if b is None else b.float(), reduction="sum")
    _close(total, want.detach() * (targets != -100).sum(), torch.float32, "sum")


def test_no_grad_and_stats_type():
    hidden, weight, _, targets, _ = _inputs(seed=8)
    with torch.no_grad():
        out = fused_linear_logprobs(hidden.float(), weight.float(), targets, return_stats=True)
    assert isinstance(out, LogprobStats) and not out.logp.requires_grad
    ref = reference_linear_logprobs(hidden, weight, targets)
    _close(out.logp, ref[0], torch.float32, "logp")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(targets=torch.full((N,), V)), r"targets out of range \[123, 123\]"),
        (dict(targets=torch.zeros(N + 1, dtype=torch.long)), "must match hidden"),
        (dict(targets=torch.zeros(N)), "integer tensor"),
        (dict(weight=torch.randn(V, H + 1)), "expected hidden"),
        (dict(bias=torch.randn(V + 1)), "bias"),
        (dict(temperature=0.0), "temperature=0.0"),
        (dict(backend="cuda"), "backend='cuda'"),
        (dict(chunk_size=-1), "chunk_size=-1"),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    hidden, weight, _, targets, _ = _inputs(seed=9)
    args = dict(hidden=hidden.float(), weight=weight.float(), targets=targets)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fused_linear_logprobs(**args)


def test_autocast_bf16_runs_gemms_in_bf16_and_grads_reach_fp32_leaves():
    hidden, weight, _, targets, upstream = _inputs(seed=10)
    h = hidden.float().requires_grad_(True)
    w = weight.float().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp = fused_linear_logprobs(h, w, targets)
    (logp.double() * upstream).sum().backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    rounded = [t.to(torch.bfloat16).double() for t in (hidden, weight)]
    ref = _reference_grads(*rounded, None, targets, upstream, True)
    _close(logp, ref[0], torch.bfloat16, "logp")
    _close(h.grad, ref[3], torch.bfloat16, "grad_hidden")
    _close(w.grad, ref[4], torch.bfloat16, "grad_weight")
