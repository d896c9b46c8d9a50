"""Eval fixtures: a tiny Llama whose head size vLLM's CPU attention supports (64), a LoRA on it,
and a fake brand card / reward scorer with known behaviour."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# The shared tiny Llama (tests/conftest.py) but with head size 64, which vLLM's CPU attention needs.
EVAL_TINY = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
    vocab_size=49152,
)


def _save_tiny(out: Path, embedded_dir: Path, seed: int = 0, scale: float = 0.15) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**EVAL_TINY))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, scale)  # large enough that greedy output depends on the prompt
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (embedded_dir / name).exists():
            shutil.copy(embedded_dir / name, out / name)
    return out


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
def eval_tiny_dir(tmp_path_factory, embedded_dir) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("eval-tiny"), embedded_dir)


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
