"""Integration with onbrand.training: adapters built by its recipes' own set-up (build_policy with
``lora.layers`` -> layers_to_transform, init_from merge, save_adapter, init_run_dir) export exactly."""

from __future__ import annotations

import pytest
import torch

lora_mod = pytest.importorskip("onbrand.training.lora")
common = pytest.importorskip("onbrand.training.common")
lineage = pytest.importorskip("onbrand.lineage")


def _randomize(peft_model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.05)  # as if trained: B no longer zero


def _run(out, kind, cfg, base, tok, parent=None):
    from onbrand.models import model_hash

    lineage.init_run_dir(
        out, kind, cfg, base_model=str(base), base_model_hash=model_hash(base), parent_run=parent,
        snapshot_id="snap-test", brand=None, system_prompt="Be brief.",
        tokenization=lineage.tokenizer_record(tok, "Be brief.", 128),
    )  # fmt: skip


def test_sft_then_dpo_from_training_code(tiny_model_dir, tokenizer, prompt_batch, kit, tmp_path):
    from onbrand.adapters import concat_lora_adapters
    from onbrand.export.checkpoint import export_run
    from onbrand.export.verify import verify_export

    sft_cfg = lora_mod.LoRAConfig(r=4, alpha=8, layers=1)
    dpo_cfg = lora_mod.LoRAConfig(r=2, alpha=8, target_modules=["q_proj", "down_proj"])
    sft, dpo = tmp_path / "runs" / "sft", tmp_path / "runs" / "dpo"
    _run(sft, "sft", sft_cfg, tiny_model_dir, tokenizer)
    policy = lora_mod.build_policy(str(tiny_model_dir), sft_cfg)
    _randomize(policy, 1)
    common.save_adapter(policy, sft / "adapter")
    _run(dpo, "dpo", dpo_cfg, tiny_model_dir, tokenizer, parent=str(sft))
    policy = lora_mod.build_policy(str(tiny_model_dir), dpo_cfg, parent_adapter=sft / "adapter")
    _randomize(policy, 2)
    common.save_adapter(policy, dpo / "stage_adapter")
    concat_lora_adapters(sft / "adapter", dpo / "stage_adapter", dpo / "adapter")  # what dpo.finish does

    out = export_run(dpo, tmp_path / "exp", "both")
    report = verify_export(out, vllm="off")
    assert report.ok, report.text()
    from transformers import AutoModelForCausalLM

    ref = kit.merged_with(tiny_model_dir, [sft / "adapter", dpo / "stage_adapter"])
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (got(**prompt_batch).logits - ref(**prompt_batch).logits).abs().max() <= 1e-4
