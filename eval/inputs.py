"""Resolve what ``onbrand eval`` compares: the aligned model (run dir, adapter or merged
checkpoint), its DPO reference and beta, the prompts and held-out pairs, the brand card."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onbrand.artifacts import read_json
from onbrand.data.brand import Exemplar
from onbrand.data.snapshot import load_snapshot
from onbrand.lineage import final_adapter, parent_dir
from onbrand.models import DEFAULT_MODEL


@dataclass
class Aligned:
    """``kind="adapter"``: a LoRA relative to ``base_model``; ``kind="merged"``: a full checkpoint."""

    kind: str
    path: Path
    base_model: str
    reference_adapter: Path | None  # None = the reference is the base model itself
    beta: float
    run: dict[str, Any] | None = None


@dataclass
class PromptSet:
    ids: list[str]
    prompts: list[list[dict[str, str]]]  # without the brand system prompt
    channels: list[str | None]
    pairs: list[dict[str, Any]] = field(default_factory=list)  # records with chosen + rejected
    source: str = ""


def _find_beta(node: Any) -> float | None:
    """``dpo.beta`` (or any nested ``beta``) of a resolved training config."""
    if isinstance(node, dict):
        if isinstance(node.get("dpo"), dict) and "beta" in node["dpo"]:
            return float(node["dpo"]["beta"])
        if "beta" in node and isinstance(node["beta"], (int, float)):
            return float(node["beta"])
        for v in node.values():
            b = _find_beta(v)
            if b is not None:
                return b
    return None


def _parent_adapter(run_dir: Path, run: dict[str, Any]) -> Path | None:
    """The parent run's final adapter (the DPO reference), through the one lineage resolver."""
    try:
        parent = parent_dir(run_dir, run)
        return None if parent is None else final_adapter(parent)
    except FileNotFoundError as e:
        raise ValueError(
            f"{run_dir}/run.json: parent_run {run.get('parent_run')!r} has no adapter/ (needed as the DPO "
            f"reference; {e}); set beta and metrics.implicit=false to skip the implicit reward"
        ) from None


def resolve_aligned(aligned: str, base_model: str, beta: float | None) -> Aligned:
    """A training run dir, a PEFT adapter dir, or a merged checkpoint dir."""
    import yaml

    if not aligned:
        raise ValueError("aligned: required (a training run dir, an adapter dir or a merged checkpoint)")
    path = Path(aligned)
    if not path.exists():
        raise FileNotFoundError(f"aligned model {aligned}: no such directory")
    if (path / "run.json").exists():
        run = read_json(path / "run.json")
        run_base = run.get("base_model") or DEFAULT_MODEL
        if base_model and base_model != run_base:
            raise ValueError(
                f"base_model {base_model!r} differs from {path}/run.json base_model {run_base!r}: the adapter "
                "is relative to the run's base; leave base_model empty or set it to the run's"
            )
        if not (path / "adapter" / "adapter_config.json").exists():
            raise ValueError(f"{path}: training run without a final adapter/ (did the run finish?)")
        cfg_beta = None
        if (path / "config.yaml").exists():
            cfg_beta = _find_beta(yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")))
        return Aligned(
            "adapter",
            path / "adapter",
            run_base,
            _parent_adapter(path, run),
            beta or cfg_beta or 0.1,
            run,
        )
    if (path / "adapter_config.json").exists():
        base = base_model or json.loads((path / "adapter_config.json").read_text()).get(
            "base_model_name_or_path"
        )
        return Aligned("adapter", path, base or DEFAULT_MODEL, None, beta or 0.1)
    if (path / "config.json").exists():
        return Aligned("merged", path, base_model or DEFAULT_MODEL, None, beta or 0.1)
    raise ValueError(
        f"{path}: neither a run dir (run.json), an adapter (adapter_config.json) nor a checkpoint"
    )


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: prompt must be a string or a non-empty list of messages")
    msgs = []
    for m in value:
        if (
            not isinstance(m, dict)
            or m.get("role") not in ("system", "user", "assistant")
            or "content" not in m
        ):
            raise ValueError(
                f"{where}: each message needs role (system|user|assistant) and content, got {m!r}"
            )
        msgs.append({"role": m["role"], "content": str(m["content"])})
    if msgs[-1]["role"] != "user":
        raise ValueError(f"{where}: the prompt must end with a user turn")
    return msgs


def _rows_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict) or "prompt" not in row:
                raise ValueError(f"{path}:{n}: field 'prompt' is missing")
            row["_where"] = f"{path}:{n}"
            rows.append(row)
    return rows


def _rows_snapshot(path: Path, split: str) -> list[dict[str, Any]]:
    ds, _manifest = load_snapshot(path)
    if split not in ds:
        raise ValueError(f"snapshot {path} has no {split!r} split; splits: {sorted(ds)}")
    rows = []
    for i, row in enumerate(ds[split]):
        row = dict(row)
        row["_where"] = f"{path}/{split}.parquet row {i}"
        rows.append(row)
    return rows


def load_prompts(
    snapshot: str | None, prompts: str | None, split: str, max_prompts: int, max_pairs: int
) -> PromptSet:
    """Unique prompts (first ``max_prompts``, in file order) and the held-out pairs."""
    if snapshot:
        rows, source = _rows_snapshot(Path(snapshot), split), f"{snapshot} ({split} split)"
    elif prompts:
        rows, source = _rows_jsonl(Path(prompts)), str(prompts)
    else:
        raise ValueError("set snapshot (a data snapshot dir) or prompts (a JSONL file)")
    if not rows:
        raise ValueError(f"{source}: no prompts")
    out = PromptSet([], [], [], [], source)
    seen = set()
    for row in rows:
        msgs = _messages(row["prompt"], row["_where"])
        key = json.dumps(msgs, sort_keys=True)
        if row.get("chosen") and row.get("rejected") and (not max_pairs or len(out.pairs) < max_pairs):
            out.pairs.append({**row, "prompt": msgs})
        if key in seen or (max_prompts and len(out.prompts) >= max_prompts):
            continue
        seen.add(key)
        out.ids.append(str(row.get("id") or f"p{len(out.ids)}"))
        out.prompts.append(msgs)
        out.channels.append(row.get("channel") or None)
    return out


def train_exemplars(snapshot: str, card, limit: int = 512) -> list:
    """The snapshot's train-split chosen answers as voice exemplars (for a card without exemplars):
    the first ``limit`` by record id, each in its channel when the card has that channel."""

    ds, _manifest = load_snapshot(Path(snapshot))
    if "train" not in ds:
        return []
    known = set(getattr(card, "channels", {}) or {})
    rows = sorted((dict(r) for r in ds["train"]), key=lambda r: str(r.get("id")))
    out = []
    for row in rows:
        text = "".join(
            m["content"] for m in (row.get("chosen") or []) if m.get("role") == "assistant"
        ).strip()
        if text:
            out.append(
                Exemplar(text=text, channel=row.get("channel") if row.get("channel") in known else None)
            )
        if len(out) >= limit:
            break
    return out


def with_system(messages: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """Prepend THE brand system prompt (records never store it); a record's own system message
    follows it in the same system turn."""
    if not system:
        return list(messages)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": system + "\n\n" + messages[0]["content"]}] + list(messages[1:])
    return [{"role": "system", "content": system}] + list(messages)


def general_text_files() -> list[Path]:
    """The shipped held-out general-text set (package data, not brand data)."""
    folder = Path(__file__).resolve().parent / "general_text"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise ValueError(f"{folder}: no general-text files (package data missing)")
    return files
