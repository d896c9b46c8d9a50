"""DPO-family preference optimisation of a LoRA adapter (sigmoid, ipo, hinge, robust, sigmoid_norm,
simpo, orpo; + optional NLL term), with TRL 1.x loss semantics (``onbrand.kernels.losses``).

Run::

    onbrand train dpo --config configs/dpo/demo.yaml [key=value ...]
    accelerate launch -m onbrand.training.dpo --config configs/dpo/demo.yaml

Per step, for B pairs with summed completion log-probs π_c, π_r (B,) of the policy and ref_c,
ref_r of the reference::

    loss = mean_b ℓ(β · ((π_c - ref_c) - (π_r - ref_r)))        (sigmoid: ℓ(x) = -log σ(x))

What differs from TRL's DPOTrainer (same math, less work):

- the reference is the policy with adapters disabled (after ``init_from`` the SFT adapter is merged
  into the base first; on a 4-bit base it stays stacked, frozen, and only the new adapter is
  disabled: ``onbrand.training.lora.reference_adapters``), and its log-probs are computed once and
  cached on disk (``onbrand.training.ref_cache``, keyed by snapshot, model hash and tokenization);
- each pair is ONE packed segment ``[prompt, chosen, rejected]`` (the prompt runs once), rows are
  padding-free (``onbrand.training.batching``);
- log-probs only at completion positions, from the last hidden states through the fused linear
  log-prob kernel (no full logits);
- the token ids come from the token cache (``onbrand.training.token_cache``): SFT, DPO and the
  reward model tokenise a snapshot split once between them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from onbrand.config import check_range, load_config
from onbrand.kernels.losses import LOSS_TYPES, loss_spec, nll_weight_for, preference_loss
from onbrand.models import DEFAULT_MODEL, cache_root
from onbrand.training import ref_cache
from onbrand.training.common import (
    DataSection,
    PackedModel,
    WeightedMean,
    finish_run,
    pack,
    parse_args,
    sequence_logps,
    setup_run,
    train_pairs,
)
from onbrand.training.loop import TrainConfig, autocast
from onbrand.training.lora import LoRAConfig, build_policy, reference_adapters

LossType = Literal[LOSS_TYPES]  # type: ignore[valid-type]  # the kernels' loss registry


@dataclass
class DPOLoss:
    loss_type: LossType = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0  # robust: ε, simpo: ε
    simpo_gamma: float = 0.5
    nll_weight: float | None = None  # None: the loss's default (kernels.losses.LOSSES)

    def __post_init__(self) -> None:
        check_range("dpo.beta", self.beta, 0, None, lo_open=True)
        check_range("dpo.label_smoothing", self.label_smoothing, 0, 0.5, hi_open=True)
        if self.nll_weight is not None:
            check_range("dpo.nll_weight", self.nll_weight, 0, None)

    @property
    def needs_reference(self) -> bool:
        return not loss_spec(self.loss_type).reference_free


@dataclass
class DPOConfig:
    model: str = DEFAULT_MODEL
    init_from: str | None = None  # an SFT run dir: its adapter is merged (nf4: stacked) first
    out_dir: str = "runs/demo/dpo"
    data: DataSection = field(default_factory=DataSection)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-4))
    dpo: DPOLoss = field(default_factory=DPOLoss)
    shared_prefix: bool = True  # [prompt, chosen, rejected] in one segment
    ref_cache: bool = True  # precompute reference log-probs once (disk cache); else per step
    ref_cache_dir: str | None = None  # default: $ONBRAND_CACHE/ref_logps
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        check_range("eval_batch_size", self.eval_batch_size, 1, None)


# ----------------------------------------------------------------------------- per-batch math
def batch_logps(model: PackedModel, pairs, tok, cfg: DPOConfig, device) -> dict[str, torch.Tensor]:
    """Policy forward on packed pairs -> chosen/rejected summed log-probs (B,) and counts (B,)."""
    batch = pack(pairs, tok, cfg.train, cfg.shared_prefix, device)
    with autocast(cfg.train.precision, device):
        token_logps = model(batch)
    chosen, rejected = sequence_logps(token_logps.float(), batch)
    lengths = batch.seq_lengths()
    return {"chosen": chosen, "rejected": rejected, "n_chosen": lengths[0::2], "n_rejected": lengths[1::2]}


@torch.no_grad()
def reference_logps(model: PackedModel, pairs, tok, cfg: DPOConfig, device, desc="reference log-probs"):
    """Reference = policy without its trainable adapter. Returns chosen (N,), rejected (N,)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    out_c, out_r = [], []
    bs = cfg.eval_batch_size
    with reference_adapters(model.model):
        for i in tqdm(range(0, len(pairs), bs), desc=desc, leave=False, disable=len(pairs) <= bs):
            got = batch_logps(model, pairs[i : i + bs], tok, cfg, device)
            out_c.append(got["chosen"])
            out_r.append(got["rejected"])
    model.train(was_training)
    return torch.cat(out_c), torch.cat(out_r)


def pair_loss(got: dict[str, torch.Tensor], ref: tuple | None, cfg: DPOConfig, chosen_nll=None):
    d = cfg.dpo
    return preference_loss(
        got["chosen"], got["rejected"],
        ref[0] if ref else None, ref[1] if ref else None,
        chosen_tokens=got["n_chosen"], rejected_tokens=got["n_rejected"], policy_chosen_nll=chosen_nll,
        loss_type=d.loss_type, beta=d.beta, label_smoothing=d.label_smoothing,
        simpo_gamma=d.simpo_gamma, nll_weight=d.nll_weight,
    )  # fmt: skip


def nll_weight_of(cfg: DPOConfig) -> float:
    d = cfg.dpo
    return nll_weight_for(d.loss_type, d.nll_weight)


def weighted_loss(got, ref, cfg: DPOConfig, pairs, weights: WeightedMean, chosen_nll=None) -> torch.Tensor:
    """The preference loss with per-pair weights (``data.synthetic_weight``): each pair's loss from
    ``preference_loss`` on that pair alone (the losses are elementwise, so this is its per-pair
    term), combined by :class:`~onbrand.training.common.WeightedMean`, plus the NLL term."""
    d = cfg.dpo
    per_pair = []
    for b in range(len(pairs)):
        k = slice(b, b + 1)
        one = preference_loss(
            got["chosen"][k], got["rejected"][k], ref[0][k] if ref else None, ref[1][k] if ref else None,
            chosen_tokens=got["n_chosen"][k], rejected_tokens=got["n_rejected"][k], loss_type=d.loss_type,
            beta=d.beta, label_smoothing=d.label_smoothing, simpo_gamma=d.simpo_gamma, nll_weight=0.0,
        )  # fmt: skip
        per_pair.append(one.loss)
    loss = weights(torch.stack(per_pair), pairs)
    if nll_weight_of(cfg) and chosen_nll is not None:
        loss = loss + nll_weight_of(cfg) * chosen_nll
    return loss


def make_step_fn(unwrapped: PackedModel, tok, cfg: DPOConfig, device, train: list | None = None):
    """``step_fn(model, pairs) -> (loss, metrics)`` for the shared loop.

    The NLL term (RPO / ORPO) is a token mean over the chosen completions of the WHOLE global batch
    (all micro-batches, all ranks), not of each micro-batch: ``begin_step`` gets the global token
    count, and each micro-batch's term is scaled so that the loop's pair-weighted sum and DDP's
    mean over ranks give exactly ``-sum(chosen logps) / #chosen tokens``. Per micro-batch means
    would make a 2-process run differ from 1 process (and depend on micro_batch_size).

    ``train`` (the run's pairs): when some have a weight other than 1 (synthetic pairs, see
    ``data.synthetic_weight``), the loss and the NLL term are weighted means over the global batch.
    """
    state: dict[str, float] = {}
    weights = WeightedMean(train or [])

    def begin_step(mine, world, reduce_sum):
        weights.begin_step(mine, world, reduce_sum)
        w = [p.weight for p in mine] if weights.active else [1] * len(mine)
        tokens = reduce_sum(float(sum(wi * len(p.chosen) for wi, p in zip(w, mine))))
        denom = (tokens or 1.0) if weights.active else max(tokens, 1.0)  # weighted: may be < 1
        state["nll_scale"] = len(mine) * world / denom

    def step_fn(model, pairs):
        got = batch_logps(model, pairs, tok, cfg, device)
        chosen_nll = None
        if nll_weight_of(cfg) and "nll_scale" in state:
            c = got["chosen"] * weights.weights(pairs, got["chosen"]) if weights.active else got["chosen"]
            chosen_nll = -c.sum() * state["nll_scale"] / len(pairs)
        ref = None
        if cfg.dpo.needs_reference:
            if pairs[0].ref_chosen is not None:
                ref = (
                    torch.tensor([p.ref_chosen for p in pairs], device=device),
                    torch.tensor([p.ref_rejected for p in pairs], device=device),
                )
            else:
                ref = reference_logps(unwrapped, pairs, tok, cfg, device)
        out = pair_loss(got, ref, cfg, chosen_nll)
        loss = out.loss
        if weights.active and weights.scale is not None:
            loss = weighted_loss(got, ref, cfg, pairs, weights, chosen_nll)
        m = out.metrics()
        m["logps/chosen"] = got["chosen"].detach().mean().item()
        m["logps/rejected"] = got["rejected"].detach().mean().item()
        if ref is not None:
            # KL-to-reference estimate on the data's completions: mean per-token log-ratio.
            lr = (got["chosen"].detach() - ref[0]) + (got["rejected"].detach() - ref[1])
            m["kl_ref_per_token"] = (lr.sum() / (got["n_chosen"] + got["n_rejected"]).sum()).item()
        return loss, m

    step_fn.begin_step = begin_step
    return step_fn


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(unwrapped: PackedModel, pairs, tok, cfg: DPOConfig, device) -> dict[str, float]:
    """Held-out implicit reward accuracy, margins and loss on ``pairs`` (with cached ref logps)."""
    if not pairs:
        return {}
    unwrapped.eval()
    chosen, rejected, nc, nr = [], [], [], []
    bs = cfg.eval_batch_size
    for i in range(0, len(pairs), bs):
        got = batch_logps(unwrapped, pairs[i : i + bs], tok, cfg, device)
        chosen.append(got["chosen"])
        rejected.append(got["rejected"])
        nc.append(got["n_chosen"])
        nr.append(got["n_rejected"])
    unwrapped.train()
    got = {
        "chosen": torch.cat(chosen),
        "rejected": torch.cat(rejected),
        "n_chosen": torch.cat(nc),
        "n_rejected": torch.cat(nr),
    }
    ref = None
    if cfg.dpo.needs_reference:
        ref = (
            torch.tensor([p.ref_chosen for p in pairs], device=device),
            torch.tensor([p.ref_rejected for p in pairs], device=device),
        )
    out = pair_loss(got, ref, cfg)
    return {"eval/loss": out.loss.item(), **out.metrics("eval/"), "eval/pairs": len(pairs)}


# ----------------------------------------------------------------------------- recipe
def attach_reference(
    acc, model: PackedModel, splits: dict[str, list], tok, cfg: DPOConfig, key_base: dict
) -> dict:
    """Fill ``ref_chosen``/``ref_rejected`` of every pair from the disk cache (computing it once)."""

    cache_dir = Path(cfg.ref_cache_dir) if cfg.ref_cache_dir else cache_root() / "ref_logps"
    hits = {}
    for split, pairs in splits.items():
        if not pairs:
            continue
        key = ref_cache.cache_key(**key_base, split=split, ids=[p.id for p in pairs])

        def compute(pairs=pairs, split=split):
            return reference_logps(model, pairs, tok, cfg, acc.device, desc=f"reference log-probs ({split})")

        # the main process computes and writes; the others then read the same file
        if acc.is_main_process:
            c, r, hit = ref_cache.get_or_compute(cache_dir, key, compute)
        acc.wait_for_everyone()
        if not acc.is_main_process:
            c, r, hit = ref_cache.get_or_compute(cache_dir, key, compute)
        for p, vc, vr in zip(pairs, c.tolist(), r.tolist()):
            p.ref_chosen, p.ref_rejected = vc, vr
        hits[split] = hit
    return hits


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "DPO-family training of a LoRA adapter", "configs/dpo/demo.yaml")
    cfg = load_config(DPOConfig, args.config, args.overrides)
    return train(cfg)


def train(cfg: DPOConfig) -> int:
    run = setup_run("dpo", cfg, need_rejected=True)
    acc = run.acc
    peft_model = build_policy(
        run.base_model, cfg.lora, parent_adapter=run.parent_adapter,
        gradient_checkpointing=cfg.train.gradient_checkpointing, pad_token_id=run.tok.pad_token_id,
        stack_parent=True,
    )  # fmt: skip
    model = PackedModel(peft_model).to(acc.device)
    hits = {}
    if cfg.dpo.needs_reference and cfg.ref_cache:
        key_base = dict(
            snapshot_id=run.manifest.get("snapshot_id"), model=run.lineage_hash, tokenization=run.tokenization,
            precision=cfg.train.precision, shared_prefix=cfg.shared_prefix, quantize=cfg.lora.quantize,
        )  # fmt: skip
        hits = attach_reference(
            acc,
            model,
            {cfg.data.train_split: run.train, cfg.data.eval_split: run.held_out},
            run.tok,
            cfg,
            key_base,
        )
    wrapped = acc.prepare(model)
    step_fn = make_step_fn(model, run.tok, cfg, acc.device, run.train)
    result = train_pairs(run, cfg, model, wrapped, step_fn)
    if result is None:  # stopped early (train.stop_after)
        return 0
    if cfg.dpo.needs_reference and not cfg.ref_cache and run.held_out:
        c, r = reference_logps(model, run.held_out, run.tok, cfg, acc.device)
        for p, vc, vr in zip(run.held_out, c.tolist(), r.tolist()):
            p.ref_chosen, p.ref_rejected = vc, vr
    metrics = evaluate(model, run.held_out, run.tok, cfg, acc.device)
    if acc.is_main_process:
        finish_run(run.out, "dpo", peft_model, run.parent_adapter, metrics, result, {"ref_cache_hits": hits})
    acc.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
