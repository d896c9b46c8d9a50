"""EngineOptions: the one place vLLM's start-up arguments come from (eval, the export check,
annotation candidates, `vllm serve`). No vLLM needed: these are the arguments, not the engine."""

from __future__ import annotations

import json

import pytest

from onbrand.config import ConfigError, load_config
from onbrand.engines.options import EngineOptions, adapter_rank, cli_flags, vllm_max_rank
from onbrand.engines.vllm import context_cap
from onbrand.eval.config import EvalConfig


def _adapter(path, r, pattern=None):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": r, "rank_pattern": pattern or {}}))
    return path


def test_cpu_defaults_are_the_ones_the_engines_used_to_hard_code():
    args = EngineOptions().vllm_args()
    assert args == {
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": 2048,
        "max_num_seqs": 64,
        "kv_cache_memory_bytes": 1 << 30,
    }


def test_gpu_options_leave_the_kv_cache_to_vllm(tmp_path):
    opts = EngineOptions(dtype="auto", enforce_eager=False, kv_cache_gib=None, gpu_memory_utilization=0.85,
                         tensor_parallel_size=2)  # fmt: skip
    args = opts.vllm_args()
    assert "kv_cache_memory_bytes" not in args
    assert (
        args["dtype"],
        args["enforce_eager"],
        args["gpu_memory_utilization"],
        args["tensor_parallel_size"],
    ) == ("auto", False, 0.85, 2)
    flags = cli_flags(args)
    assert "--enforce-eager" not in flags
    assert flags[flags.index("--tensor-parallel-size") + 1] == "2"
    assert flags[flags.index("--gpu-memory-utilization") + 1] == "0.85"


def test_lora_slots_and_rank_come_from_the_adapters(tmp_path):
    adapters = {"a": _adapter(tmp_path / "a", 8), "b": _adapter(tmp_path / "b", 16, {"q_proj": 24})}
    assert adapter_rank(adapters["b"]) == 24 and vllm_max_rank(24) == 32
    args = EngineOptions().vllm_args(adapters)
    assert (args["enable_lora"], args["max_loras"], args["max_lora_rank"]) == (True, 3, 32)
    assert EngineOptions(max_loras=5).vllm_args(adapters)["max_loras"] == 5
    with pytest.raises(ValueError, match="max_loras must be >= adapters \\+ 1 = 3, got 2"):
        EngineOptions(max_loras=2).vllm_args(adapters)
    with pytest.raises(ValueError, match="exceeds vLLM's maximum 512"):
        vllm_max_rank(600)
    flags = cli_flags(args)
    assert flags[flags.index("--max-lora-rank") + 1] == "32" and "--enable-lora" in flags


def test_eval_config_section_and_its_errors():
    cfg = load_config(EvalConfig, None, ["engine_options.dtype=bfloat16", "engine_options.kv_cache_gib=null"])
    assert cfg.engine_options.dtype == "bfloat16" and cfg.engine_options.kv_cache_gib is None
    with pytest.raises(ConfigError, match="engine_options.dtype"):
        load_config(EvalConfig, None, ["engine_options.dtype=fp8"])
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        load_config(EvalConfig, None, ["engine_options.gpu_memory_utilization=1.5"])


def test_context_is_capped_at_the_models_own(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
    assert context_cap(tmp_path, 2048) == 1024
    assert context_cap(tmp_path, 512) == 512
    assert context_cap(tmp_path / "nothing-here", 2048) == 2048
