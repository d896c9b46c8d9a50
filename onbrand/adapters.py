"""Exact algebra on PEFT LoRA adapters: fold a stack of adapters into ONE adapter on the original base.

A DPO run initialised from an SFT run trains a fresh LoRA ``A2`` on the SFT-merged weights
``W1 = W + s1·B1A1``. Serving needs one LoRA relative to ``W`` (vLLM applies one adapter per
request), and the identity it relies on is, per targeted module (``x`` of shape (..., in)):

    W + s1·B1A1 + s2·B2A2 = W + [s1·B1, s2·B2] · [A1; A2]        B: (out, r), A: (r, in)

so the concatenated adapter has rank ``R = r1 + r2``, ``A = cat([A1, A2], dim=0)`` of shape (R, in),
``B = cat([s1·B1, s2·B2], dim=1)`` of shape (out, R), and ``lora_alpha = R`` (scaling exactly 1,
rslora off). The per-adapter scalings ``s = alpha / r`` (``alpha / sqrt(r)`` with rslora, per-module
``rank_pattern`` / ``alpha_pattern`` honoured) are folded into ``B``. A module that only one adapter
targets, or whose rank is below ``R``, is zero-padded to ``R``: zero rows of ``A`` and zero columns of
``B`` add exactly nothing, and one uniform rank keeps the adapter servable by vLLM (which has no
per-module ranks).

Hand-written because PEFT's ``add_weighted_adapter(combination_type="cat")`` combines adapters that
are all relative to the SAME base and keeps per-adapter alpha semantics; it neither handles the
stacked case (A2 relative to W + s1·B1A1) as a file-to-file transform nor different target sets with
rslora exactly.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from onbrand.artifacts import atomic_dir, atomic_write_json

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LEGACY_WEIGHTS_FILE = "adapter_model.bin"
LINEAGE_FILE = "onbrand_concat.json"
PREFIX = "base_model.model."
# (A suffix, B suffix) of the LoRA factor pairs PEFT saves; embeddings use the second form.
PAIR_SUFFIXES = ((".lora_A.weight", ".lora_B.weight"), (".lora_embedding_A", ".lora_embedding_B"))
# Config features the concatenation cannot represent exactly: they must be off/empty in both inputs.
UNSUPPORTED = (
    "modules_to_save",
    "use_dora",
    "lora_bias",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "megatron_config",
    "use_qalora",
    "alora_invocation_tokens",
    "use_bdlora",
)


class AdapterError(ValueError):
    """An adapter cannot be read or combined; the message names the file and the field."""


def read_adapter(adapter_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(adapter_config dict, {tensor name: tensor})`` of a saved PEFT LoRA adapter.

    Only safetensors, or a legacy ``.bin`` through ``torch.load(weights_only=True)``.
    """
    import torch
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / CONFIG_FILE
    if not cfg_path.exists():
        raise AdapterError(f"{adapter_dir}: not a PEFT adapter (no {CONFIG_FILE})")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AdapterError(f"{cfg_path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if cfg.get("peft_type") != "LORA":
        raise AdapterError(
            f"{cfg_path}: peft_type: only LORA adapters are supported, got {cfg.get('peft_type')!r}"
        )
    if (adapter_dir / WEIGHTS_FILE).exists():
        weights = load_file(adapter_dir / WEIGHTS_FILE)
    elif (adapter_dir / LEGACY_WEIGHTS_FILE).exists():
        weights = torch.load(adapter_dir / LEGACY_WEIGHTS_FILE, map_location="cpu", weights_only=True)
    else:
        raise AdapterError(f"{adapter_dir}: no {WEIGHTS_FILE} (or {LEGACY_WEIGHTS_FILE})")
    return cfg, weights


def check_supported(cfg: dict[str, Any], where: str) -> None:
    """Raise ``AdapterError`` naming the field when ``cfg`` uses a feature concat cannot keep exact."""
    for key in UNSUPPORTED:
        value = cfg.get(key)
        if value not in (None, False, [], {}, ()):
            raise AdapterError(
                f"{where}: {key}={value!r} is not supported when concatenating LoRA adapters "
                f"(only plain LoRA factors can be stacked exactly); retrain without {key}"
            )
    if cfg.get("bias", "none") != "none":
        raise AdapterError(f"{where}: bias={cfg['bias']!r} is not supported; only bias='none'")


def module_factors(weights: dict[str, Any], where: str) -> dict[str, tuple[str, Any, Any]]:
    """``{module name: (A key suffix, A (r, in), B (out, r))}``; any other tensor is an error."""
    out: dict[str, tuple[str, Any, Any]] = {}
    used = set()
    for key in weights:
        for a_suf, b_suf in PAIR_SUFFIXES:
            if key.endswith(a_suf):
                module = key[: -len(a_suf)]
                b_key = module + b_suf
                if b_key not in weights:
                    raise AdapterError(f"{where}: {key} has no matching {b_key}")
                name = module[len(PREFIX) :] if module.startswith(PREFIX) else module
                out[name] = (a_suf, weights[key], weights[b_key])
                used.update((key, b_key))
    extra = sorted(set(weights) - used)
    if extra:
        raise AdapterError(
            f"{where}: tensors that are not LoRA A/B factors cannot be concatenated: {extra[:5]}"
            + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else "")
        )
    if not out:
        raise AdapterError(f"{where}: no LoRA factors found")
    return out


def module_scaling(cfg: dict[str, Any], module: str, rank: int) -> float:
    """PEFT's scaling for ``module``: ``alpha / r`` or ``alpha / sqrt(r)`` (rslora), patterns honoured."""
    alpha = cfg.get("lora_alpha", 8)
    patterns = cfg.get("alpha_pattern") or {}
    for key in patterns:  # same rule as peft.utils.other.get_pattern_key
        if re.match(rf"(.*\.)?({key})$", module):
            alpha = patterns[key]
            break
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def exact_targets_regex(modules: list[str]) -> str:
    r"""A full-match regex for exactly ``modules``, compact: layer indices grouped per module path.

    ``["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]`` ->
    ``model\.layers\.(?:0|1)\.mlp\.down_proj``.
    """
    groups: dict[tuple[str, str], set[int]] = {}
    literals = []
    for name in sorted(modules):
        m = re.search(r"\.(\d+)\.", name)
        if m is None:
            literals.append(re.escape(name))
        else:
            groups.setdefault((name[: m.start()], name[m.end() :]), set()).add(int(m.group(1)))
    parts = [
        rf"{re.escape(head)}\.(?:{'|'.join(map(str, sorted(idx)))})\.{re.escape(tail)}"
        for (head, tail), idx in groups.items()
    ]
    return "|".join(parts + literals)


def union_targets(p_cfg: dict[str, Any], c_cfg: dict[str, Any], modules: list[str]) -> list[str] | str:
    """``target_modules`` of the result: the union of two plain name lists when that is exact, else
    a regex of exactly the modules that carry factors (layer subsets, exclusions, regex targets)."""
    a, b = p_cfg.get("target_modules") or [], c_cfg.get("target_modules") or []
    plain = all(
        isinstance(c.get("target_modules"), (list, tuple))
        and not c.get("layers_to_transform")
        and not c.get("exclude_modules")
        for c in (p_cfg, c_cfg)
    )
    if plain:
        return sorted(set(a) | set(b))
    return exact_targets_regex(modules)


def concat_factors(
    parent: dict[str, tuple[str, Any, Any]],
    child: dict[str, tuple[str, Any, Any]],
    parent_cfg: dict[str, Any],
    child_cfg: dict[str, Any],
) -> tuple[dict[str, Any], int]:
    """Stack factors per module (scalings folded into B, zero-padded to one rank R).

    Returns ``({saved tensor name: tensor}, R)``; tensors are float32, computed in float64.
    """
    import torch

    stacked: dict[str, tuple[str, Any, Any]] = {}
    for module in sorted(set(parent) | set(child)):
        parts_a, parts_b, suffix = [], [], None
        for cfg, factors in ((parent_cfg, parent), (child_cfg, child)):
            if module not in factors:
                continue
            suf, a, b = factors[module]
            if suffix not in (None, suf):
                raise AdapterError(f"{module}: adapters disagree on the layer type ({suffix} vs {suf})")
            suffix = suf
            a64, b64 = a.to(torch.float64), b.to(torch.float64)
            # Embedding factors are stored transposed: A (r, num_embeddings), B (dim, r); rank is
            # dim 0 of A and dim 1 of B either way.
            parts_a.append(a64)
            parts_b.append(b64 * module_scaling(cfg, module, a64.shape[0]))
        stacked[module] = (suffix, torch.cat(parts_a, dim=0), torch.cat(parts_b, dim=1))
    rank = max(a.shape[0] for _, a, _ in stacked.values())
    tensors = {}
    a_to_b = dict(PAIR_SUFFIXES)
    for module, (suffix, a, b) in stacked.items():
        pad = rank - a.shape[0]
        if pad:
            a = torch.cat([a, a.new_zeros((pad, *a.shape[1:]))], dim=0)
            b = torch.cat([b, b.new_zeros((b.shape[0], pad, *b.shape[2:]))], dim=1)
        tensors[PREFIX + module + suffix] = a.to(torch.float32).contiguous()
        tensors[PREFIX + module + a_to_b[suffix]] = b.to(torch.float32).contiguous()
    return tensors, rank


def _check_same_base(parent: dict[str, tuple], child: dict[str, tuple]) -> None:
    """Modules both adapters target must have factors of the same base shapes."""
    for module in set(parent) & set(child):
        pa, ca = parent[module][1], child[module][1]
        pb, cb = parent[module][2], child[module][2]
        if pa.shape[1:] != ca.shape[1:] or pb.shape[0] != cb.shape[0]:
            raise AdapterError(
                f"{module}: shapes differ (parent A {tuple(pa.shape)}, B {tuple(pb.shape)}; child A "
                f"{tuple(ca.shape)}, B {tuple(cb.shape)}): the adapters are for different base models"
            )


def _concat_config(
    p_cfg: dict[str, Any], c_cfg: dict[str, Any], rank: int, modules: list[str]
) -> dict[str, Any]:
    """adapter_config.json of the concatenated adapter: the parent's, rank ``rank`` at scaling 1."""
    cfg = dict(p_cfg)
    cfg.update(
        r=rank,
        lora_alpha=rank,  # scaling = alpha / r = 1: the per-adapter scalings live in B
        use_rslora=False,
        rank_pattern={},
        alpha_pattern={},
        target_modules=union_targets(p_cfg, c_cfg, modules),
        layers_to_transform=None,  # the target set is explicit now (see union_targets)
        layers_pattern=None,
        exclude_modules=None,
        lora_dropout=max(p_cfg.get("lora_dropout", 0.0), c_cfg.get("lora_dropout", 0.0)),
        inference_mode=True,
    )
    return cfg


def concat_lora_adapters(
    parent_adapter_dir: str | Path, child_adapter_dir: str | Path, out_dir: str | Path
) -> Path:
    """Write ONE PEFT LoRA adapter relative to the parent's base equal to parent-then-child.

    ``parent`` is relative to the base ``W``; ``child`` was trained on ``W + s1·B1A1`` (the parent
    merged). The result (rank ``R = max_m(r1_m + r2_m)``, ``lora_alpha = R``, no rslora) satisfies
    ``W + B·A == merge(merge(W, parent), child)`` for every targeted module, exactly up to fp32
    rounding of the stored factors. Written atomically; returns ``out_dir``.
    """
    from safetensors.torch import save_file

    p_cfg, p_w = read_adapter(parent_adapter_dir)
    c_cfg, c_w = read_adapter(child_adapter_dir)
    check_supported(p_cfg, str(Path(parent_adapter_dir) / CONFIG_FILE))
    check_supported(c_cfg, str(Path(child_adapter_dir) / CONFIG_FILE))
    if bool(p_cfg.get("fan_in_fan_out")) != bool(c_cfg.get("fan_in_fan_out")):
        raise AdapterError(
            f"{child_adapter_dir}: fan_in_fan_out={c_cfg.get('fan_in_fan_out')} differs from the parent's "
            f"({p_cfg.get('fan_in_fan_out')}); the factors' layouts cannot be stacked"
        )
    parent = module_factors(p_w, str(Path(parent_adapter_dir) / WEIGHTS_FILE))
    child = module_factors(c_w, str(Path(child_adapter_dir) / WEIGHTS_FILE))
    _check_same_base(parent, child)
    tensors, rank = concat_factors(parent, child, p_cfg, c_cfg)
    cfg = _concat_config(p_cfg, c_cfg, rank, sorted(set(parent) | set(child)))
    # Lineage goes in a side file: readers of adapter_config.json (PEFT, vLLM) may reject extra keys.
    lineage = {
        "formula": "W + [s1*B1, s2*B2] [A1; A2], lora_alpha = r (scaling 1)",
        "rank": rank,
        "inputs": [
            {
                k: cfg_.get(k)
                for k in ("r", "lora_alpha", "use_rslora", "target_modules", "rank_pattern", "alpha_pattern")
            }
            for cfg_ in (p_cfg, c_cfg)
        ],
    }
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        atomic_write_json(tmp / CONFIG_FILE, cfg)
        atomic_write_json(tmp / LINEAGE_FILE, lineage)
    return Path(out_dir)


def concat_chain(adapter_dirs: list[str | Path], out_dir: str | Path) -> Path:
    """Fold ``[a1, a2, a3, ...]`` (each relative to the previous ones merged) into one adapter."""
    if len(adapter_dirs) < 2:
        raise ValueError(f"concat_chain needs at least two adapters, got {len(adapter_dirs)}")
    import shutil

    out_dir = Path(out_dir)
    acc, scratch = Path(adapter_dirs[0]), []
    try:
        for i, nxt in enumerate(adapter_dirs[1:], start=1):
            last = i == len(adapter_dirs) - 1
            target = out_dir if last else out_dir.parent / f".{out_dir.name}.step{i}"
            scratch += [] if last else [target]
            concat_lora_adapters(acc, nxt, target)
            acc = target
    finally:
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)
    return out_dir
