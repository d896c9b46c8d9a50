"""QLoRA: bitsandbytes NF4 base + LoRA trains on CPU on the tiny model."""

from __future__ import annotations

import json

import pytest

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
