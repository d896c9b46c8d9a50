"""What the recipes share: config sections, data loading + tokenization, the packed forward.

:class:`PackedModel` is the one ``nn.Module`` that accelerate wraps (DDP/FSDP): it runs the decoder
on packed rows and returns either per-token log-probs at completion positions (through
``onbrand.kernels.fused_linear_logprobs`` on the last hidden states and the frozen, tied head, so
the (tokens x vocab) logits never exist) or a scalar score per sequence (reward models).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from onbrand.adapters import concat_lora_adapters
from onbrand.artifacts import atomic_dir, atomic_write_json, hash_tree, sha256_json
from onbrand.config import check_range, to_dict
from onbrand.data.brand import brand_sha256, load_brand
from onbrand.data.snapshot import SPLITS, load_snapshot
from onbrand.kernels import fused_linear_logprobs
from onbrand.lineage import final_adapter, init_run_dir, load_run, tokenizer_record, update_run
from onbrand.models import load_tokenizer, model_hash
from onbrand.training import token_cache
from onbrand.training.batching import PackedBatch, TokenizedPair, collate, tokenize_pair
from onbrand.training.loop import LoopResult, make_accelerator, resolve_precision, run_loop
from onbrand.training.lora import TRAINED, backbone


@dataclass
class DataSection:
    """Where the data and the brand come from (shared by every recipe)."""

    snapshot: str = "runs/demo/snapshot"
    brand: str | None = "configs/brands/aurora.yaml"  # its system_prompt() heads every prompt
    # The snapshot split the recipe trains on: SFT and DPO read "train"; the eval's reward model
    # (the judge) reads "judge", pairs the policy never saw (onbrand eval checks this from run.json).
    train_split: str = "train"
    # Held-out metrics during training come from dev: test is read once per release, by onbrand eval.
    eval_split: str = "dev"
    max_train_pairs: int = 0  # 0 = all
    max_eval_pairs: int = 0
    # Synthetic pairs (origin "synthetic": judged by the reward model and the brand rules, see
    # onbrand annotate queue --strategy uncertain) in the train split: include (default) or exclude
    # them (counted in the log and run.json); synthetic_weight in [0, 1] multiplies their per-pair
    # loss (DPO, reward model) or per-example loss (SFT). RL reads prompts only: neither applies.
    # Held-out splits never hold synthetic pairs (the snapshot keeps them out; any found are dropped).
    synthetic: Literal["include", "exclude"] = "include"
    synthetic_weight: float = 1.0

    def __post_init__(self) -> None:
        check_range("data.synthetic_weight", self.synthetic_weight, 0.0, 1.0)
        for name in ("train_split", "eval_split"):
            if getattr(self, name) not in SPLITS:
                raise ValueError(
                    f"data.{name} must be one of {', '.join(SPLITS)}, got {getattr(self, name)!r}"
                )
        if self.train_split == self.eval_split:
            raise ValueError(
                f"data.eval_split must differ from data.train_split, both are {self.train_split!r}"
            )
        if self.train_split == "test":
            raise ValueError("data.train_split 'test' is refused: the test split is for the final eval only")


def parse_args(argv, description: str, default_config: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=default_config, help="YAML config (defaults <- YAML <- key=value)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
    return p.parse_args(argv)


def seed_everything(seed: int, threads: int = 0) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)


def brand_prompt(path: str | None) -> tuple[str | None, dict[str, Any] | None]:
    if not path:
        return None, None

    card = load_brand(path)
    return card.system_prompt(), {"path": str(path), "sha256": brand_sha256(path)}


def select_rows(
    rows, split: str, data: DataSection, limit: int, need_rejected: bool, where: str
) -> tuple[list[int], list[bool], int]:
    """(row indices to train on, whether each is synthetic, synthetic rows dropped) of a split.

    Reads columns only (no tokenizer), so a token-cache hit costs no pass over the records."""
    n = len(rows)
    # Whole columns as lists ([:]): indexing a datasets Column row by row is ~70x slower.
    # Snapshots without the origin column (older or hand-made) are all human.
    origins = rows["origin"][:] if "origin" in rows.column_names else [None] * n
    ids = rows["id"][:] if "id" in rows.column_names else [None] * n
    rejected = rows["rejected"][:] if need_rejected else None
    keep_synthetic = split == data.train_split and data.synthetic == "include"
    idx: list[int] = []
    synthetic: list[bool] = []
    dropped = 0
    for i in range(n):
        if limit and len(idx) >= limit:
            break
        syn = origins[i] == "synthetic"
        if syn and not keep_synthetic:
            dropped += 1
            continue
        if rejected is not None and not rejected[i]:
            raise ValueError(f"{where}row {i} (id {ids[i]}): empty 'rejected'")
        idx.append(i)
        synthetic.append(syn)
    return idx, synthetic, dropped


def tokenized_rows(
    data: DataSection, split: str, rows, idx: list[int], manifest: dict[str, Any], tok,
    system_prompt: str | None, max_length: int, quiet: bool = False,
) -> tuple[list[TokenizedPair], dict[str, Any] | None]:  # fmt: skip
    """``tokenize_pair`` of ``rows[idx]`` through the token cache (``onbrand.training.token_cache``):
    SFT, DPO and the reward model tokenise a split the same way, so the first stage's ids are reused.
    Returns (pairs, {"key", "hit"}); no cache entry for an empty selection."""
    if not idx:
        return [], None
    where = f"{data.snapshot}/{split}.parquet: "
    key = token_cache.cache_key(
        snapshot_id=manifest.get("snapshot_id"), split=split, split_file=Path(data.snapshot) / f"{split}.parquet",
        rows=idx, tok=tok, system_prompt=system_prompt, max_length=max_length,
    )  # fmt: skip

    def tokenize() -> list[TokenizedPair]:
        return [tokenize_pair(tok, rows[i], system_prompt, max_length, where=where) for i in idx]

    return token_cache.get_or_tokenize(key, tokenize, what=f"{data.snapshot}/{split}", quiet=quiet)


def load_pairs(
    data: DataSection,
    tok,
    system_prompt: str | None,
    max_length: int,
    need_rejected: bool = True,
    stats: dict[str, Any] | None = None,
    tokens: dict[str, Any] | None = None,
    quiet: bool = False,
) -> tuple[list[TokenizedPair], list[TokenizedPair], dict[str, Any]]:
    """Snapshot -> tokenized (train_split, eval_split) pairs (+ manifest). Errors name the file and row.

    Synthetic records (``origin: "synthetic"``) of the train split are kept with
    ``weight = data.synthetic_weight`` or, with ``data.synthetic: exclude``, dropped; in the eval
    split they are always dropped (held-out metrics are on human judgements). ``stats`` (when
    given) gets ``{split: {"synthetic": kept, "synthetic_dropped": dropped}}``; ``tokens`` gets
    ``{split: {"key", "hit"}}`` of the token cache. ``quiet``: no log lines (non-main ranks).
    """
    dd, manifest = load_snapshot(data.snapshot)
    out = {}
    for split, limit in ((data.train_split, data.max_train_pairs), (data.eval_split, data.max_eval_pairs)):
        if split not in dd:
            out[split] = []
            continue
        rows = dd[split]
        idx, synthetic, dropped = select_rows(
            rows, split, data, limit, need_rejected, where=f"{data.snapshot}/{split}.parquet: "
        )
        pairs, info = tokenized_rows(data, split, rows, idx, manifest, tok, system_prompt, max_length, quiet)
        for pair, syn in zip(pairs, synthetic):
            if syn:
                pair.synthetic, pair.weight = True, data.synthetic_weight
        out[split] = pairs
        if tokens is not None and info is not None:
            tokens[split] = info
        if stats is not None:
            stats[split] = {"synthetic": sum(synthetic), "synthetic_dropped": dropped}
    if not out[data.train_split]:
        raise ValueError(f"{data.snapshot}: no training pairs in split {data.train_split!r}")
    return out[data.train_split], out[data.eval_split], manifest


def synthetic_note(data: DataSection, stats: dict[str, Any]) -> str | None:
    """One log line on the synthetic pairs used or dropped (None when the snapshot has none)."""
    parts = []
    for split, st in stats.items():
        if st["synthetic"]:
            parts.append(f"{split}: {st['synthetic']} synthetic pairs (weight {data.synthetic_weight:g})")
        if st["synthetic_dropped"]:
            why = "data.synthetic=exclude" if split == data.train_split else "held-out is human only"
            parts.append(f"{split}: {st['synthetic_dropped']} synthetic pairs dropped ({why})")
    return "data: " + "; ".join(parts) if parts else None


class WeightedMean:
    """Per-pair loss weights (``TokenizedPair.weight``) as an exact weighted mean over the global batch.

    The loop sums micro-batch losses scaled by their share of pairs and DDP averages the ranks, so
    a micro-batch returning ``sum(w * loss) * per_rank * world / (len(micro) * W)``, with ``W`` the
    global batch's weight sum (``begin_step``), makes the step loss ``sum(w * loss) / W``: weight-0
    pairs count as absent. Inactive (every weight 1: no synthetic pair, or weight 1) the recipes
    keep their plain mean, bit for bit.
    """

    def __init__(self, pairs: list[TokenizedPair]):
        self.active = any(p.weight != 1.0 for p in pairs)
        self.scale: float | None = None

    def begin_step(self, mine: list[TokenizedPair], world: int, reduce_sum) -> None:
        if self.active:
            total = reduce_sum(float(sum(p.weight for p in mine)))
            self.scale = len(mine) * world / total if total > 0 else 0.0

    def weights(self, pairs: list[TokenizedPair], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor([p.weight for p in pairs], dtype=like.dtype, device=like.device)

    def __call__(self, per_pair: torch.Tensor, pairs: list[TokenizedPair]) -> torch.Tensor:
        """The micro-batch loss of (B,) per-pair losses (a plain mean when inactive or outside a step)."""
        if not self.active or self.scale is None:
            return per_pair.mean()
        return (self.weights(pairs, per_pair) * per_pair).sum() * (self.scale / len(pairs))


class PackedModel(torch.nn.Module):
    """Forward over a :class:`PackedBatch`.

    ``mode="logps"``: returns (M,) fp32 log-probs of ``batch.targets`` at ``batch.src_index``.
    ``mode="score"``: returns (S,) scores ``score(h_last)`` of each sequence's last token.
    """

    def __init__(self, model, mode: str = "logps", chunk_budget_mb: float = 128.0):
        super().__init__()
        self.model = model
        self.mode = mode
        self.chunk_budget_mb = chunk_budget_mb

    def hidden(self, batch: PackedBatch) -> torch.Tensor:
        out = backbone(self.model)(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
        return out.last_hidden_state.flatten(0, 1)  # (R * L, H)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        h = self.hidden(batch)
        if self.mode == "score":
            head = self.model.get_base_model().score
            return head(h[batch.last_index]).squeeze(-1).float()  # (S,)

        weight = self.model.get_output_embeddings().weight  # (V, H), frozen (tied to the embeddings)
        return fused_linear_logprobs(
            h[batch.src_index], weight, batch.targets, memory_budget_mb=self.chunk_budget_mb
        )  # (M,)


def sequence_logps(token_logps: torch.Tensor, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) token log-probs -> chosen (B,), rejected (B,) summed log-probs."""
    sums = token_logps.new_zeros(batch.num_sequences).index_add(0, batch.seq_id, token_logps)
    return sums[0::2], sums[1::2]


def pack(pairs: list[TokenizedPair], tok, cfg_train, shared_prefix: bool, device) -> PackedBatch:
    return collate(pairs, cfg_train.max_tokens_per_row, shared_prefix, tok.pad_token_id).to(device)


def data_tokens(pairs: list[TokenizedPair]) -> int:
    """Non-pad tokens of the sequences a step trains on, counted as TRL does for the same data:
    ``prompt + chosen`` and ``prompt + rejected`` (so tokens/s compare across implementations even
    though shared-prefix packing computes the prompt once)."""
    return sum(
        len(p.prompt) + len(p.chosen) + ((len(p.prompt) + len(p.rejected)) if p.rejected else 0)
        for p in pairs
    )


def save_adapter(model, out: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Atomic PEFT ``save_pretrained`` (temp dir renamed into place) of the trained adapter only
    (a frozen parent stacked under it, see ``onbrand.training.lora``, is not saved again).
    ``state_dict``: the gathered trainable parameters when the model is FSDP-sharded."""

    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), selected_adapters=[TRAINED], state_dict=state_dict)


def save_stage_and_adapter(
    peft_model,
    parent_adapter,
    stage_dir: Path,
    adapter_dir: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """``stage_dir``: the trained adapter alone (relative to the parent-merged weights);
    ``adapter_dir``: ONE LoRA on the original base, parent (+) stage concatenated exactly, or a copy
    of the stage when there is no parent."""
    save_adapter(peft_model, stage_dir, state_dict)
    if parent_adapter is not None:
        concat_lora_adapters(parent_adapter, stage_dir, adapter_dir)
    else:
        with atomic_dir(adapter_dir) as tmp:
            shutil.copytree(stage_dir, tmp, dirs_exist_ok=True)


def parent_of(init_from: str | None) -> tuple[dict[str, Any] | None, Path | None]:
    """The parent run's run.json and its FINAL adapter dir (relative to the original base)."""
    if not init_from:
        return None, None
    return load_run(init_from), final_adapter(init_from)


@dataclass
class RunSetup:
    """Everything a recipe needs before building its model (see :func:`setup_run`)."""

    acc: Any
    out: Path
    tok: Any
    system_prompt: str | None
    train: list[TokenizedPair]
    held_out: list[TokenizedPair]  # data.eval_split (dev by default), for the held-out metrics
    manifest: dict[str, Any]
    tokenization: dict[str, Any]
    base_model: str
    parent_adapter: Path | None
    lineage_hash: str  # base model hash + merged parent adapter


def setup_run(kind: str, cfg, need_rejected: bool = True) -> RunSetup:
    """Seed, accelerator, tokenizer, brand system prompt, tokenized data; write run.json."""

    seed_everything(cfg.train.seed, cfg.train.threads)
    acc = make_accelerator()
    # Resolved once: the run's config, the reference cache key and autocast all see the real one.
    cfg.train.precision = resolve_precision(cfg.train.precision, acc.device)
    out = Path(cfg.out_dir)
    parent, parent_adapter = parent_of(getattr(cfg, "init_from", None))
    base_name = parent["base_model"] if parent else cfg.model
    tok = load_tokenizer(base_name)
    system_prompt, brand = brand_prompt(cfg.data.brand)
    synthetic: dict[str, Any] = {}
    tokens: dict[str, Any] = {}

    def load(quiet: bool):
        return load_pairs(
            cfg.data, tok, system_prompt, cfg.train.max_length, need_rejected, synthetic, tokens, quiet
        )

    # The main process tokenises and fills the token cache; the other ranks then read it.
    shared = token_cache.default_dir() is not None
    if acc.is_main_process or not shared:
        train, held_out, manifest = load(quiet=not acc.is_main_process)
    acc.wait_for_everyone()
    if shared and not acc.is_main_process:
        train, held_out, manifest = load(quiet=True)
    note = synthetic_note(cfg.data, synthetic)
    if note and acc.is_main_process:
        print(note, file=sys.stderr)
    tokenization = tokenizer_record(tok, system_prompt, cfg.train.max_length)
    base_hash = model_hash(base_name)
    lineage = sha256_json([base_hash, hash_tree(parent_adapter) if parent_adapter else None])
    if acc.is_main_process:
        init_run_dir(
            out, kind, cfg, base_model=base_name, base_model_hash=base_hash,
            parent_run=str(cfg.init_from) if getattr(cfg, "init_from", None) else None,
            snapshot_id=manifest.get("snapshot_id"), brand=brand, system_prompt=system_prompt,
            tokenization=tokenization,
            extra={
                "world_size": acc.num_processes, "train_pairs": len(train), "eval_pairs": len(held_out),
                "token_cache": tokens,  # {split: {"key", "hit"}}: the token ids' cache entry
                # Lineage of the data: which records this run learned from (the eval's judge check).
                "data": {
                    "snapshot_id": manifest.get("snapshot_id"), "split": cfg.data.train_split,
                    "eval_split": cfg.data.eval_split, "record_ids": sorted(p.id for p in train),
                    "synthetic": {"mode": cfg.data.synthetic, "weight": cfg.data.synthetic_weight, **synthetic},
                },
            },
        )  # fmt: skip
    acc.wait_for_everyone()
    return RunSetup(
        acc,
        out,
        tok,
        system_prompt,
        train,
        held_out,
        manifest,
        tokenization,
        base_name,
        parent_adapter,
        lineage,
    )


def train_pairs(run: RunSetup, cfg, model, wrapped, step_fn) -> LoopResult | None:
    """:func:`~onbrand.training.loop.run_loop` over ``run.train`` with the recipe's ``cfg.train``.

    Returns ``None`` (after saying how to resume) when ``train.stop_after`` stopped the run early."""
    result = run_loop(
        run.acc, model, wrapped, run.train, cfg.train, run.out, step_fn, run_name=run.out.name,
        config_dict=to_dict(cfg), tokens_of=data_tokens,
        lineage={"snapshot_id": run.manifest.get("snapshot_id"), "model": run.lineage_hash},
    )  # fmt: skip
    if result.stopped_early:
        print(
            f"stopped after step {result.steps} (train.stop_after); rerun the same command to resume",
            file=sys.stderr,
        )
        return None
    return result


def finish_run(out: Path, kind: str, peft_model, parent_adapter, metrics: dict[str, Any], result, extra=None):
    """Save stage_adapter/ and adapter/ (concatenated with the parent's), eval.json, run.json."""
    gathered = getattr(result, "trainable", None)  # FSDP: PackedModel names -> the PEFT model's
    gathered = {k.removeprefix("model."): v for k, v in gathered.items()} if gathered is not None else None
    save_stage_and_adapter(peft_model, parent_adapter, out / "stage_adapter", out / "adapter", gathered)
    final = {"steps": result.steps, "train_seconds": round(result.seconds, 2), **(extra or {})}
    final.update(result.last_metrics)
    atomic_write_json(out / "eval.json", metrics)
    update_run(out, final=final, eval=metrics)
    summary = ", ".join(
        f"{k.removeprefix('eval/')} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)
    )
    print(f"{kind}: {result.steps} steps in {result.seconds:.1f}s; held-out: {summary or 'n/a'} -> {out}")
