"""concat_lora_adapters: one LoRA on the original base == base merged with A1 then A2."""

from __future__ import annotations

import json

import pytest
import torch

from onbrand.adapters import AdapterError, concat_chain, concat_lora_adapters, read_adapter


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_concat_equals_sequential_merge_fp32(tiny_model_dir, lora_pair, prompt_batch, kit, tmp_path):
    from peft import PeftModel

    a1, a2 = lora_pair
    out = concat_lora_adapters(a1, a2, tmp_path / "cat")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 + 2 and cfg["lora_alpha"] == cfg["r"] and cfg["use_rslora"] is False
    assert set(cfg["target_modules"]) == {"q_proj", "v_proj", "o_proj", "down_proj"}

    sequential = _logits(kit.merged_with(tiny_model_dir, [a1, a2]), prompt_batch)
    served = PeftModel.from_pretrained(kit.load_base(tiny_model_dir), out).eval()
    concat = _logits(served, prompt_batch)
    only_a1 = _logits(kit.merged_with(tiny_model_dir, [a1]), prompt_batch)
    # The second adapter really moves the logits, so parity below is not vacuous.
    assert (sequential - only_a1).abs().max() > 1e-2
    assert (concat - sequential).abs().max() <= 1e-4


def test_concat_exact_in_float64(tiny_model_dir, lora_pair, prompt_batch, kit, tmp_path):
    """Float64 reference: the identity is exact, so only fp32 storage of the factors remains (~1e-7)."""
    from peft import PeftModel

    a1, a2 = lora_pair
    out = concat_lora_adapters(a1, a2, tmp_path / "cat")
    ref = _logits(kit.merged_with(tiny_model_dir, [a1, a2], dtype="float64"), prompt_batch)
    got = _logits(PeftModel.from_pretrained(kit.load_base(tiny_model_dir, "float64"), out), prompt_batch)
    assert ref.dtype == torch.float64
    assert (got - ref).abs().max() <= 1e-5


def test_factors_layout_and_zero_padding(lora_pair, tmp_path):
    a1, a2 = lora_pair
    out = concat_lora_adapters(a1, a2, tmp_path / "cat")
    _, w = read_adapter(out)
    _, w1 = read_adapter(a1)
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    v = "base_model.model.model.layers.0.self_attn.v_proj"
    # q_proj is in both: A = [A1; A2]; B = [s1*B1, s2*B2] with s1 = 8/4, s2 = 16/sqrt(2).
    assert torch.equal(w[q + ".lora_A.weight"][:4], w1[q + ".lora_A.weight"])
    assert torch.allclose(w[q + ".lora_B.weight"][:, :4], 2.0 * w1[q + ".lora_B.weight"])
    # v_proj only in A1: padded with exact zeros up to rank 6.
    assert w[v + ".lora_A.weight"].shape[0] == 6
    assert torch.count_nonzero(w[v + ".lora_A.weight"][4:]) == 0
    assert torch.count_nonzero(w[v + ".lora_B.weight"][:, 4:]) == 0
    assert (out / "onbrand_concat.json").exists()


def test_chain_of_three(tiny_model_dir, lora_pair, prompt_batch, kit, tmp_path):
    from peft import PeftModel

    a1, a2 = lora_pair
    w12 = kit.merged_with(tiny_model_dir, [a1, a2])
    a3 = kit.save_random_lora(w12, tmp_path / "a3", seed=3, r=3, lora_alpha=3, target_modules=["k_proj"])
    out = concat_chain([a1, a2, a3], tmp_path / "chain")
    ref = _logits(kit.merged_with(tiny_model_dir, [a1, a2, a3]), prompt_batch)
    got = _logits(PeftModel.from_pretrained(kit.load_base(tiny_model_dir), out), prompt_batch)
    assert (got - ref).abs().max() <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a3", "chain"]  # no scratch dirs left


@pytest.mark.parametrize(
    "field, value",
    [("modules_to_save", ["lm_head"]), ("use_dora", True), ("bias", "all"), ("lora_bias", True)],
)
def test_unsupported_features_refused(lora_pair, tmp_path, field, value):
    import shutil

    a1, a2 = lora_pair
    bad = tmp_path / "bad"
    shutil.copytree(a2, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg[field] = value
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match=field):
        concat_lora_adapters(a1, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_refused(tiny_model_dir, lora_pair, kit, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    a1, _ = lora_pair
    cfg = LlamaConfig.from_pretrained(tiny_model_dir)
    cfg.hidden_size, cfg.intermediate_size, cfg.head_dim = 32, 64, 8
    other = kit.save_random_lora(
        LlamaForCausalLM(cfg), tmp_path / "other", seed=4, r=2, target_modules=["q_proj"]
    )
    with pytest.raises(AdapterError, match="different base models"):
        concat_lora_adapters(a1, other, tmp_path / "out")


def test_layer_subsets_and_exclusions(tiny_model_dir, prompt_batch, kit, tmp_path):
    """LoRA on the last layer only (what training's ``lora.layers`` does) + an excluded module: the
    result targets exactly the modules that carry factors (a regex), and stays exact."""
    import re

    from peft import PeftModel

    base = kit.load_base(tiny_model_dir)
    a1 = kit.save_random_lora(base, tmp_path / "a1", seed=6, r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                              exclude_modules=["model.layers.0.self_attn.v_proj"])  # fmt: skip
    w1 = kit.merged_with(tiny_model_dir, [a1])
    a2 = kit.save_random_lora(w1, tmp_path / "a2", seed=7, r=8, lora_alpha=8, target_modules=["q_proj", "up_proj"],
                              layers_to_transform=[1])  # fmt: skip
    out = concat_lora_adapters(a1, a2, tmp_path / "cat")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert isinstance(cfg["target_modules"], str) and cfg["layers_to_transform"] is None
    targeted = {
        "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.up_proj",
    }  # fmt: skip
    served = PeftModel.from_pretrained(kit.load_base(tiny_model_dir), out).eval()
    with_lora = {n.removeprefix("base_model.model.").rsplit(".lora_A", 1)[0]
                 for n, _ in served.named_parameters() if ".lora_A." in n}  # fmt: skip
    assert with_lora == targeted
    assert not re.fullmatch(cfg["target_modules"], "model.layers.0.mlp.up_proj")
    ref = _logits(kit.merged_with(tiny_model_dir, [a1, a2]), prompt_batch)
    assert (_logits(served, prompt_batch) - ref).abs().max() <= 1e-4
