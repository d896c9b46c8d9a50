"""Triton path: under TRITON_INTERPRET=1 on CPU tensors (always), and on CUDA when present.

The interpreter must be switched on before triton is first imported, and other test modules may
import triton (via vLLM or Liger) in this process, so the interpreter checks run in ONE subprocess
that prints JSON. Only fp32/fp16 there: the interpreter's bf16 arithmetic is not trustworthy; bf16
runs on a real GPU only. Shapes are small because each interpreted launch is slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

CHECK = r"""
import json, torch
from onbrand.kernels import fused_linear_logprobs
from onbrand.kernels.reference import reference_linear_logprobs
import onbrand.kernels.triton.kernels as tk
from triton.runtime.interpreter import InterpretedFunction
assert isinstance(tk._row_lse_kernel, InterpretedFunction)  # really interpreted
N, H, V = 23, 31, 123
out = {}
for dtype in (torch.float32, torch.float16):
    for train_head in (False, True):
        for bias in (False, True):
            g = torch.Generator().manual_seed(len(out))
            h = torch.randn(N, H, generator=g, dtype=torch.float64)
            w = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.4
            b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
            t = torch.randint(0, V, (N,), generator=g); t[::4] = -100
            up = torch.randn(N, generator=g, dtype=torch.float64)
            hr, wr = h.to(dtype).double().requires_grad_(), w.to(dtype).double().requires_grad_(train_head)
            br = None if b is None else b.to(dtype).double().requires_grad_(train_head)
            ref = reference_linear_logprobs(hr, wr, t, br, temperature=0.8)
            (ref[0] * up).sum().backward()
            hh, ww = h.to(dtype).requires_grad_(), w.to(dtype).requires_grad_(train_head)
            bb = None if b is None else b.to(dtype).requires_grad_(train_head)
            got = fused_linear_logprobs(hh, ww, t, bb, temperature=0.8, return_stats=True, chunk_size=10,
                                        backend="triton")
            (got.logp.double() * up).sum().backward()
            def err(a, r):
                return ((a.double() - r).abs().max() / r.abs().max().clamp(min=1.0)).item()
            e = {"logp": err(got.logp, ref[0]), "entropy": err(got.entropy, ref[1]),
                 "mean_logit": err(got.mean_logit, ref[2]), "grad_hidden": err(hh.grad, hr.grad),
                 "masked_zero": bool((got.logp[::4] == 0).all() and (hh.grad[::4] == 0).all())}
            if train_head:
                e["grad_weight"] = err(ww.grad, wr.grad)
                if bias:
                    e["grad_bias"] = err(bb.grad, br.grad)
            out[f"{str(dtype)[6:]}-{'trainable' if train_head else 'frozen'}-{'bias' if bias else 'nobias'}"] = e
print("RESULT" + json.dumps(out))
"""
TOL = {"float32": 2e-5, "float16": 1e-2}


@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton", reason="triton is in the dev extra")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONSAFEPATH="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def test_interpreter_covers_every_case(interpreted):
    assert len(interpreted) == 8


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mode", ["frozen-nobias", "frozen-bias", "trainable-nobias", "trainable-bias"])
def test_triton_interpreter_matches_reference(interpreted, dtype, mode):
    errors = interpreted[f"{dtype}-{mode}"]
    assert errors.pop("masked_zero")
    assert set(errors) >= {"logp", "entropy", "mean_logit", "grad_hidden"}
    for what, e in errors.items():
        assert e < TOL[dtype], (what, e)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("train_head", [False, True], ids=["frozen", "trainable"])
def test_triton_cuda_matches_chunked_and_reference(dtype, train_head):
    from onbrand.kernels import fused_linear_logprobs
    from onbrand.kernels.reference import reference_linear_logprobs

    g = torch.Generator().manual_seed(0)
    n, h_dim, v = 3 * 470, 256, 5003
    h = torch.randn(n, h_dim, generator=g, dtype=torch.float64)
    w = torch.randn(v, h_dim, generator=g, dtype=torch.float64) * 0.1
    t = torch.randint(0, v, (n,), generator=g)
    t[::7] = -100
    up = torch.randn(n, generator=g, dtype=torch.float64)
    hr, wr = h.to(dtype).double().requires_grad_(), w.to(dtype).double().requires_grad_(train_head)
    ref = reference_linear_logprobs(hr, wr, t)[0]
    (ref * up).sum().backward()
    hc = h.to(dtype).cuda().requires_grad_()
    wc = w.to(dtype).cuda().requires_grad_(train_head)
    got = fused_linear_logprobs(hc, wc, t.cuda(), backend="auto", chunk_size=512)
    (got.double() * up.cuda()).sum().backward()
    tol = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
    scale = ref.abs().max()
    assert (got.cpu().double() - ref).abs().max() / scale < tol
    assert (hc.grad.cpu().double() - hr.grad).abs().max() / hr.grad.abs().max() < tol
    if train_head:
        assert (wc.grad.cpu().double() - wr.grad).abs().max() / wr.grad.abs().max() < tol


def test_auto_backend_is_chunked_torch_on_cpu(monkeypatch):
    from onbrand.kernels import _pick_backend

    assert _pick_backend("auto", torch.zeros(1)) == "torch"
    assert _pick_backend("triton", torch.zeros(1)) == "triton"
