"""Run directories and their lineage, the one owner of how a run is written, read and traced.

Layout (docs/architecture.md)::

    <run>/run.json  <run>/config.yaml  <run>/metrics.jsonl  <run>/checkpoints/step-N/
    <run>/adapter/  <run>/stage_adapter/  <run>/eval.json

``run.json["parent_run"]`` names the run a stage started from (the SFT run under DPO). It is a path
as written when the run was made; :func:`parent_dir` resolves it the same way for training, eval and
export: as written (relative to the working directory), relative to the run's folder or its parent,
or a sibling of the run with the same name (runs moved together); ``.../adapter`` means its run.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from onbrand.artifacts import (
    atomic_write_json,
    atomic_write_text,
    environment_record,
    read_json,
    sha256_bytes,
)
from onbrand.config import dump_yaml

RUN_JSON = "run.json"
REQUIRED = ("kind", "run_id", "base_model")
MAX_DEPTH = 16  # parent_run links followed at most


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
    """``run.json`` of a run directory (a clear error when it is not one)."""
    path = Path(run_dir) / RUN_JSON
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a training run directory (no {RUN_JSON})")
    return read_json(path)


@dataclass(frozen=True)
class Run:
    """One stage of a lineage: its directory, ``run.json`` and resolved ``config.yaml``."""

    dir: Path
    run: dict[str, Any]
    config: dict[str, Any]


def read_run(run_dir: str | Path, strict: bool = True) -> Run:
    """A run with its config loaded (and, when ``strict``, its required fields checked)."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    missing = [k for k in REQUIRED if not run.get(k)]
    if strict and missing:
        raise ValueError(f"{run_dir / RUN_JSON}: missing required field(s) {', '.join(missing)}")
    cfg_path = run_dir / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    return Run(run_dir, run, cfg or {})


def run_dir_of(ref: str | Path, child: Path | None = None) -> Path | None:
    """The run directory ``ref`` names (see the module doc for where it is looked for), or None."""
    ref = Path(ref)
    cands = [ref]
    if child is not None:
        cands += [child.parent / ref, child / ref, child.parent / ref.name]
    for cand in cands:
        for d in (cand, cand.parent if cand.name == "adapter" else None):
            if d is not None and (d / RUN_JSON).exists():
                return d
    return None


def parent_dir(run_dir: str | Path, run: dict[str, Any] | None = None) -> Path | None:
    """The parent run's directory, None for a first stage; FileNotFoundError when it is missing."""
    run_dir = Path(run_dir)
    parent = (run if run is not None else load_run(run_dir)).get("parent_run")
    if not parent:
        return None
    found = run_dir_of(parent, run_dir)
    if found is None:
        raise FileNotFoundError(f"{run_dir / RUN_JSON}: parent_run {parent!r} not found as a run directory")
    return found


def run_chain(run_dir: str | Path) -> tuple[list[Run], list[str]]:
    """``([run, its parent, ...], [parents not found])`` from ``run_dir`` up its parent links
    (stops at a cycle or after ``MAX_DEPTH``); ``([], [run_dir])`` when it is not a run."""
    cur = run_dir_of(run_dir)
    if cur is None:
        return [], [str(run_dir)]
    chain: list[Run] = []
    missing: list[str] = []
    seen: set[Path] = set()
    while cur is not None and cur.resolve() not in seen and len(chain) < MAX_DEPTH:
        seen.add(cur.resolve())
        chain.append(read_run(cur, strict=False))
        try:
            cur = parent_dir(cur, chain[-1].run)
        except FileNotFoundError:
            missing.append(str(chain[-1].run["parent_run"]))
            cur = None
    return chain, missing


def lineage(run_dir: str | Path) -> list[Run]:
    """Stages from the first (closest to the base) to ``run_dir``; errors on a missing parent or a cycle."""
    run_dir = Path(run_dir)
    chain: list[Run] = []
    seen: set[Path] = set()
    cur: Path | None = run_dir
    while cur is not None:
        if cur.resolve() in seen:
            raise ValueError(f"{run_dir}: parent_run forms a cycle")
        seen.add(cur.resolve())
        chain.insert(0, read_run(cur))
        cur = parent_dir(cur, chain[0].run)
    return chain


def final_adapter(run_dir: str | Path) -> Path:
    """``<run>/adapter``: the run's adapter relative to the original base (training concatenates)."""
    adapter = Path(run_dir) / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"{run_dir}: run has no adapter/ (did it finish?)")
    return adapter


def adapter_chain(stages: list[Run]) -> list[Path]:
    """Adapters to apply to the base in order: ``<run>/adapter`` when it is there, otherwise the
    parent's chain + ``stage_adapter``."""
    last = stages[-1].dir
    if (last / "adapter" / "adapter_config.json").exists():
        return [last / "adapter"]
    if len(stages) > 1 and (last / "stage_adapter" / "adapter_config.json").exists():
        return adapter_chain(stages[:-1]) + [last / "stage_adapter"]
    raise FileNotFoundError(f"{last}: no adapter/ (or stage_adapter/ with a parent run) to export")
