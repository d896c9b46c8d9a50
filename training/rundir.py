"""Run directories: ``run.json`` (lineage), ``config.yaml`` (resolved config), ``metrics.jsonl``.

Layout (docs/architecture.md)::

    <run>/run.json  <run>/config.yaml  <run>/metrics.jsonl  <run>/checkpoints/step-N/
    <run>/adapter/  <run>/stage_adapter/  <run>/eval.json
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from onbrand.config import dump_yaml
from onbrand.runs import atomic_write_json, atomic_write_text, environment_record, read_json, sha256_bytes

RUN_JSON = "run.json"


def tokenizer_record(tok, system_prompt: str | None, max_length: int) -> dict[str, Any]:
    """What decides the token ids (part of the reference-cache key and of run.json)."""
    template = getattr(tok, "chat_template", None) or ""
    return {
        "tokenizer": type(tok).__name__,
        "vocab_size": len(tok),
        "chat_template_sha256": sha256_bytes(template.encode()),
        "system_prompt_sha256": sha256_bytes((system_prompt or "").encode()),
        "max_length": max_length,
        "format": "trl-conversational-v1",
    }


def init_run_dir(
    out_dir: str | Path,
    kind: str,
    cfg: Any,
    *,
    base_model: str,
    base_model_hash: str,
    parent_run: str | None,
    snapshot_id: str | None,
    brand: dict[str, Any] | None,
    system_prompt: str | None,
    tokenization: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``run.json`` and ``config.yaml``; keep the run id of an existing run (resume)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = read_json(out / RUN_JSON) if (out / RUN_JSON).exists() else {}
    record = {
        "kind": kind,
        "run_id": old.get("run_id") or f"{kind}-{uuid.uuid4().hex[:12]}",
        "base_model": base_model,
        "base_model_hash": base_model_hash,
        "parent_run": parent_run,
        "snapshot_id": snapshot_id,
        "brand": brand,
        "system_prompt": system_prompt,
        "tokenization": tokenization,
        "environment": environment_record(),
        **(extra or {}),
    }
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    atomic_write_json(out / RUN_JSON, record)
    return record


def update_run(out_dir: str | Path, **fields: Any) -> dict[str, Any]:
    path = Path(out_dir) / RUN_JSON
    record = read_json(path)
    record.update(fields)
    atomic_write_json(path, record)
    return record


def load_run(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_JSON
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a training run directory (no {RUN_JSON})")
    return read_json(path)
