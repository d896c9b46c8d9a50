"""QLoRA: bitsandbytes NF4 base + LoRA trains on CPU on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from onbrand.training import sft
from onbrand.training.tracking import read_metrics


def test_qlora_nf4_sft_runs(tiny_model_dir, toy_snapshot, toy_brand, tmp_path):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit

    from onbrand.training.lora import LoRAConfig, build_policy

    model = build_policy(str(tiny_model_dir), LoRAConfig(r=4, alpha=8, quantize="nf4"))
    assert any(isinstance(m, Linear4bit) for m in model.modules())
    out = tmp_path / "qlora"
    args = [
        "--config", "configs/sft/demo.yaml", f"model={tiny_model_dir}", f"data.snapshot={toy_snapshot}",
        f"data.brand={toy_brand}", f"out_dir={out}", "lora.layers=0", "lora.r=4", "lora.alpha=8",
        "lora.quantize=nf4", "train.gradient_checkpointing=true", "train.max_length=96", "train.tracking.wandb=disabled", "train.threads=1",
        "train.precision=fp32", "train.batch_size=4", "train.max_steps=4", "train.lr=2e-2",
    ]  # fmt: skip
    assert sft.main(args) == 0
    rows = read_metrics(out)
    assert len(rows) == 4 and rows[-1]["loss"] < rows[0]["loss"]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((out / "run.json").read_text())["kind"] == "sft"


def test_qlora_gradients_unchanged_by_an_eval_pass(tiny_model_dir):
    """An eval-mode forward (the DPO reference pass) must not switch the 4-bit layers to a kernel
    without autograd (bitsandbytes' CPU inference repacking): the LoRA gradients stay the same."""
    pytest.importorskip("bitsandbytes")
    from onbrand.training.lora import LoRAConfig, build_policy

    torch.manual_seed(0)
    model = build_policy(str(tiny_model_dir), LoRAConfig(r=4, alpha=8, quantize="nf4"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(3, 100, (2, 12))

    def grads():
        model.zero_grad()
        model(input_ids=ids).logits.float().logsumexp(-1).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    before = grads()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    after = grads()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------- SFT -> DPO on 4 bits
COMMON = [
    "train.max_length=96", "train.tracking.wandb=disabled", "train.threads=1", "train.precision=fp32",
    "train.batch_size=4", "train.max_steps=3", "lora.quantize=nf4",
]  # fmt: skip


@pytest.fixture(scope="module")
def qlora_chain(tmp_path_factory, tiny_model_dir, toy_snapshot, toy_brand):
    """A QLoRA SFT run, then a QLoRA DPO run initialised from it (the SFT adapter stacked, frozen)."""
    pytest.importorskip("bitsandbytes")
    from onbrand.training import dpo

    root = tmp_path_factory.mktemp("qlora-chain")
    data = [f"data.snapshot={toy_snapshot}", f"data.brand={toy_brand}"]
    sft_args = [
        "--config", "configs/sft/demo.yaml", f"model={tiny_model_dir}", f"out_dir={root / 'sft'}", *data,
        *COMMON, "lora.layers=0", "lora.r=4", "lora.alpha=8", "train.lr=2e-2",
    ]  # fmt: skip
    assert sft.main(sft_args) == 0
    dpo_args = [
        "--config", "configs/dpo/demo.yaml", f"init_from={root / 'sft'}", f"out_dir={root / 'dpo'}", *data,
        *COMMON, f"ref_cache_dir={root / 'cache'}", "lora.layers=1", "lora.r=2", "lora.alpha=8",
        "train.lr=2e-2", "train.warmup_ratio=0.0", "dpo.nll_weight=0",
    ]  # fmt: skip
    assert dpo.main(dpo_args) == 0
    return root


def test_qlora_dpo_from_sft_trains_only_its_adapter(qlora_chain):
    from safetensors.torch import load_file

    dpo_dir = qlora_chain / "dpo"
    rows = read_metrics(dpo_dir)
    assert len(rows) == 3
    assert abs(rows[0]["loss"] - 0.6931) < 1e-3 and abs(rows[0]["kl_ref_per_token"]) < 1e-4  # policy == SFT
    assert not (dpo_dir / "stage_adapter" / "parent").exists()  # the frozen SFT adapter is not saved again
    stage = load_file(str(dpo_dir / "stage_adapter" / "adapter_model.safetensors"))
    assert all(".layers.1." in k for k in stage)  # lora.layers=1 of 2: only the DPO adapter
    assert any(v.abs().max() > 0 for k, v in stage.items() if "lora_B" in k)  # it trained
    cfg = json.loads((dpo_dir / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 + 2 and cfg["lora_alpha"] == 6


def _stacked_fp32(base_dir, sft_adapter, dpo_adapter):
    """PEFT with both adapters active, unmerged, on the unquantized fp32 base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(sft_adapter), adapter_name="sft")
    model.load_adapter(str(dpo_adapter), adapter_name="dpo")
    model.base_model.set_adapter(["sft", "dpo"])
    return model.eval()


def test_qlora_chain_adapter_is_exact_concatenation(qlora_chain, tiny_model_dir):
    from onbrand.export.common import base_with_adapters, max_abs_diff, parity_inputs, prompt_logits
    from onbrand.models import load_tokenizer

    sft_dir, dpo_dir = qlora_chain / "sft", qlora_chain / "dpo"
    prompts = parity_inputs(load_tokenizer(tiny_model_dir), "Be brief.")
    stacked = prompt_logits(
        _stacked_fp32(tiny_model_dir, sft_dir / "adapter", dpo_dir / "stage_adapter"), prompts
    )
    concat = prompt_logits(
        base_with_adapters(tiny_model_dir, [dpo_dir / "adapter"], merge_last=False), prompts
    )
    merged = prompt_logits(
        base_with_adapters(tiny_model_dir, [dpo_dir / "adapter"], merge_last=True), prompts
    )
    sft_only = prompt_logits(
        base_with_adapters(tiny_model_dir, [sft_dir / "adapter"], merge_last=False), prompts
    )
    assert max_abs_diff(concat, stacked) <= 1e-5
    assert max_abs_diff(merged, stacked) <= 1e-4
    assert max_abs_diff(sft_only, stacked) > 1e-3  # the DPO adapter changed the model


def test_qlora_dpo_reference_is_sft_model_on_4bit_base(qlora_chain, tiny_model_dir, toy_snapshot, toy_brand):
    from bitsandbytes.nn import Linear4bit
    from peft import PeftModel
    from safetensors import safe_open

    from onbrand.config import load_config
    from onbrand.models import load_tokenizer
    from onbrand.training import dpo
    from onbrand.training.common import PackedModel, brand_prompt, load_pairs
    from onbrand.training.lora import merged_base

    cfg = load_config(
        dpo.DPOConfig,
        "configs/dpo/demo.yaml",
        [f"data.snapshot={toy_snapshot}", f"data.brand={toy_brand}", *COMMON],
    )
    tok = load_tokenizer(tiny_model_dir)
    train, _, _ = load_pairs(cfg.data, tok, brand_prompt(toy_brand)[0], cfg.train.max_length)
    cached = {}
    for path in (qlora_chain / "cache").glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            key = json.loads(f.metadata()["key"])
            cached[key["split"]] = (key, f.get_tensor("chosen"), f.get_tensor("rejected"))
    key, ref_c, ref_r = cached["train"]
    assert key["quantize"] == "nf4" and key["ids"] == [p.id for p in train]
    base = merged_base(str(tiny_model_dir), None, quantize="nf4")
    for module in base.modules():  # the same 4-bit kernel as training (see lora._keep_4bit_differentiable)
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
    sft_model = PackedModel(PeftModel.from_pretrained(base, str(qlora_chain / "sft" / "adapter"))).eval()
    with torch.no_grad():
        got = dpo.batch_logps(sft_model, train, tok, cfg, torch.device("cpu"))
    assert torch.allclose(got["chosen"], ref_c, atol=1e-4) and torch.allclose(
        got["rejected"], ref_r, atol=1e-4
    )


def test_qlora_chain_exports_and_verifies(qlora_chain, tmp_path):
    from onbrand.export.checkpoint import export_run
    from onbrand.export.verify import verify_export

    out = export_run(qlora_chain / "dpo", tmp_path / "exp", "both")
    report = verify_export(out, vllm="off")
    assert report.ok, report.text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["merge"]["quantized_training"] is True
