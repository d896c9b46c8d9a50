"""``onbrand export``: a training run -> a servable, traceable, parity-checked directory.

Layout of ``<out>/`` (``--format both`` has both parts)::

    config.json, model*.safetensors[, model.safetensors.index.json]   merged full weights (fp32)
    tokenizer.json, tokenizer_config.json, chat_template.jinja, generation_config.json
    adapter/adapter_config.json, adapter/adapter_model.safetensors   ONE PEFT LoRA on the base
    parity/reference.safetensors   base+adapter logits on fixed prompts (what verify compares to)
    training/<n>-<kind>.run.json, training/<n>-<kind>.config.yaml    lineage, stage by stage
    eval/report.json               the eval report, when there is one
    system_prompt.txt, MODEL_CARD.md, manifest.json

Merging: the base is loaded unquantized in float32 (a QLoRA run's 4-bit weights are never merged into:
that changes generations, PEFT #2321), the run's adapter chain is merged in order, and the result is
compared with base+adapter before it is written. Everything is written into a temporary sibling that
is renamed into place at the end (``onbrand.artifacts.atomic_dir``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from onbrand import __version__
from onbrand.adapters import CONFIG_FILE, concat_chain
from onbrand.artifacts import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    environment_record,
    hash_tree,
    read_json,
)
from onbrand.export.card import model_card, snapshot_counts
from onbrand.export.common import (
    EXPORT_KIND,
    FORMAT_VERSION,
    FORMATS,
    MANIFEST,
    REFERENCE,
    REFERENCE_POSITIONS,
    base_with_adapters,
    is_quantized,
    max_abs_diff,
    parity_inputs,
    prompt_logits,
    reject_dotdot,
)
from onbrand.lineage import Run, adapter_chain
from onbrand.lineage import lineage as read_lineage
from onbrand.models import _portable_configs, load_tokenizer, model_hash, resolve_model


# ----------------------------------------------------------------------------- writing
def _write_adapter(tmp: Path, chain: list[Path], base_name: str) -> Path:
    """One PEFT LoRA relative to the base (a chain is concatenated exactly, see onbrand.adapters)."""

    out = tmp / "adapter"
    if len(chain) == 1:
        shutil.copytree(chain[0], out, ignore=shutil.ignore_patterns("README.md", "*.tmp"))
    else:
        concat_chain(chain, out)
    cfg = read_json(out / CONFIG_FILE)
    cfg["base_model_name_or_path"] = base_name
    atomic_write_json(out / CONFIG_FILE, cfg)
    return out


def _write_reference(tmp: Path, prompts: list[dict[str, Any]], logits: list[Any]) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for i, (p, lg) in enumerate(zip(prompts, logits)):
        tensors[f"input_ids.{i}"] = p["input_ids"][0].contiguous()
        tensors[f"logits.{i}"] = lg[-REFERENCE_POSITIONS:].contiguous()
    (tmp / "parity").mkdir(exist_ok=True)
    save_file(tensors, str(tmp / REFERENCE))


def serving_sampling(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The decoding the eval measured (its ``sampling``), as ``generation_config.json`` keys: the
    export is served the way it was judged (vLLM and transformers read these as their defaults)."""
    s = ((report or {}).get("config") or {}).get("sampling")
    if not s:
        return None
    if not s.get("temperature"):
        return {"do_sample": False, "repetition_penalty": s.get("repetition_penalty", 1.0)}
    return {
        "do_sample": True,
        "temperature": s["temperature"],
        "top_p": s.get("top_p", 1.0),
        "top_k": 0,  # nucleus only, as the eval engines sample
        "repetition_penalty": s.get("repetition_penalty", 1.0),
    }


def _write_merged(
    tmp: Path, base_dir: Path, chain: list[Path], max_shard_size: str, sampling: dict[str, Any] | None
) -> Any:
    model = base_with_adapters(base_dir, chain, merge_last=True)
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
    load_tokenizer(base_dir).save_pretrained(tmp)
    gen_path = tmp / "generation_config.json"
    if (base_dir / "generation_config.json").exists():
        shutil.copy(base_dir / "generation_config.json", gen_path)
    if sampling:
        gen = read_json(gen_path) if gen_path.exists() else {}
        atomic_write_json(gen_path, {**gen, **sampling})
    _portable_configs(tmp)  # loadable by vLLM and transformers 4.x readers too
    return model


def _write_lineage(tmp: Path, lineage: list[Run], eval_report: Path | None) -> dict | None:
    """Copy each stage's run.json/config.yaml (``training/<n>-<kind>.*``) and the eval report.

    A report that names a different aligned run is not included (returned as ``{"excluded": why}``).
    """
    (tmp / "training").mkdir()
    for i, stage in enumerate(lineage, start=1):
        name = f"{i}-{stage.run['kind']}"
        shutil.copy(stage.dir / "run.json", tmp / "training" / f"{name}.run.json")
        if (stage.dir / "config.yaml").exists():
            shutil.copy(stage.dir / "config.yaml", tmp / "training" / f"{name}.config.yaml")
    if eval_report is None or not eval_report.exists():
        return None
    report = read_json(eval_report)
    evaluated = ((report.get("inputs") or {}).get("aligned") or {}).get("run_id")
    if evaluated and evaluated != lineage[-1].run["run_id"]:
        return {"excluded": f"{eval_report} evaluates run {evaluated}, not {lineage[-1].run['run_id']}"}
    (tmp / "eval").mkdir()
    shutil.copy(eval_report, tmp / "eval" / "report.json")
    return report


def _prepare(run_dir: Path, out_dir: Path, fmt: str, overwrite: bool) -> dict[str, Any]:
    """Validate the request and the run; resolve lineage, adapter chain and base (name, dir, hash)."""

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass --overwrite to replace it)")
    lineage = read_lineage(run_dir)
    run = lineage[-1].run
    base_hash = model_hash(run["base_model"])
    if run.get("base_model_hash") and run["base_model_hash"] != base_hash:
        raise ValueError(
            f"{run_dir / 'run.json'}: base_model_hash {run['base_model_hash'][:12]}… does not match "
            f"{run['base_model']} now ({base_hash[:12]}…): the base changed since training"
        )
    return {
        "lineage": lineage,
        "run": run,
        "chain": adapter_chain(lineage),
        "base_dir": resolve_model(run["base_model"]),
        "base_hash": base_hash,
        "quantized": any(is_quantized(s.config) for s in lineage),
    }


def _manifest(job: dict[str, Any], fmt: str, parity: dict[str, Any], report: dict | None) -> dict[str, Any]:
    run, lineage, env = job["run"], job["lineage"], environment_record()
    gate = (report or {}).get("gate")
    return {
        "kind": EXPORT_KIND,
        "format_version": FORMAT_VERSION,
        "format": fmt,
        "run_id": run["run_id"],
        "run_kind": run["kind"],
        "lineage": [{"run_id": s.run["run_id"], "kind": s.run["kind"]} for s in lineage],
        "base_model": {"name": run["base_model"], "hash": job["base_hash"]},
        "snapshot_id": run.get("snapshot_id"),
        "snapshot_counts": snapshot_counts(lineage),
        "brand": run.get("brand"),
        "system_prompt": run.get("system_prompt"),
        "merge": {
            "dtype": "float32",
            "quantized_training": job["quantized"],
            "adapters_in_order": len(job["chain"]),
        },
        "parity": parity,
        # How the eval judged it (serve it the same way) and whether it passed the release gate.
        "sampling": serving_sampling(report),
        "gate": None if not gate else {"config": gate["config"], "passed": gate["passed"]},
        "onbrand_version": __version__,
        "git_commit": env["git_commit"],
        "environment": env,
    }


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    fmt: str = "merged",
    *,
    max_shard_size: str = "2GB",
    eval_report: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Export training run ``run_dir`` into ``out_dir`` (atomically); returns ``out_dir``.

    ``fmt``: ``merged`` (full fp32 weights), ``adapter`` (one PEFT LoRA + base name and hash) or ``both``.
    ``eval_report`` defaults to ``<run>/../eval/report.json`` when that exists.
    """
    from tqdm.auto import tqdm

    run_dir, out_dir = reject_dotdot(run_dir, "run dir"), reject_dotdot(out_dir, "output dir")
    job = _prepare(run_dir, out_dir, fmt, overwrite)
    base_dir, chain, run = job["base_dir"], job["chain"], job["run"]
    if eval_report is None and (run_dir.parent / "eval" / "report.json").exists():
        eval_report = run_dir.parent / "eval" / "report.json"
    bar = tqdm(total=4, desc="export: reference logits", unit="step")
    with atomic_dir(out_dir) as tmp:
        report = _write_lineage(tmp, job["lineage"], Path(eval_report) if eval_report else None)
        sampling = serving_sampling(report if report and "excluded" not in report else None)
        prompts = parity_inputs(load_tokenizer(base_dir), run.get("system_prompt"))
        # Reference: base + adapter exactly as eval/vLLM serve it (unmerged LoRA on the fp32 base).
        reference = prompt_logits(base_with_adapters(base_dir, chain, merge_last=False), prompts)
        _write_reference(tmp, prompts, reference)
        parity: dict[str, Any] = {"prompts": [p["messages"] for p in prompts], "dtype": "float32"}
        bar.update()
        bar.set_description("export: merge + save weights")
        if fmt in ("merged", "both"):
            merged = _write_merged(tmp, base_dir, chain, max_shard_size, sampling)
            diff = max_abs_diff(prompt_logits(merged, prompts), reference)
            parity["merged_vs_base_plus_adapter_at_export"] = diff
            del merged
        bar.update()
        bar.set_description("export: adapter + lineage")
        if fmt in ("adapter", "both"):
            _write_adapter(tmp, chain, run["base_model"])
        atomic_write_text(tmp / "system_prompt.txt", run.get("system_prompt") or "")
        bar.update()
        bar.set_description("export: card + manifest")
        manifest = _manifest(job, fmt, parity, report if report and "excluded" not in report else None)
        atomic_write_text(tmp / "MODEL_CARD.md", model_card(manifest, job["lineage"], report))
        _write_manifest(tmp, manifest)
        bar.update()
    bar.close()
    return out_dir


def _write_manifest(tmp: Path, manifest: dict[str, Any]) -> None:
    """Last write of an export: hashes of every other file (so it is only complete with all of them)."""
    for path in tmp.rglob("*"):
        # Some writers create 0600 files (temp file + rename); an export is meant to be shared.
        path.chmod(0o755 if path.is_dir() else 0o644)
    manifest["files"] = hash_tree(tmp, skip=(MANIFEST,))
    atomic_write_json(tmp / MANIFEST, manifest)
