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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from onbrand.training.batching import PackedBatch, TokenizedPair, collate, tokenize_pair
from onbrand.training.lora import backbone


@dataclass
class DataSection:
    """Where the data and the brand come from (shared by every recipe)."""

    snapshot: str = "runs/demo/snapshot"
    brand: str | None = "configs/brands/aurora.yaml"  # its system_prompt() heads every prompt
    max_train_pairs: int = 0  # 0 = all
    max_test_pairs: int = 0


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
    from onbrand.data.brand import brand_sha256, load_brand

    card = load_brand(path)
    return card.system_prompt(), {"path": str(path), "sha256": brand_sha256(path)}


def load_pairs(
    data: DataSection, tok, system_prompt: str | None, max_length: int, need_rejected: bool = True
) -> tuple[list[TokenizedPair], list[TokenizedPair], dict[str, Any]]:
    """Snapshot -> tokenized train/test pairs (+ manifest). Errors name the file and row."""
    from onbrand.data.snapshot import load_snapshot

    dd, manifest = load_snapshot(data.snapshot)
    out = {}
    for split, limit in (("train", data.max_train_pairs), ("test", data.max_test_pairs)):
        if split not in dd:
            out[split] = []
            continue
        rows = dd[split]
        n = len(rows) if not limit else min(limit, len(rows))
        pairs = []
        for i in range(n):
            rec = rows[i]
            if need_rejected and not rec.get("rejected"):
                raise ValueError(
                    f"{data.snapshot}/{split}.parquet: row {i} (id {rec.get('id')}): empty 'rejected'"
                )
            pairs.append(
                tokenize_pair(tok, rec, system_prompt, max_length, where=f"{data.snapshot}/{split}.parquet: ")
            )
        out[split] = pairs
    if not out["train"]:
        raise ValueError(f"{data.snapshot}: no training pairs")
    return out["train"], out["test"], manifest


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
        from onbrand.kernels import fused_linear_logprobs

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


def real_tokens(pairs: list[TokenizedPair], shared_prefix: bool = True) -> int:
    """Tokens a step really computes on: shared-prefix counts the prompt once."""
    if shared_prefix:
        return sum(len(p) for p in pairs)
    return sum(len(p) + (len(p.prompt) if p.rejected else 0) for p in pairs)


def save_adapter(model, out: Path) -> None:
    """Atomic PEFT ``save_pretrained`` (temp dir renamed into place)."""
    from onbrand.runs import atomic_dir

    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))


def parent_of(init_from: str | None) -> tuple[dict[str, Any] | None, Path | None]:
    """The parent run's run.json and its FINAL adapter dir (relative to the original base)."""
    if not init_from:
        return None, None
    from onbrand.training.rundir import load_run

    run = load_run(init_from)
    adapter = Path(init_from) / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"{init_from}: run has no adapter/ (did it finish?)")
    return run, adapter
