"""MODEL_CARD.md for an export: intended use, brand, data, training configs, eval summary, limits.

Every value comes from the run's lineage (run.json / config.yaml of each stage), the snapshot manifest
when it can be found, and the eval report when there is one; nothing is invented.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from onbrand.artifacts import read_json
from onbrand.data.brand import load_brand
from onbrand.lineage import Run


def _find_snapshot_dir(cfg: Any) -> Path | None:
    """A path-valued ``snapshot``/``snapshot_dir``/``data`` key in a run config that holds a manifest."""
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            if isinstance(value, str) and key in ("snapshot", "snapshot_dir", "data", "dataset"):
                if (Path(value) / "manifest.json").exists():
                    return Path(value)
            found = _find_snapshot_dir(value) if isinstance(value, (dict, list)) else None
            if found is not None:
                return found
    if isinstance(cfg, list):
        for value in cfg:
            found = _find_snapshot_dir(value)
            if found is not None:
                return found
    return None


def snapshot_counts(lineage: list[Run]) -> dict[str, Any] | None:
    """Counts per split/channel from the last stage's snapshot manifest (run.json, else config)."""
    for stage in reversed(lineage):
        run = stage.run
        if isinstance(run.get("snapshot_counts"), dict):
            return run["snapshot_counts"]
        snap = _find_snapshot_dir(stage.config)
        if snap is not None:
            manifest = read_json(snap / "manifest.json")
            if run.get("snapshot_id") in (None, manifest.get("snapshot_id")):
                return manifest.get("counts")
    return None


def _flat_numbers(obj: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(obj, dict) and depth < 3:
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append((name, value))
            elif isinstance(value, (str, bool)) and key in ("passed", "verdict", "decision", "winner"):
                out.append((name, value))
            else:
                out += _flat_numbers(value, name, depth + 1)
    return out


def eval_summary(report: dict[str, Any] | None, limit: int = 24) -> str:
    """The eval report's verdict and per-metric rows (onbrand.eval's report.json), else its numbers."""
    if not report:
        return "No eval report was found for this run (looked for `<run>/../eval/report.json`).\n"
    if "excluded" in report:
        return f"No eval report included: {_md_escape(report['excluded'])}.\n"
    rows = report.get("verdict_rows")
    if isinstance(rows, list) and rows:
        lines = [f"{_md_escape(report.get('verdict', ''))}\n", "| metric | base | aligned | detail | better |",
                 "|---|---|---|---|---|"]  # fmt: skip
        for r in rows[:limit]:
            cells = [r.get(k, "") for k in ("metric", "base", "aligned", "delta", "better")]
            lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
        return "\n".join(lines) + "\n\nFull report: `eval/report.json`.\n"
    numbers = _flat_numbers(report.get("summary", report))
    if not numbers:
        return "An eval report is included (`eval/report.json`) but holds no numeric summary.\n"
    lines = ["| metric | value |", "|---|---|"]
    for name, value in numbers[:limit]:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"| `{name}` | {shown} |")
    more = f"\n({len(numbers) - limit} more in `eval/report.json`)\n" if len(numbers) > limit else "\n"
    return "\n".join(lines) + "\n" + more


def counts_md(counts: Any) -> str:
    """Snapshot counts as a table (split, pairs, per channel); raw JSON when the shape is unknown."""
    if not counts:
        return "- counts: not recorded in the run\n"
    splits = {k: v for k, v in counts.items() if isinstance(v, dict)} if isinstance(counts, dict) else {}
    if not splits:
        return f"- counts: `{json.dumps(counts)}`\n"
    lines = ["- counts:\n", "| split | pairs | per channel |", "|---|---|---|"]
    for split, c in splits.items():
        channels = ", ".join(f"{_md_escape(k)} {v}" for k, v in (c.get("channels") or {}).items())
        lines.append(f"| {_md_escape(split)} | {c.get('pairs', c.get('total', '?'))} | {channels} |")
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def brand_name(brand: dict[str, Any]) -> str:
    """The brand card's display name when the card is readable here, else the card file's stem."""
    if brand.get("name"):
        return str(brand["name"])
    path = Path(str(brand.get("path") or "unknown"))
    if path.is_file():
        try:
            return load_brand(path).name
        except (ImportError, ValueError, OSError):
            pass  # a card that no longer loads still leaves its file name as the brand
    return path.stem


def model_card(manifest: dict[str, Any], lineage: list[Run], report: dict | None) -> str:
    brand = manifest.get("brand") or {}
    name = brand_name(brand)
    base = manifest["base_model"]
    fmt = manifest["format"]
    parity = manifest["parity"].get("merged_vs_base_plus_adapter_at_export")
    counts = manifest.get("snapshot_counts")
    parts = [
        f"# {_md_escape(name)} brand assistant ({manifest['run_id']})\n",
        "## Intended use\n",
        f"Customer-facing replies in the voice of the **{_md_escape(name)}** brand, served with the "
        "brand system prompt below as the first (system) message. Not for advice outside the brand's "
        "domain, nor for decisions about people.\n",
        "## Contents\n",
        f"- format: `{fmt}` ({'full merged fp32 weights' if fmt != 'adapter' else 'PEFT LoRA adapter only'}"
        f"{' + PEFT LoRA adapter in `adapter/`' if fmt == 'both' else ''})",
        f"- base model: `{base['name']}` (hash `{base['hash']}`)",
        "- lineage: " + " -> ".join(f"{s['kind']} `{s['run_id']}`" for s in manifest["lineage"]),
        f"- onbrand {manifest['onbrand_version']}, git commit `{manifest.get('git_commit')}`",
        "- every file's sha256 and size: `manifest.json`; check with `onbrand export verify <dir>`\n",
        "## Brand\n",
        f"- card: `{brand.get('path')}` (sha256 `{brand.get('sha256')}`)",
        "- system prompt (also in `system_prompt.txt`; send it as the system message):\n",
        "```text\n" + (manifest.get("system_prompt") or "(none recorded)") + "\n```\n",
        "## Data\n",
        f"- snapshot id: `{manifest.get('snapshot_id')}`",
        counts_md(counts),
        "## Training\n",
    ]
    for stage in lineage:
        parts.append(f"### {stage.run['kind']} (`{stage.run['run_id']}`)\n")
        parts.append("```yaml\n" + yaml.safe_dump(stage.config, sort_keys=False).strip() + "\n```\n")
    parts += ["## Evaluation\n", eval_summary(report), "## Export checks\n"]
    if parity is not None:
        parts.append(
            f"- merged weights vs base+adapter logits on fixed prompts, fp32: max abs diff {parity:.3e}"
        )
    parts.append(f"- merge done in {manifest['merge']['dtype']} on the unquantized base\n")
    parts += ["## Limitations\n", *_limitations(manifest, counts)]
    return "\n".join(parts) + "\n"


def _limitations(manifest: dict[str, Any], counts: Any) -> list[str]:
    out = [
        "- Aligned to one brand's preferences from a limited set of human judgements; it can still "
        "produce off-brand, wrong or unsafe text. Keep a human in the loop for anything binding.",
        "- Behaviour was checked with the recorded system prompt; other system prompts are untested.",
        "- Inherits the base model's knowledge cut-off, languages and biases.",
    ]
    if manifest["merge"]["quantized_training"]:
        out.append(
            "- Trained with a 4-bit (QLoRA) base; merged here into the unquantized base. Outputs can "
            "differ slightly from a 4-bit base + adapter."
        )
    train = (counts or {}).get("train")
    total = (
        train
        if isinstance(train, int)
        else (train.get("pairs") or train.get("total"))
        if isinstance(train, dict)
        else None
    )
    if isinstance(total, int) and total < 1000:
        out.append(f"- Small training set ({total} preference pairs): expect narrow coverage.")
    return [line + "\n" if i == len(out) - 1 else line for i, line in enumerate(out)]
