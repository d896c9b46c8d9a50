"""Online RL (GRPO or RLOO) of a LoRA policy against composed rewards, with KL control and
Goodhart monitoring.

Run::

    onbrand train rl --config configs/rl/demo.yaml [key=value ...]
    accelerate launch -m onbrand.training.rl --config configs/rl/demo.yaml

One optimizer step, for P prompts x G completions each (``rollout.num_generations``)::

    y_ij ~ pi(. | x_i)                                   rollouts (training/rl_rollouts.py: live or vLLM)
    R_ij = sum_k w_k r_k(x_i, y_ij)                      training/rl_rewards.py, each r_k logged
    kl_ij = sum_t log pi(y_ijt | .) - log ref(y_ijt | .)  ref = the policy with its LoRA disabled
    kl_mode=reward: R_ij <- R_ij - beta * kl_ij           (the RLOO/PPO-style KL-shaped reward)
    A_ij = (R_ij - mean_j R_ij) / std_j R_ij              GRPO;  RLOO: G/(G-1) (R_ij - mean_j R_ij)
    loss = - sum_ijt A_ij * rho_ijt / T_tokens  [+ beta * mean_t k3_ijt  when kl_mode=loss]
    rho = exp(logp - logp.detach())                       (= 1, gradient = grad logp: one update per rollout)
    vLLM rollouts: rho_ijt *= min(exp(logp - logp_rollout), importance_cap)   (truncated importance sampling)
    k3 = exp(ref - logp) - (ref - logp) - 1               (the unbiased, non-negative KL estimator)

Why a compact loop and not TRL 1.16's ``GRPOTrainer``/``RLOOTrainer`` (which do run on this CPU):
the trainers own generation (``model.generate``/their own vLLM), checkpointing (Trainer's
``checkpoint-N`` layout) and logging, so an RL run would not have our run directory, resume, metric
sinks or exportable ``adapter/`` (docs/architecture.md); their defaults (``beta=0``: no KL control,
``num_generations=8``, ``max_completion_length=512``) are wrong for CPU anyway. Here the shared
training loop (``training/loop.py``: DDP, clipping, checkpoints, resume, tracking) runs a step
function that (1) generates through the eval engines' transformers engine on the LIVE policy, or
through vLLM with the policy's LoRA refreshed every ``rollout.sync_every`` steps (rl_rollouts.py), (2)
scores with composed rewards, (3) packs two completions of the same prompt per segment
(``[prompt, y1, y2]``, the shared-prefix packing of DPO: the prompt runs once per two completions)
and gets log-probs through the fused linear log-prob kernel (no vocab-sized logits).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from onbrand.artifacts import read_json
from onbrand.config import check_range, load_config, to_dict
from onbrand.data.brand import load_brand
from onbrand.data.snapshot import load_snapshot
from onbrand.engines.base import render_prompt
from onbrand.kernels import fused_linear_logprobs
from onbrand.lineage import init_run_dir, tokenizer_record, update_run
from onbrand.models import DEFAULT_MODEL, load_tokenizer, model_hash
from onbrand.training.batching import TokenizedPair, collate, with_system
from onbrand.training.checkpoint import config_fingerprint, latest_checkpoint
from onbrand.training.common import (
    DataSection,
    PackedModel,
    brand_prompt,
    parent_of,
    parse_args,
    save_stage_and_adapter,
    seed_everything,
)
from onbrand.training.goodhart import GoodhartConfig, GoodhartMonitor, GoodhartStop, diversity, write_report
from onbrand.training.loop import TrainConfig, autocast, make_accelerator, run_loop
from onbrand.training.lora import LoRAConfig, build_policy
from onbrand.training.rl_rewards import RewardComposer, RewardTerm, Rollout, group_advantages
from onbrand.training.rl_rollouts import Completion, RolloutConfig, make_rollouts, timed_rollout
from onbrand.training.tracking import read_metrics


@dataclass
class RLAlgo:
    algorithm: Literal["grpo", "rloo"] = "grpo"
    beta: float = 0.05  # KL weight (0 = no KL control)
    kl_mode: Literal["reward", "loss"] = "loss"
    scale_rewards: bool = True  # grpo: divide the centred reward by the group std
    loss_agg: Literal["token", "sequence"] = "token"  # token: sum / all tokens (DAPO); sequence: GRPO

    def __post_init__(self) -> None:
        check_range("rl.beta", self.beta, 0, 100)


@dataclass
class RLConfig:
    model: str = DEFAULT_MODEL
    init_from: str | None = "runs/demo/dpo"  # an SFT or DPO run: its adapter/ is merged first
    out_dir: str = "runs/demo/rl"
    data: DataSection = field(default_factory=DataSection)
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(r=8, alpha=16))
    # train.batch_size counts PROMPTS per optimizer step (each gives num_generations completions)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, batch_size=2, max_steps=10))
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rl: RLAlgo = field(default_factory=RLAlgo)
    rewards: list[RewardTerm] = field(default_factory=lambda: [RewardTerm(kind="rules")])
    goodhart: GoodhartConfig = field(default_factory=GoodhartConfig)

    def __post_init__(self) -> None:
        if self.train.micro_batch_size not in (0, self.train.batch_size):
            raise ValueError(
                f"train.micro_batch_size must be 0 (one rollout batch per step) for rl, got "
                f"{self.train.micro_batch_size}; lower train.batch_size instead"
            )


@dataclass
class RLPrompt:
    id: str
    messages: list[dict[str, str]]  # with the brand's system prompt first
    prompt_ids: list[int]
    channel: str | None

    def __len__(self) -> int:
        return len(self.prompt_ids)


# ----------------------------------------------------------------------------- data
def load_prompts(cfg: RLConfig, tok, system_prompt: str | None, card) -> tuple[list[RLPrompt], dict]:
    """Prompts of the snapshot's ``data.train_split`` (chosen/rejected are not used). Errors name the row."""

    dd, manifest = load_snapshot(cfg.data.snapshot)
    split = cfg.data.train_split
    if split not in dd or not len(dd[split]):
        raise ValueError(f"{cfg.data.snapshot}: no {split} split / no prompts")
    rows = dd[split]
    n = len(rows) if not cfg.data.max_train_pairs else min(cfg.data.max_train_pairs, len(rows))
    where = f"{cfg.data.snapshot}/{split}.parquet"
    out = []
    for i in range(n):
        rec = rows[i]
        channel = rec.get("channel") or None
        if card is not None and channel is not None and channel not in card.channels:
            raise ValueError(
                f"{where}: row {i} (id {rec.get('id')}): channel {channel!r} is not in the brand card "
                f"{card.id} (channels: {sorted(card.channels)})"
            )
        msgs = with_system(system_prompt, rec["prompt"])
        ids = render_prompt(tok, msgs)
        if len(ids) + cfg.rollout.max_new_tokens > cfg.train.max_length:
            raise ValueError(
                f"{where}: row {i} (id {rec.get('id')}): prompt is {len(ids)} tokens; with "
                f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} that exceeds "
                f"train.max_length={cfg.train.max_length}"
            )
        out.append(RLPrompt(str(rec.get("id", i)), msgs, ids, channel))
    return out, manifest


# ----------------------------------------------------------------------------- model pieces
class PolicyModel(PackedModel):
    """:class:`PackedModel` whose log-probs are those of the SAMPLING distribution: the hidden
    states are divided by the rollout temperature T, since logits / T = (h / T) W^T."""

    def __init__(self, model, temperature: float = 1.0, chunk_budget_mb: float = 128.0):
        super().__init__(model, "logps", chunk_budget_mb)
        self.temperature = temperature

    def forward(self, batch) -> torch.Tensor:
        h = self.hidden(batch)[batch.src_index] / self.temperature
        weight = self.model.get_output_embeddings().weight  # (V, H), frozen, tied
        return fused_linear_logprobs(h, weight, batch.targets, memory_budget_mb=self.chunk_budget_mb)


def pack_group(prompts: list[RLPrompt], completions: list[list[int]], G: int):
    """Two completions of one prompt per segment ``[prompt, y_a, y_b]`` -> (pairs, slot (P*G,)).

    ``slot[k]`` is the packed sequence index of completion k (``2 * pair + {0, 1}``).
    """
    pairs, slot = [], []
    for i, p in enumerate(prompts):
        ys = completions[i * G : (i + 1) * G]
        for j in range(0, G, 2):
            b = ys[j + 1] if j + 1 < G else []
            slot.append(2 * len(pairs))
            if b:
                slot.append(2 * len(pairs) + 1)
            pairs.append(TokenizedPair(id=f"{p.id}/{j}", prompt=p.prompt_ids, chosen=ys[j], rejected=b))
    return pairs, torch.tensor(slot)


# ----------------------------------------------------------------------------- loss
def policy_loss(
    logp, ref, seq, adv, n_seq: int, cfg: RLAlgo, behaviour=None, cap: float = 0.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Policy-gradient loss on M completion tokens.

    logp, ref (M,) token log-probs (policy with grad, reference); seq (M,) completion index in
    [0, N); adv (N,) advantages. ``behaviour`` (M,): the log-probs the rollout engine sampled with
    (vLLM); each token is then weighted by ``min(exp(logp - behaviour), cap)`` (truncated importance
    sampling). Returns the loss and metrics (mean per-token k3 KL, importance weights).
    """
    ratio = torch.exp(logp - logp.detach())  # = 1; d ratio = d logp (one update per rollout batch)
    per_tok = -adv[seq] * ratio
    metrics: dict[str, float] = {}
    if behaviour is not None and cap > 0:
        log_w = logp.detach() - behaviour
        w = torch.exp(log_w)
        per_tok = per_tok * w.clamp(max=cap)
        metrics.update({
            "rollout/is_weight": w.clamp(max=cap).mean().item(), "rollout/is_truncated": (w > cap).float().mean().item(),
            "rollout/logp_gap": log_w.abs().mean().item(),
        })  # fmt: skip
    log_r = ref - logp
    k3 = torch.exp(log_r) - log_r - 1  # (M,) >= 0
    if cfg.kl_mode == "loss" and cfg.beta > 0:
        per_tok = per_tok + cfg.beta * k3
    if cfg.loss_agg == "token":
        loss = per_tok.sum() / per_tok.numel()
    else:
        counts = torch.bincount(seq, minlength=n_seq).clamp(min=1)
        loss = (per_tok.new_zeros(n_seq).index_add(0, seq, per_tok) / counts).mean()
    return loss, {"kl_k3": k3.detach().mean().item(), **metrics}


def behaviour_logps(outs: list[Completion], seq: torch.Tensor) -> torch.Tensor | None:
    """The rollout engine's log-probs in the packed token order of ``seq`` (M,), or None.

    The tokens of one completion appear in order in the packed stream, so a stable sort by
    completion index gives the completion-major order of the engine's lists."""
    if any(o.behaviour_logps is None for o in outs):
        return None
    counts = torch.bincount(seq.cpu(), minlength=len(outs))
    lens = torch.tensor([len(o.behaviour_logps) for o in outs])
    if not torch.equal(counts, lens):
        raise RuntimeError(f"packed completion lengths {counts.tolist()} != rollout lengths {lens.tolist()}")
    order = torch.argsort(seq.cpu(), stable=True)  # packed -> completion-major order
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    flat = torch.tensor([x for o in outs for x in o.behaviour_logps], dtype=torch.float32)
    return flat[rank].to(seq.device)


def _logps(model, ref_model: PackedModel, pairs, slot, tok, cfg: RLConfig, device):
    """Policy (grad) and reference (no grad) token log-probs, and each token's completion index."""
    batch = collate(pairs, cfg.train.max_tokens_per_row, True, tok.pad_token_id).to(device)
    with autocast(cfg.train.precision, device):
        logp = model(batch).float()
    with torch.no_grad(), ref_model.model.disable_adapter(), autocast(cfg.train.precision, device):
        ref = ref_model(batch).float()
    # packed sequence index -> completion index
    inv = torch.full((batch.num_sequences,), -1, dtype=torch.long)
    inv[slot] = torch.arange(len(slot))
    return logp, ref, inv.to(device)[batch.seq_id]


def _reduce_mean(acc, values: dict[str, float]) -> dict[str, float]:
    """Mean across ranks (every rank then takes the same Goodhart decision)."""
    if acc.num_processes == 1:
        return values
    keys = sorted(values)
    t = acc.reduce(torch.tensor([values[k] for k in keys], dtype=torch.float64, device=acc.device), "mean")
    return {k: float(v) for k, v in zip(keys, t.cpu().tolist())}


def make_step_fn(acc, unwrapped: PolicyModel, rollouts, composer, monitor, tok, cfg: RLConfig, state):
    """``step_fn(model, prompts) -> (loss, metrics)`` for the shared loop (one rollout batch)."""
    G = cfg.rollout.num_generations
    device = acc.device

    def step_fn(model, prompts):
        state["step"] += 1
        step = state["step"]
        seed = cfg.train.seed * 1_000_003 + step * 101 + acc.process_index
        outs, timing = timed_rollout(rollouts, unwrapped.model, prompts, step, seed)
        ids = [o.ids for o in outs]
        texts = [o.text for o in outs]
        rolls = [
            Rollout(prompts[k // G].messages, texts[k], len(ids[k]), prompts[k // G].channel)
            for k in range(len(outs))
        ]
        task, parts = composer.score(rolls)
        pairs, slot = pack_group(prompts, ids, G)
        logp, ref, seq = _logps(model, unwrapped, pairs, slot, tok, cfg, device)
        n = len(outs)
        seq_kl = logp.detach().new_zeros(n).index_add(0, seq, (logp - ref).detach())  # (N,)
        total = torch.tensor(task, dtype=torch.float32, device=device)
        if cfg.rl.kl_mode == "reward":
            total = total - cfg.rl.beta * seq_kl
        adv = group_advantages(total, G, cfg.rl.algorithm, cfg.rl.scale_rewards)
        behaviour = behaviour_logps(outs, seq)
        loss, m = policy_loss(logp, ref, seq, adv, n, cfg.rl, behaviour, cfg.rollout.importance_cap)
        m.update(timing)
        lengths = [len(x) for x in ids]
        m.update({f"reward/{k}": float(v.mean()) for k, v in parts.items()})
        div = diversity(texts)
        m.update({
            "reward/task": float(task.mean()), "reward/total": total.mean().item(),
            "reward/kl_penalty": -cfg.rl.beta * seq_kl.mean().item(), "reward/group_std": float(task.reshape(-1, G).std(1, ddof=1).mean()),
            "kl": seq_kl.sum().item() / max(1, sum(lengths)), "kl_seq": seq_kl.mean().item(),
            "completion/length": sum(lengths) / n, "completion/max_length": float(max(lengths)),
            "completion/truncated": sum(o.finish == "length" for o in outs) / n,
            "completion/distinct_2": div["distinct_2"], "completion/repetition": div["repetition"],
        })  # fmt: skip
        state["tokens"] = sum(lengths) + sum(len(p) for p in prompts)
        signals = _reduce_mean(acc, {
            "reward": m["reward/task"], "kl": m["kl"], "length": m["completion/length"],
            "distinct_2": div["distinct_2"], "repetition": div["repetition"], "truncated": m["completion/truncated"],
        })  # fmt: skip
        m.update(monitor.observe(step, signals))
        monitor.check_stop(step)
        return loss, m

    return step_fn


# ----------------------------------------------------------------------------- recipe
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "Online RL (GRPO/RLOO) of a LoRA policy", "configs/rl/demo.yaml")
    cfg = load_config(RLConfig, args.config, args.overrides)
    return train(cfg)


def _setup(cfg: RLConfig, acc):
    """Tokenizer, prompts, run.json, policy. Returns what :func:`train` needs."""

    parent, parent_adapter = parent_of(cfg.init_from)
    base_name = parent["base_model"] if parent else cfg.model
    tok = load_tokenizer(base_name)
    system_prompt, brand = brand_prompt(cfg.data.brand)
    card = None
    if cfg.data.brand:
        card = load_brand(cfg.data.brand)
    composer = RewardComposer(list(cfg.rewards), card)
    prompts, manifest = load_prompts(cfg, tok, system_prompt, card)
    if acc.is_main_process:
        init_run_dir(
            cfg.out_dir, "rl", cfg, base_model=base_name, base_model_hash=model_hash(base_name),
            parent_run=str(cfg.init_from) if cfg.init_from else None, snapshot_id=manifest.get("snapshot_id"),
            brand=brand, system_prompt=system_prompt,
            tokenization=tokenizer_record(tok, system_prompt, cfg.train.max_length),
            extra={"world_size": acc.num_processes, "train_prompts": len(prompts),
                   "algorithm": cfg.rl.algorithm, "rollout_engine": cfg.rollout.engine,
                   "data": {"snapshot_id": manifest.get("snapshot_id"), "split": cfg.data.train_split,
                            "record_ids": sorted(p.id for p in prompts)}},
        )  # fmt: skip
    acc.wait_for_everyone()
    peft_model = build_policy(
        base_name, cfg.lora, parent_adapter=parent_adapter,
        gradient_checkpointing=cfg.train.gradient_checkpointing, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return tok, prompts, composer, peft_model, parent_adapter, base_name


def train(cfg: RLConfig) -> int:
    seed_everything(cfg.train.seed, cfg.train.threads)
    acc = make_accelerator()
    out = Path(cfg.out_dir)
    tok, prompts, composer, peft_model, parent_adapter, base_name = _setup(cfg, acc)
    model = PolicyModel(peft_model, cfg.rollout.temperature).to(acc.device)
    rollouts = make_rollouts(
        cfg.rollout, peft_model, tok, base_name, parent_adapter, out / f".rollout-rank{acc.process_index}",
        seed=cfg.train.seed + acc.process_index,
    )  # fmt: skip
    monitor = GoodhartMonitor(cfg.goodhart, out / "goodhart.jsonl" if acc.is_main_process else None,
                              verbose=acc.is_main_process)  # fmt: skip
    # the same checkpoint run_loop will resume from (same config fingerprint)
    ckpt = latest_checkpoint(out, config_fingerprint(to_dict(cfg))) if cfg.train.resume else None
    state = {"step": _ckpt_step(ckpt), "tokens": 0}
    _replay_monitor(monitor, out, state["step"])
    wrapped = acc.prepare(model)
    step_fn = make_step_fn(acc, model, rollouts, composer, monitor, tok, cfg, state)
    stopped = None
    try:
        result = run_loop(
            acc, model, wrapped, prompts, cfg.train, out, step_fn, run_name=out.name,
            config_dict=to_dict(cfg), tokens_of=lambda _ps: state["tokens"],
        )  # fmt: skip
    except GoodhartStop as e:
        print(f"rl: {e}", file=sys.stderr)
        stopped = str(e)
        result = None
    finally:
        rollouts.close()
    if result is not None and result.stopped_early:
        print(
            f"stopped after step {result.steps} (train.stop_after); resume with the same command",
            file=sys.stderr,
        )
        return 0
    if acc.is_main_process:
        finish(out, peft_model, parent_adapter, result, state, stopped, monitor)
    acc.wait_for_everyone()
    return 0


def _ckpt_step(ckpt) -> int:
    if ckpt is None:
        return 0

    return int(read_json(Path(ckpt) / "state.json")["step"])


def _replay_monitor(monitor: GoodhartMonitor, out: Path, step: int) -> None:
    """On resume, feed the monitor the logged steps <= ``step`` so its baseline is the same."""
    if step == 0 or not (out / "metrics.jsonl").exists():
        return

    verbose, monitor.verbose, log_path, monitor.log_path = monitor.verbose, False, monitor.log_path, None
    for row in read_metrics(out):
        if row["step"] <= step and "reward/task" in row:
            monitor.observe(row["step"], {
                "reward": row["reward/task"], "kl": row["kl"], "length": row["completion/length"],
                "distinct_2": row["completion/distinct_2"], "repetition": row["completion/repetition"],
                "truncated": row.get("completion/truncated", 0.0),
            })  # fmt: skip
    monitor.verbose, monitor.log_path = verbose, log_path


def finish(out: Path, peft_model, parent_adapter, result, state, stopped, monitor) -> None:
    """Save stage_adapter/ and adapter/ (ONE LoRA on the original base, concatenated with the
    parent's exactly like DPO does with SFT) and the run's final record."""
    save_stage_and_adapter(peft_model, parent_adapter, out / "stage_adapter", out / "adapter")
    final: dict[str, Any] = {"steps": result.steps if result else state["step"] - 1,
                             "goodhart_warnings": len(monitor.warnings), "goodhart_stop": stopped}  # fmt: skip
    if result is not None:
        final.update(train_seconds=round(result.seconds, 2), **result.last_metrics)
    update_run(out, final=final)
    if final["steps"] > 0:
        write_report(out)  # rl_curves.png + rl_report.md
    task = final.get("reward/task")
    task_s = f"{task:.3f}" if isinstance(task, float) else "n/a"
    print(f"rl: {final['steps']} steps; last task reward {task_s}; "
          f"{len(monitor.warnings)} Goodhart warning(s) -> {out}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
