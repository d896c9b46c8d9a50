"""Model resolution and the embedded default checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from onbrand.models import ModelNotFound, resolve_model


def test_unknown_embedded_name_lists_available():
    with pytest.raises(ModelNotFound, match="available: embedded:smollm2-135m-instruct"):
        resolve_model("embedded:nope")


def test_hub_id_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="hub is not reachable"):
        resolve_model("someorg/somemodel")


def test_local_dir_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFound, match="not a model directory"):
        resolve_model(tmp_path)


def test_tiny_model_fixture_has_real_tokenizer(tiny_model_dir, tokenizer):
    from onbrand.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == tokenizer.apply_chat_template(
        msgs, tokenize=False
    )
    assert len(tok) == 49152


@pytest.mark.slow
def test_embedded_checkpoint_facts_and_portability(embedded_dir):
    from onbrand.models import count_parameters, load_model

    manifest = json.loads((embedded_dir / "manifest.json").read_text())
    assert manifest["source"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert manifest["conversion"]["logits_max_abs_diff_vs_gguf"] < 1e-4
    assert all(len(v["sha256"]) == 64 for v in manifest["files"].values())
    cfg = json.loads((embedded_dir / "config.json").read_text())
    assert cfg["rope_theta"] == 100000.0 and "quantization_config" not in cfg
    tok_cfg = json.loads((embedded_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    model = load_model(embedded_dir)
    assert abs(count_parameters(model) - 134.5e6) < 0.1e6
    assert model.config.vocab_size == 49152


@pytest.mark.slow
def test_models_cli_info_json(embedded_dir):
    r = subprocess.run(
        [sys.executable, "-m", "onbrand.cli", "models", "info", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["vocab_size"] == 49152 and facts["hidden_size"] == 576
