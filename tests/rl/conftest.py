"""Fixtures for the RL tests: a tiny policy that loves "!", toy prompts, a toy brand card.

The tiny random Llama samples almost uniformly over 49k tokens, so a toy reward such as "penalise
'!'" would almost never fire. ``bang_model_dir`` makes "!" likely instead: every embedding gets a
constant feature ``c`` in dimension 0, so the last hidden state has a large positive value there,
and "!" gets ``c + delta`` in that dimension, so its logit is raised by ``h_0 * delta`` in every
context (tied embeddings: the same row is the output head). About half the sampled tokens are then
"!", and the policy can learn to avoid it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

BANG = 17  # "!" in the SmolLM2 tokenizer

RL_BRAND_YAML = """\
id: toy
name: Toy Lamps
description: Toy Lamps makes small lamps.
voice: [calm, brief]
do: [Answer politely]
dont: [Shout]
channels:
  product_question: {description: "Questions", max_words: 400}
banned:
  - id: exclamation_spam
    kind: phrase
    pattern: '![^\\n]*!'
    reason: At most one exclamation mark.
exemplars:
  - channel: product_question
    text: The Dawn lamp dims smoothly from amber to white.
"""


def make_bang(src: Path, out: Path, lift: float = 2.2) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight  # (V, H), tied to the head
        emb[:, 0] = 3.0
        emb[BANG, 0] = 3.0 + lift
    model.save_pretrained(out, safe_serialization=True)
    for f in src.iterdir():
        if (
            f.name.startswith(("tokenizer", "special_tokens", "chat_template"))
            or f.name == "generation_config.json"
        ):
            shutil.copy(f, out / f.name)
    return out


def make_parent_run(base_dir: Path, out: Path) -> Path:
    """A parent run (run.json + adapter/: a random r=2 LoRA on q/v) for ``init_from``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from onbrand.artifacts import atomic_write_json

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    peft = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    peft.save_pretrained(str(out / "adapter"))
    atomic_write_json(out / "run.json", {"kind": "dpo", "base_model": str(base_dir)})
    return out


@pytest.fixture
def parent_run(bang_model_dir, tmp_path) -> Path:
    return make_parent_run(bang_model_dir, tmp_path / "parent")


@pytest.fixture(scope="session")
def parent_run_factory():
    """:func:`make_parent_run` (test modules cannot import conftest under importlib mode)."""
    return make_parent_run


@pytest.fixture(scope="session")
def bang_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return make_bang(tiny_model_dir, tmp_path_factory.mktemp("bang-llama"))


@pytest.fixture(scope="session")
def vllm_bang_model_dir(tmp_path_factory, eval_tiny_dir) -> Path:
    """The same trick on the vLLM-sized tiny Llama (head size 64, which vLLM's CPU attention needs);
    its larger weights need a larger lift for "!" to come out about half of the time."""
    return make_bang(eval_tiny_dir, tmp_path_factory.mktemp("vllm-bang-llama"), lift=5.0)


def rl_records(n: int, offset: int = 0) -> list[dict]:
    names = ["Dawn", "Halo", "Drift", "Glow", "Beam", "Spark", "Ember", "Nova"]
    return [
        {
            "id": f"rl-{i:04d}",
            "prompt": [{"role": "user", "content": f"Is the {names[i % len(names)]} lamp dimmable? ({i})"}],
            "chosen": [{"role": "assistant", "content": "Yes, it dims smoothly."}],
            "rejected": [{"role": "assistant", "content": "YES!!!"}],
            "brand": "toy",
            "channel": "product_question",
            "created_at": "2026-12-01T00:00:00+00:00",
            "annotators": ["a1"],
            "reason_tags": ["tone"],
            "source": {"file": "rl.jsonl", "line": i + 1},
        }
        for i in range(offset, offset + n)
    ]


@pytest.fixture(scope="session")
def rl_snapshot(tmp_path_factory) -> Path:
    """A snapshot in the documented format (train 8 prompts, test 4)."""
    import json

    from datasets import Dataset

    from onbrand.artifacts import sha256_json
    from onbrand.data.records import SCHEMA_VERSION
    from onbrand.data.snapshot import features

    out = tmp_path_factory.mktemp("rl-snapshot")
    splits = {"train": rl_records(8), "dev": rl_records(4, offset=100)}
    for split, rows in splits.items():
        Dataset.from_list(rows, features=features()).to_parquet(str(out / f"{split}.parquet"))
    manifest = {
        "snapshot_id": sha256_json(splits),
        "schema_version": SCHEMA_VERSION,
        "counts": {k: {"pairs": len(v)} for k, v in splits.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def rl_brand(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rl-brand") / "toy.yaml"
    path.write_text(RL_BRAND_YAML)
    return path


@pytest.fixture
def rl_args(bang_model_dir, rl_snapshot, rl_brand, tmp_path):
    """Overrides pointing the RL recipe at the tiny "!" model, the toy prompts and a fresh out_dir."""
    return [
        f"model={bang_model_dir}", "init_from=null", f"data.snapshot={rl_snapshot}", f"data.brand={rl_brand}",
        f"out_dir={tmp_path / 'rl'}", "train.max_length=160", "train.tracking.wandb=disabled",
        "train.threads=1", "train.precision=fp32", "lora.layers=0", "lora.r=4", "lora.alpha=8",
        "train.warmup_ratio=0.0", "train.scheduler=constant",
    ]  # fmt: skip
