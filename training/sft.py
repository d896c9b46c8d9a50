"""Supervised fine-tuning of a LoRA adapter on the chosen completions (completion-only loss).

Run::

    onbrand train sft --config configs/sft/demo.yaml [key=value ...]
    accelerate launch -m onbrand.training.sft --config configs/sft/demo.yaml

Each example is ``[brand system prompt, prompt turns] -> chosen``; examples are packed
padding-free into rows sharing the system prompt (``onbrand.training.batching``). Loss per
micro-batch, over its M completion tokens with log-probs from the fused kernel (no full logits)::

    loss = -(1/M) * sum_m log p(t_m | context_m)

SmolLM2's template has no ``{% generation %}`` markers, so the completion mask comes from the
prompt/completion split (as in TRL's prompt-completion format), not ``assistant_only_loss``.
The pairs are tokenised with their rejected side, exactly as DPO and the reward model do, so the
three share the token cache (``onbrand.training.token_cache``); ``sft_only`` drops it afterwards.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import torch

from onbrand.config import check_range, load_config
from onbrand.models import DEFAULT_MODEL
from onbrand.training.common import (
    DataSection,
    PackedModel,
    finish_run,
    pack,
    parse_args,
    setup_run,
    train_pairs,
)
from onbrand.training.loop import TrainConfig, autocast
from onbrand.training.lora import LoRAConfig, build_policy


@dataclass
class SFTConfig:
    model: str = DEFAULT_MODEL
    init_from: str | None = None  # a previous run whose adapter is merged into the base first
    out_dir: str = "runs/demo/sft"
    data: DataSection = field(default_factory=DataSection)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-4))
    eval_batch_size: int = 16
    eval_before: bool = True  # also measure the held-out NLL before training (one more pass)

    def __post_init__(self) -> None:
        check_range("eval_batch_size", self.eval_batch_size, 1, None)


def sft_only(pairs):
    """Drop the rejected side (SFT trains on prompt -> chosen)."""
    for p in pairs:
        p.rejected = []
    return pairs


def nll(model: PackedModel, pairs, tok, cfg: SFTConfig, device) -> tuple[torch.Tensor, int]:
    batch = pack(pairs, tok, cfg.train, True, device)
    with autocast(cfg.train.precision, device):
        logp = model(batch)  # (M,)
    return -logp.float().sum(), logp.numel()


def weighted_nll(model: PackedModel, pairs, tok, cfg: SFTConfig, device) -> tuple[torch.Tensor, float, int]:
    """(sum of weight * token NLL, sum of token weights, tokens): each example's tokens count with
    its ``weight`` (``data.synthetic_weight`` for synthetic pairs, 1 for people's)."""
    batch = pack(pairs, tok, cfg.train, True, device)
    with autocast(cfg.train.precision, device):
        logp = model(batch).float()  # (M,)
    w = torch.tensor([p.weight for p in pairs], dtype=logp.dtype, device=logp.device)[batch.seq_id // 2]
    return -(w * logp).sum(), float(w.sum()), logp.numel()


def make_step_fn(tok, cfg: SFTConfig, device):
    """``step_fn(model, pairs)``: the micro-batch's completion-token mean NLL; a micro-batch holding
    a pair of weight != 1 (synthetic, ``data.synthetic_weight``) takes the weighted token mean."""

    def step_fn(model, pairs):
        if any(p.weight != 1.0 for p in pairs):
            total, wsum, n = weighted_nll(model, pairs, tok, cfg, device)
            return (total / wsum if wsum > 0 else total * 0.0), {"completion_tokens": float(n)}
        total, n = nll(model, pairs, tok, cfg, device)
        loss = total / max(n, 1)
        return loss, {"completion_tokens": float(n)}

    return step_fn


@torch.no_grad()
def evaluate(model: PackedModel, pairs, tok, cfg: SFTConfig, device) -> dict[str, float]:
    if not pairs:
        return {}
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(pairs), cfg.eval_batch_size):
        s, n = nll(model, pairs[i : i + cfg.eval_batch_size], tok, cfg, device)
        total, count = total + s.item(), count + n
    model.train()
    mean = total / max(count, 1)
    return {"eval/nll": mean, "eval/perplexity": math.exp(min(mean, 50.0)), "eval/pairs": len(pairs)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "Supervised fine-tuning of a LoRA adapter", "configs/sft/demo.yaml")
    return train(load_config(SFTConfig, args.config, args.overrides))


def train(cfg: SFTConfig) -> int:
    run = setup_run("sft", cfg, need_rejected=False)
    acc = run.acc
    sft_only(run.train)
    sft_only(run.held_out)
    peft_model = build_policy(
        run.base_model, cfg.lora, parent_adapter=run.parent_adapter,
        gradient_checkpointing=cfg.train.gradient_checkpointing, pad_token_id=run.tok.pad_token_id,
        stack_parent=True,
    )  # fmt: skip
    model = PackedModel(peft_model).to(acc.device)
    wrapped = acc.prepare(model)
    base_eval = (
        evaluate(model, run.held_out, run.tok, cfg, acc.device) if run.held_out and cfg.eval_before else {}
    )
    result = train_pairs(run, cfg, model, wrapped, make_step_fn(run.tok, cfg, acc.device))
    if result is None:  # stopped early (train.stop_after)
        return 0
    metrics = evaluate(model, run.held_out, run.tok, cfg, acc.device)
    if base_eval:
        metrics["eval/nll_before"] = base_eval["eval/nll"]
    if acc.is_main_process:
        finish_run(run.out, "sft", peft_model, run.parent_adapter, metrics, result)
    acc.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
