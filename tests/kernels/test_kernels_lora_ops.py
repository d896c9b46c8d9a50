"""Grouped multi-LoRA matmul: float64 reference, vLLM's own torch ops as the oracle, odd shapes."""

from __future__ import annotations

import pytest
import torch

from onbrand.kernels.lora_ops import grouped_lora_matmul


def reference(x, w, idx):
    """Row by row in float64: out[t] = x[t] @ w[idx[t]]^T, zero where idx[t] < 0."""
    w = w[:, 0] if w.dim() == 4 else w
    out = torch.zeros(x.shape[0], w.shape[1], dtype=torch.float64)
    for t, i in enumerate(idx.tolist()):
        if i >= 0:
            out[t] = x[t].double() @ w[i].double().t()
    return out


@pytest.mark.parametrize("T,d_in,d_out,L", [(1, 7, 5, 1), (13, 33, 17, 3), (64, 96, 160, 4)])
@pytest.mark.parametrize("pattern", ["one", "mixed", "with_none", "none"])
@pytest.mark.parametrize("stacked", [False, True])
def test_matches_float64_reference(T, d_in, d_out, L, pattern, stacked):
    g = torch.Generator().manual_seed(T * 31 + L)
    x = torch.randn(T, d_in, generator=g)
    w = torch.randn(L, d_out, d_in, generator=g)
    idx = {
        "one": torch.full((T,), L - 1),
        "mixed": torch.randint(0, L, (T,), generator=g),
        "with_none": torch.randint(-1, L, (T,), generator=g),
        "none": torch.full((T,), -1),
    }[pattern]
    ws = w.unsqueeze(1) if stacked else w
    got = grouped_lora_matmul(x, ws, idx)
    assert got.shape == (T, d_out) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference(x, w, idx), rtol=1e-5, atol=1e-5)
    if pattern == "none":
        assert torch.count_nonzero(got) == 0
    else:
        assert torch.count_nonzero(got) > 0


def test_output_dtype_and_bf16_inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 16, generator=g).bfloat16()
    w = torch.randn(2, 8, 16, generator=g).bfloat16()
    idx = torch.tensor([0, 1, 1, -1, 0, 0, 1, -1, 0])
    got = grouped_lora_matmul(x, w, idx, torch.float32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference(x.float(), w.float(), idx), rtol=1e-5, atol=1e-4)


def test_bad_shapes_are_value_errors():
    with pytest.raises(ValueError, match="shape mismatch"):
        grouped_lora_matmul(torch.ones(3, 4), torch.ones(2, 5, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(L, 1, out, in\)"):
        grouped_lora_matmul(torch.ones(3, 4), torch.ones(2, 2, 5, 4), torch.zeros(3, dtype=torch.long))


def test_agrees_with_vllm_torch_ops_and_fixes_the_last_slot_bug():
    """vLLM's bgmv ops are the oracle while the last slot is empty (the eval engine's
    max_loras >= adapters + 1 guard); with every slot taken, vLLM gives un-adapted tokens (index -1)
    the last adapter, and the grouped op gives them zero."""
    ops = pytest.importorskip("vllm.lora.ops.torch_ops")
    g = torch.Generator().manual_seed(7)
    T, d_in, r, d_out = 11, 24, 8, 40
    x = torch.randn(T, d_in, generator=g)
    idx = torch.tensor([0, 0, 1, -1, 1, 0, -1, 1, 1, 0, -1])
    a = torch.randn(3, 1, r, d_in, generator=g)
    b = torch.randn(3, 1, d_out, r, generator=g)
    a[2].zero_(), b[2].zero_()  # the spare slot
    up_s, up_e = torch.zeros(T, r), torch.randn(T, d_out, generator=g)
    ours_e = up_e.clone()
    ops.bgmv_shrink(x, a, up_s, idx, 0.5)
    ops.bgmv_expand(up_s, b, up_e, idx, add_inputs=True)
    ours_s = 0.5 * grouped_lora_matmul(x, a, idx)
    ours_e += grouped_lora_matmul(ours_s, b, idx)
    torch.testing.assert_close(ours_s, up_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_e, up_e, rtol=1e-5, atol=1e-5)

    full = torch.randn(2, 1, r, d_in, generator=g)  # every slot holds an adapter
    up = torch.zeros(T, r)
    ops.bgmv_shrink(x, full, up, idx, 1.0)
    none = idx < 0
    assert torch.count_nonzero(up[none]) > 0  # upstream: the last adapter leaks into base tokens
    assert torch.count_nonzero(grouped_lora_matmul(x, full, idx)[none]) == 0
