"""Atomic checkpoints and exact resume.

``<run>/checkpoints/step-N/``: ``trainable.safetensors`` (the LoRA/head parameters), ``optimizer.pt``,
``scheduler.pt``, ``rng.pt`` (torch + python RNG) and ``state.json`` (step, data position). Each is
written into a temp dir renamed into place (``onbrand.artifacts.atomic_dir``), so a kill mid-save never
leaves a complete-looking checkpoint. Loads use ``torch.load(weights_only=True)``.

The data order is a pure function of (seed, epoch), so the step number is the data position.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from onbrand.artifacts import atomic_dir, atomic_write_json, read_json
from onbrand.training.fsdp_cpu import full_tensor, is_sharded, like_param

_STEP = re.compile(r"^step-(\d+)$")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole trainable parameters on CPU (FSDP shards gathered: call it on every rank)."""
    return {
        n: full_tensor(p.detach()).cpu().contiguous().clone()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def _full_optim_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True)


def checkpoint_states(model, optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """FSDP: ``(trainable parameters, optimizer state)`` gathered whole (keyed by parameter name), a
    collective every rank must join before the main process saves; ``None`` when nothing is sharded."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return trainable_state(model), get_optimizer_state_dict(model, optimizer, options=_full_optim_options())


def save_checkpoint(
    run_dir: str | Path, step: int, model, optimizer, scheduler, extra: dict[str, Any], keep: int = 2,
    states: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> Path:  # fmt: skip
    """``states``: :func:`checkpoint_states` (FSDP); otherwise read from ``model`` and ``optimizer``."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    params, optim = states or (trainable_state(model), optimizer.state_dict())
    with atomic_dir(final) as tmp:
        save_file(params, str(tmp / "trainable.safetensors"))
        torch.save(optim, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
        atomic_write_json(tmp / "state.json", {"step": step, **extra})
    # rotate among this config's checkpoints only (another config's are not this run's to delete)
    fp = extra.get("config_fingerprint")
    mine = [p for p in list_checkpoints(run_dir) if _fingerprint_of(p) == fp]
    for old in mine[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


# Keys that do not change the training trajectory: a checkpoint stays resumable when only these differ.
RESUME_IGNORED = ("out_dir", "ref_cache_dir", "ref_cache", "eval_batch_size", "eval_before", "train.resume",
                  "train.stop_after", "train.save_every", "train.keep_checkpoints", "train.log_every",
                  "train.tracking", "train.threads")  # fmt: skip


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_fingerprint(config: dict[str, Any], lineage: dict[str, Any] | None = None) -> str:
    """sha256 over what determines the training trajectory: the config (minus ``RESUME_IGNORED``)
    and the lineage (data snapshot id, base model + parent adapter hash)."""
    flat = {
        k: v
        for k, v in _flatten(config).items()
        if not any(k == i or k.startswith(i + ".") for i in RESUME_IGNORED)
    }
    blob = json.dumps({"config": flat, "lineage": lineage or {}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _fingerprint_of(ckpt: Path) -> str | None:
    state = ckpt / "state.json"
    return read_json(state).get("config_fingerprint") if state.exists() else None


def latest_checkpoint(run_dir: str | Path, fingerprint: str | None = None) -> Path | None:
    """Newest complete checkpoint; with ``fingerprint``, the newest one written by that config (a
    checkpoint of another config, or of other data, must never be resumed into this run)."""
    ckpts = [p for p in list_checkpoints(run_dir) if (p / "state.json").exists()]
    if fingerprint is not None:
        ckpts = [p for p in ckpts if _fingerprint_of(p) == fingerprint]
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore parameters, optimizer, scheduler and RNG in place; return ``state.json``."""
    path = Path(path)
    tensors = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise ValueError(f"{path}: checkpoint has parameters this model lacks: {missing[:3]} ...")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(like_param(value, params[name]))
    optim = torch.load(path / "optimizer.pt", weights_only=True)
    if is_sharded(model):  # saved whole by checkpoint_states; every rank takes its shards
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim, options=_full_optim_options())
    else:
        optimizer.load_state_dict(optim)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    random.setstate(_as_tuple(rng["python"]))
    return read_json(path / "state.json")


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
