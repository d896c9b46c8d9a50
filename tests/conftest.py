"""Shared fixtures: a tiny random Llama with the embedded model's real tokenizer.

Unit tests use the tiny model (hidden 64, 2 layers) and run in seconds; tests marked ``slow`` use
the real embedded 135M model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Offline, quiet, deterministic: set before transformers/wandb are imported by any test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ONBRAND_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "onbrand"))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = "embedded:smollm2-135m-instruct"


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


# Under CI=true a test that needs a real vLLM (offline engine or `vllm serve`) must run: a skip
# there (vLLM not importable, say) is turned into a failure instead of passing silently.
def _ci_must_run(rep, vllm_test: bool) -> None:
    if os.environ.get("CI") == "true" and rep.skipped and vllm_test:
        rep.outcome = "failed"
        rep.longrepr = f"skipped under CI=true, where vLLM tests must run: {rep.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _ci_must_run(outcome.get_result(), "vllm" in item.keywords)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    _ci_must_run(rep, "vllm" in str(rep.longrepr).lower() if rep.skipped else False)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The converted embedded checkpoint (converted once per cache)."""
    from onbrand.models import resolve_model

    return resolve_model(EMBEDDED)


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from onbrand.models import load_tokenizer

    return load_tokenizer(embedded_dir)


TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
    vocab_size=49152,
)
# The same with head size 64, which vLLM's CPU attention needs (vLLM engine, `vllm serve`, exports).
VLLM_TINY_CONFIG = {**TINY_CONFIG, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2,
                    "num_key_value_heads": 1}  # fmt: skip


def make_tiny_model(seed: int = 0, config: dict | None = None, scale: float = 0.08):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**(config or TINY_CONFIG)))
    # Random but not tiny weights so logits are not all ~0 (never test on near-zeros).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, scale)
    return model.eval()


def save_tiny(model, out: Path, embedded_dir: Path) -> Path:
    """``model`` saved as safetensors with the embedded tokenizer and chat template beside it."""
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (embedded_dir / name).exists():
            shutil.copy(embedded_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir) -> Path:
    """A saved tiny random LlamaForCausalLM plus the embedded tokenizer and chat template."""
    return save_tiny(make_tiny_model(), tmp_path_factory.mktemp("tiny-llama"), embedded_dir)


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def eval_tiny_dir(tmp_path_factory, embedded_dir) -> Path:
    """The vLLM-sized tiny Llama, weights large enough (0.15) that greedy output depends on the prompt."""
    model = make_tiny_model(config=VLLM_TINY_CONFIG, scale=0.15)
    return save_tiny(model, tmp_path_factory.mktemp("eval-tiny"), embedded_dir)
