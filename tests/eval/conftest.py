"""Eval fixtures: a LoRA on the shared vLLM-sized tiny Llama (``eval_tiny_dir``, tests/conftest.py),
a training run dir around it, and chat prompts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def _save_lora(base_dir: Path, out: Path, seed: int = 1, r: int = 8, scale: float = 0.3) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    )
    peft_model = get_peft_model(model, cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT inits B = 0 (a no-op adapter); make it a real change
                p.normal_(0.0, scale)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def eval_lora_dir(tmp_path_factory, eval_tiny_dir) -> Path:
    return _save_lora(eval_tiny_dir, tmp_path_factory.mktemp("eval-lora"))


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, eval_tiny_dir, eval_lora_dir) -> Path:
    """A DPO-like training run dir on the tiny model: adapter/ + run.json + config.yaml (beta 0.25)."""
    import json

    import yaml

    run = tmp_path_factory.mktemp("dpo-run")
    shutil.copytree(eval_lora_dir, run / "adapter")
    (run / "run.json").write_text(json.dumps({"kind": "dpo", "run_id": "dpo-test", "base_model": str(eval_tiny_dir),
                                              "parent_run": None, "system_prompt": None}))  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump({"dpo": {"beta": 0.25}}))
    return run


PROMPTS = [
    "Write one line about our new desk lamp.",
    "A customer says the delivery was late. Reply briefly.",
    "What makes a good morning routine?",
    "Describe the colour blue to a child.",
]


@pytest.fixture
def chats():
    return [
        [{"role": "system", "content": "You are Aurora's assistant."}, {"role": "user", "content": p}]
        for p in PROMPTS
    ]
