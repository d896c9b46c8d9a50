"""Reference log-probs computed once and cached on disk.

The key is a hash of everything that decides the numbers: the data snapshot id, the model hash
(base + parent adapter, merged or stacked), the base's quantization, the tokenization record
(template, system prompt, max_length), the precision and the record ids in order. The file
``<dir>/<key>.safetensors`` holds ``chosen`` and ``rejected`` (N,) fp32 tensors and, in its
metadata, the full key JSON. On load the stored key is compared with the expected one: any
difference (stale or foreign file) is reported and the cache is recomputed, never silently reused.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from onbrand.artifacts import sha256_json

FORMAT = "onbrand-ref-logps-v1"


def cache_key(**fields: Any) -> dict[str, Any]:
    return {"format": FORMAT, **fields}


def cache_path(cache_dir: str | Path, key: dict[str, Any]) -> Path:
    return Path(cache_dir) / f"{sha256_json(key)[:32]}.safetensors"


def load(path: Path, key: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (chosen, rejected) for ``key``, None when missing; stale files are reported."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            stored = json.loads(meta.get("key", "null"))
            chosen, rejected = f.get_tensor("chosen"), f.get_tensor("rejected")
    except Exception as e:  # noqa: BLE001 - a truncated/corrupt file is treated as stale
        print(f"ref-cache: {path} unreadable ({type(e).__name__}); recomputing", file=sys.stderr)
        return None
    if stored != key:
        diff = sorted(k for k in set(key) | set(stored or {}) if (stored or {}).get(k) != key.get(k))
        print(f"ref-cache: {path} is stale (differs in {', '.join(diff)}); recomputing", file=sys.stderr)
        return None
    if chosen.shape[0] != len(key["ids"]):
        print(
            f"ref-cache: {path} has {chosen.shape[0]} rows for {len(key['ids'])} ids; recomputing",
            file=sys.stderr,
        )
        return None
    return chosen, rejected


def get_or_compute(
    cache_dir: str | Path | None,
    key: dict[str, Any],
    compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Return (chosen (N,), rejected (N,), hit). ``cache_dir=None`` disables the disk cache."""
    if cache_dir is not None:
        path = cache_path(cache_dir, key)
        got = load(path, key)
        if got is not None:
            return got[0], got[1], True
    chosen, rejected = compute()
    chosen, rejected = (
        chosen.detach().float().cpu().contiguous(),
        rejected.detach().float().cpu().contiguous(),
    )
    if cache_dir is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"chosen": chosen, "rejected": rejected}, str(tmp), metadata={"key": json.dumps(key)})
        tmp.replace(path)  # atomic: a reader never sees half a file
    return chosen, rejected, False
