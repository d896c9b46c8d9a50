"""Fixtures for export tests: random PEFT LoRA adapters with NON-zero B and fake training run dirs.

Built here (not by the training recipes) so these tests do not depend on training's progress.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def save_random_lora(model, out: Path, seed: int, std: float = 0.05, **lora_kwargs) -> Path:
    """Wrap ``model`` (not modified) with a LoRA whose A and B are random normal, save it to ``out``."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **lora_kwargs)
    peft_model = get_peft_model(copy.deepcopy(model), cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, std)  # B non-zero: a zero B would make every parity check trivial
    peft_model.save_pretrained(out)
    return out


def load_base(path, dtype="float32"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()


def merged_with(base_dir, adapters, dtype="float32"):
    """Base merged with each adapter in order (the sequential reference)."""
    from peft import PeftModel

    model = load_base(base_dir, dtype)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.eval()


def write_run(
    run_dir: Path,
    base: str,
    kind: str,
    adapter: Path | None = None,
    parent: str | None = None,
    stage_adapter: Path | None = None,
    config: dict | None = None,
) -> Path:
    """A fake training run dir following docs/architecture.md."""
    import shutil

    import yaml

    from onbrand.models import model_hash

    run_dir.mkdir(parents=True, exist_ok=True)
    if adapter is not None:
        shutil.copytree(adapter, run_dir / "adapter")
    if stage_adapter is not None:
        shutil.copytree(stage_adapter, run_dir / "stage_adapter")
    run = {
        "kind": kind,
        "run_id": f"{kind}-{run_dir.name}",
        "base_model": base,
        "base_model_hash": model_hash(base),
        "parent_run": parent,
        "snapshot_id": "snap-" + "ab" * 8,
        "brand": {"path": "configs/brands/lumen.yaml", "sha256": "cd" * 32, "name": "lumen"},
        "system_prompt": "You are Lumen's assistant. Be warm, precise and brief.",
        "tokenization": {"max_length": 256},
    }
    (run_dir / "run.json").write_text(json.dumps(run, indent=2))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config or {"kind": kind, "lora": {"r": 4}}))
    return run_dir


@pytest.fixture(scope="session")
def lora_pair(tiny_model_dir, tmp_path_factory):
    """(A1 relative to base, A2 trained on base+A1): different targets, ranks, alphas, rslora."""
    root = tmp_path_factory.mktemp("lora-pair")
    base = load_base(tiny_model_dir)
    a1 = save_random_lora(base, root / "a1", seed=1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    w1 = merged_with(tiny_model_dir, [a1])
    a2 = save_random_lora(
        w1,
        root / "a2",
        seed=2,
        r=2,
        lora_alpha=16,
        use_rslora=True,
        target_modules=["q_proj", "o_proj", "down_proj"],
    )
    return a1, a2


@pytest.fixture(scope="session")
def prompt_batch(tokenizer):
    """Two fixed, padded prompts: {"input_ids", "attention_mask"} of shape (2, T)."""
    texts = ["Our lamp glows softly at night.", "Refunds take five days; sorry for the wait!"]
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


@pytest.fixture(scope="session")
def kit():
    """The helpers above, as a fixture (test modules cannot import conftest under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        save_random_lora=save_random_lora, load_base=load_base, merged_with=merged_with, write_run=write_run
    )


@pytest.fixture(scope="session")
def runs(tiny_model_dir, lora_pair, tmp_path_factory):
    """Fake ``sft`` and ``dpo`` run dirs on the tiny base (the DPO adapter/ is the exact concat)."""
    from onbrand.adapters import concat_lora_adapters

    a1, a2 = lora_pair
    root = tmp_path_factory.mktemp("runs")
    sft = write_run(root / "sft", str(tiny_model_dir), "sft", adapter=a1)
    cat = concat_lora_adapters(a1, a2, root / "scratch-cat")
    dpo = write_run(root / "dpo", str(tiny_model_dir), "dpo", adapter=cat, parent="sft", stage_adapter=a2)
    return {"root": root, "sft": sft, "dpo": dpo, "adapters": [a1, a2]}
