"""Bradley-Terry reward model: sequence-classification head + LoRA, trained on preference pairs.

Run::

    onbrand train reward --config configs/reward/demo.yaml [key=value ...]

For scores r_c, r_r (B,) of the chosen and rejected conversations (the head on the last token)::

    loss = mean_b -log σ(r_c - r_r - margin) + center_coef * mean_b (r_c + r_r)^2

(TRL RewardTrainer semantics: ``margin`` as its per-pair margin, here one constant;
``center_coef`` is its ``center_rewards_coefficient``, which keeps rewards centred on 0.) Pairs are
packed ``[prompt, chosen, rejected]`` with the shared-prefix mask, so both scores come from one
pass over the prompt. The pairs' token ids are read from the token cache when SFT or DPO already
tokenised the same split with the same tokenizer, template, system prompt and ``max_length``
(``onbrand.training.token_cache``; the demo's judge split is the reward model's own, its dev is shared).

Eval and RL score conversations with :class:`RewardScorer`::

    RewardScorer("runs/demo/reward").score([[system, user, assistant], ...]) -> [float, ...]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from onbrand.config import check_range, load_config
from onbrand.lineage import load_run
from onbrand.models import DEFAULT_MODEL, load_tokenizer
from onbrand.training.batching import tokenize_pair
from onbrand.training.common import (
    DataSection,
    PackedModel,
    WeightedMean,
    finish_run,
    pack,
    parse_args,
    setup_run,
    train_pairs,
)
from onbrand.training.loop import TrainConfig, autocast
from onbrand.training.lora import LoRAConfig, build_policy, merged_base


@dataclass
class RewardConfig:
    model: str = DEFAULT_MODEL
    out_dir: str = "runs/demo/reward"
    data: DataSection = field(default_factory=DataSection)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-4))
    margin: float = 0.0
    center_coef: float = 0.01
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        check_range("center_coef", self.center_coef, 0, None)
        check_range("eval_batch_size", self.eval_batch_size, 1, None)


def scores(model: PackedModel, pairs, tok, cfg, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) chosen and rejected scores of packed pairs."""
    batch = pack(pairs, tok, cfg.train, True, device)
    with autocast(cfg.train.precision, device):
        s = model(batch).float()  # (2B,)
    return s[0::2], s[1::2]


def bt_loss(rc: torch.Tensor, rr: torch.Tensor, cfg: RewardConfig) -> torch.Tensor:
    loss = -F.logsigmoid(rc - rr - cfg.margin).mean()
    if cfg.center_coef:
        loss = loss + cfg.center_coef * ((rc + rr) ** 2).mean()
    return loss


def bt_per_pair(rc: torch.Tensor, rr: torch.Tensor, cfg: RewardConfig) -> torch.Tensor:
    """(B,) per-pair terms of :func:`bt_loss` (its value is their mean)."""
    out = -F.logsigmoid(rc - rr - cfg.margin)
    if cfg.center_coef:
        out = out + cfg.center_coef * (rc + rr) ** 2
    return out


def make_step_fn(tok, cfg: RewardConfig, device, train: list | None = None):
    """``step_fn(model, pairs)``; with ``train`` pairs of weight != 1 (synthetic pairs,
    ``data.synthetic_weight``) the loss is the weighted mean over the global batch."""
    weights = WeightedMean(train or [])

    def step_fn(model, pairs):
        rc, rr = scores(model, pairs, tok, cfg, device)
        if weights.active and weights.scale is not None:
            loss = weights(bt_per_pair(rc, rr, cfg), pairs)
        else:
            loss = bt_loss(rc, rr, cfg)
        d = (rc - rr).detach()
        return loss, {
            "rewards/chosen": rc.detach().mean(),
            "rewards/rejected": rr.detach().mean(),
            "rewards/margins": d.mean(),
            "rewards/accuracies": (d > 0).float().mean(),
        }

    step_fn.begin_step = weights.begin_step
    return step_fn


@torch.no_grad()
def evaluate(model: PackedModel, pairs, tok, cfg: RewardConfig, device) -> dict[str, float]:
    """Held-out pairwise accuracy (ties count half), mean margin and loss."""
    if not pairs:
        return {}
    model.eval()
    rc, rr = [], []
    for i in range(0, len(pairs), cfg.eval_batch_size):
        c, r = scores(model, pairs[i : i + cfg.eval_batch_size], tok, cfg, device)
        rc.append(c)
        rr.append(r)
    model.train()
    rc, rr = torch.cat(rc), torch.cat(rr)
    d = rc - rr
    return {
        "eval/accuracy": ((d > 0).float() + 0.5 * (d == 0).float()).mean().item(),
        "eval/margin": d.mean().item(),
        "eval/loss": bt_loss(rc, rr, cfg).item(),
        "eval/reward_mean": torch.cat([rc, rr]).mean().item(),
        "eval/reward_std": torch.cat([rc, rr]).std().item(),
        "eval/pairs": len(pairs),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "Bradley-Terry reward model (LoRA + score head)", "configs/reward/demo.yaml")
    return train(load_config(RewardConfig, args.config, args.overrides))


def train(cfg: RewardConfig) -> int:
    run = setup_run("reward", cfg, need_rejected=True)
    acc = run.acc
    peft_model = build_policy(
        run.base_model, cfg.lora, task="reward",
        gradient_checkpointing=cfg.train.gradient_checkpointing, pad_token_id=run.tok.pad_token_id,
    )  # fmt: skip
    model = PackedModel(peft_model, mode="score").to(acc.device)
    wrapped = acc.prepare(model)
    result = train_pairs(run, cfg, model, wrapped, make_step_fn(run.tok, cfg, acc.device, run.train))
    if result is None:  # stopped early (train.stop_after)
        return 0
    metrics = evaluate(model, run.held_out, run.tok, cfg, acc.device)
    if acc.is_main_process:
        finish_run(run.out, "reward", peft_model, None, metrics, result)
    acc.wait_for_everyone()
    return 0


class RewardScorer:
    """Score conversations with a trained reward run.

    A conversation is ``[system?, prompt turns..., assistant]``; without a system turn the run's
    recorded brand system prompt is prepended (the context the model was trained in). Returns one
    float per conversation (higher = more on-brand); scores are comparable within one run only.
    """

    def __init__(
        self, run_dir: str | Path, device: str = "cpu", batch_size: int = 16, precision: str = "fp32"
    ):
        from peft import PeftModel

        run_dir = Path(run_dir)
        run = load_run(run_dir)
        if run.get("kind") != "reward":
            raise ValueError(f"{run_dir}: run kind is {run.get('kind')!r}, expected 'reward'")
        self.cfg = load_config(RewardConfig, run_dir / "config.yaml")
        self.cfg.train.precision = precision
        self.cfg.eval_batch_size = batch_size
        self.system_prompt = run.get("system_prompt")
        self.tok = load_tokenizer(run["base_model"])
        base = merged_base(run["base_model"], None, task="reward")
        base.config.pad_token_id = self.tok.pad_token_id
        model = PeftModel.from_pretrained(base, str(run_dir / "adapter")).to(device).eval()
        self.model = PackedModel(model, mode="score")
        self.device = torch.device(device)

    @torch.no_grad()
    def score(self, conversations: list[list[dict]]) -> list[float]:
        pairs = []
        for i, conv in enumerate(conversations):
            if not conv or conv[-1].get("role") != "assistant":
                raise ValueError(f"conversation {i}: must end with one assistant message")
            has_system = any(m.get("role") == "system" for m in conv)
            record = {"id": str(i), "prompt": conv[:-1], "chosen": [conv[-1]]}
            sp = None if has_system else self.system_prompt
            pairs.append(
                tokenize_pair(self.tok, record, sp, self.cfg.train.max_length, where="RewardScorer: ")
            )
        out: list[float] = []
        bs = self.cfg.eval_batch_size
        for i in range(0, len(pairs), bs):
            batch = pack(pairs[i : i + bs], self.tok, self.cfg.train, True, self.device)
            with autocast(self.cfg.train.precision, self.device):
                s = self.model(batch).float()
            out += s[0::2].tolist()
        return out


if __name__ == "__main__":
    sys.exit(main())
