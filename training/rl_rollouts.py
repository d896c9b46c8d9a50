"""Rollouts for online RL: the live policy through transformers, or vLLM serving the policy's LoRA.

``rollout.engine: live`` generates with the eval engines' transformers engine on the model being
trained: always on-policy, no copy of the model, and generation runs at transformers' speed.

``rollout.engine: vllm`` generates with vLLM (the same ``VLLMEngine`` as ``onbrand eval``; the base
model loaded once) and the policy served as a LoRA request, the way TRL and OpenRLHF use vLLM for
GRPO rollouts. Every ``sync_every`` steps the trainable adapter is saved, concatenated with the
parent's adapter (``onbrand.adapters.concat_lora_adapters``, exact: the same ONE-LoRA-on-the-base
form as the run's final ``adapter/``) and registered under a NEW name and LoRA id (vLLM caches
adapters by id: reusing one would serve the stale weights); the previous one is removed from vLLM.

Between refreshes the rollouts come from an older policy (up to ``sync_every - 1`` updates behind),
and even right after one, vLLM's kernels differ from the trainer's by rounding. vLLM returns the
log-prob of each sampled token under the distribution it sampled from (``processed_logprobs``:
after temperature and top-p), and the loss weights each token by the truncated importance ratio
``min(pi_theta / pi_rollout, importance_cap)`` (truncated importance sampling, as TRL's
``vllm_importance_sampling_correction`` and verl/NeMo-RL's TIS do). ``rollout/logp_gap`` (mean
absolute log-ratio) and ``rollout/is_weight`` show how far apart the two are.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from onbrand.config import check_range
from onbrand.engines.base import Request, Sampling, stop_token_ids
from onbrand.engines.hf import HFEngine
from onbrand.engines.options import EngineOptions
from onbrand.engines.vllm import VLLMEngine
from onbrand.training.common import save_stage_and_adapter
from onbrand.training.lora import TRAINED


@dataclass
class RolloutConfig:
    num_generations: int = 4  # G completions per prompt (the group of the baseline)
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    engine: Literal["live", "vllm"] = "live"  # live: transformers generate on the policy being trained
    gen_batch_size: int = 16  # live: prompts per generate call
    sync_every: int = 1  # vllm: optimizer steps between adapter refreshes (1: every step)
    importance_cap: float = 2.0  # vllm: cap of the truncated importance weight (0: no correction)
    # vllm: how the engine starts (CPU defaults; on a GPU: dtype auto, enforce_eager false, ...)
    engine_options: EngineOptions = field(default_factory=lambda: EngineOptions(max_model_len=1024))

    def __post_init__(self) -> None:
        check_range("rollout.num_generations", self.num_generations, 2, 256)
        check_range("rollout.max_new_tokens", self.max_new_tokens, 1, 8192)
        check_range("rollout.temperature", self.temperature, 0, 10, lo_open=True)
        check_range("rollout.top_p", self.top_p, 0, 1, lo_open=True)
        check_range("rollout.gen_batch_size", self.gen_batch_size, 1, None)
        check_range("rollout.sync_every", self.sync_every, 1, None)
        check_range("rollout.importance_cap", self.importance_cap, 0, None)


@dataclass
class Completion:
    ids: list[int]  # generated token ids, the stop token included when generation stopped
    text: str
    finish: str  # "stop" | "length"
    behaviour_logps: list[float] | None = None  # vllm: the sampling log-prob of each of ``ids``


class LivePolicyEngine(HFEngine):
    """The eval engines' transformers engine over the policy being trained (no reload per step).

    Requests name the trainable adapter; ``None`` would be the reference.
    """

    def __init__(self, peft_model, tokenizer, batch_size: int = 16):
        self.adapters = {TRAINED: "<live policy>"}
        self.model = peft_model
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.stops = stop_token_ids(tokenizer, getattr(peft_model, "generation_config", None))
        self.batch_size = batch_size
        self.progress = False


class LiveRollouts:
    """``rollout.engine: live``: always the current policy."""

    kind = "transformers (live policy)"

    def __init__(self, peft_model, tokenizer, cfg: RolloutConfig):
        self.engine = LivePolicyEngine(peft_model, tokenizer, cfg.gen_batch_size)
        self.cfg = cfg

    def sync(self, peft_model, step: int) -> bool:
        return False  # nothing to refresh: generation runs on the live weights

    def lag(self, step: int) -> int:
        return 0

    def generate(self, prompts, seed: int) -> list[Completion]:
        model = self.engine.model
        was_training = model.training
        model.eval()
        try:
            gens = self.engine.generate(_requests(prompts, TRAINED), _sampling(self.cfg, seed))
        finally:
            model.train(was_training)
        stop = self.engine.stops[0]
        return [
            # keep the stop token: the policy must also learn WHEN to stop (length control)
            Completion(list(ids) + ([stop] if why == "stop" else []), text, why)
            for g in gens
            for ids, text, why in zip(g.token_ids, g.texts, g.finish_reasons)
        ]

    def close(self) -> None:
        pass


class VLLMRollouts:
    """``rollout.engine: vllm``: the base model in vLLM, the policy as a LoRA refreshed every
    ``sync_every`` steps. ``work_dir`` holds the adapter being served (nothing else is kept)."""

    kind = "vllm (LoRA request)"

    def __init__(
        self, base_model: str, parent_adapter: Path | None, cfg: RolloutConfig, work_dir: Path, seed: int
    ):
        self.base_model, self.parent, self.cfg = base_model, parent_adapter, cfg
        self.work_dir, self.seed = Path(work_dir), seed
        self.engine = None
        self.name: str | None = None
        self.synced_step = 0

    def sync(self, peft_model, step: int) -> bool:
        """Serve the current policy if ``sync_every`` steps passed since the last refresh (always at
        the first step). Returns whether it refreshed."""
        if self.name is not None and step - self.synced_step < self.cfg.sync_every:
            return False
        name = f"policy-step{step}"
        stage, served = self.work_dir / f"{name}-stage", self.work_dir / name
        save_stage_and_adapter(peft_model, self.parent, stage, served)  # the run's adapter/ form
        shutil.rmtree(stage)
        if self.engine is None:
            self.engine = VLLMEngine(
                self.base_model, {name: served}, seed=self.seed, options=self.cfg.engine_options,
                sampled_logprobs=self.cfg.importance_cap > 0,
            )  # fmt: skip
        else:
            old = self.name
            self.engine.add_adapter(name, served)
            self.engine.remove_adapter(old)
            shutil.rmtree(self.work_dir / old, ignore_errors=True)
        self.name, self.synced_step = name, step
        return True

    def lag(self, step: int) -> int:
        """Optimizer updates the served adapter is behind the policy at ``step``."""
        return step - self.synced_step

    def generate(self, prompts, seed: int) -> list[Completion]:
        gens = self.engine.generate(_requests(prompts, self.name), _sampling(self.cfg, seed))
        out = []
        for g in gens:
            lps = g.logprobs or [None] * len(g.token_ids)
            stops = g.stop_tokens or [self.engine.stops[0]] * len(g.token_ids)
            for ids, text, why, lp, stop in zip(g.token_ids, g.texts, g.finish_reasons, lps, stops):
                # the stop token vLLM actually sampled (its log-prob is the last of lp)
                out.append(Completion(list(ids) + ([stop] if why == "stop" else []), text, why, lp))
        return out

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        shutil.rmtree(self.work_dir, ignore_errors=True)


def make_rollouts(cfg: RolloutConfig, peft_model, tokenizer, base_model: str, parent_adapter, work_dir, seed):
    if cfg.engine == "vllm":
        return VLLMRollouts(base_model, parent_adapter, cfg, work_dir, seed)
    return LiveRollouts(peft_model, tokenizer, cfg)


def timed_rollout(
    rollouts, peft_model, prompts, step: int, seed: int
) -> tuple[list[Completion], dict[str, float]]:
    """Refresh the served policy if due, generate, and time both."""
    t0 = time.perf_counter()
    synced = rollouts.sync(peft_model, step)
    t1 = time.perf_counter()
    outs = rollouts.generate(prompts, seed)
    t2 = time.perf_counter()
    n_tok = sum(len(c.ids) for c in outs)
    return outs, {
        "rollout/seconds": t2 - t1, "rollout/sync_seconds": t1 - t0, "rollout/synced": float(synced),
        "rollout/policy_lag": float(rollouts.lag(step)), "rollout/tokens_per_s": n_tok / max(t2 - t1, 1e-9),
    }  # fmt: skip


def _requests(prompts, adapter: str | None) -> list[Request]:
    return [Request(p.messages, adapter=adapter, id=p.id) for p in prompts]


def _sampling(cfg: RolloutConfig, seed: int) -> Sampling:
    return Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p, n=cfg.num_generations, seed=seed)
