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
is renamed into place at the end (``onbrand.runs.atomic_dir``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import yaml

from onbrand import __version__
from onbrand.runs import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    environment_record,
    hash_tree,
    read_json,
)

FORMATS = ("merged", "adapter", "both")
MANIFEST = "manifest.json"
EXPORT_KIND = "onbrand-export"
FORMAT_VERSION = 1
REFERENCE = "parity/reference.safetensors"
# Fixed prompts for the logits parity check (sent with the brand system prompt as explicit messages).
PARITY_PROMPTS = (
    "A customer asks: can your lamp help me sleep better?",
    "My order arrived broken. What now?",
    "Write a two-sentence product blurb for our desk light.",
)
REFERENCE_POSITIONS = 8  # last positions of each prompt whose full-vocab logits are stored
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


# ----------------------------------------------------------------------------- reading a run
def reject_dotdot(path: str | Path, what: str) -> Path:
    """Refuse paths with a ``..`` component: an export never writes or reads outside where it was told."""
    if ".." in Path(path).parts or "\x00" in str(path):
        raise ValueError(f"{what} {str(path)!r} is not allowed: '..' path components are rejected")
    return Path(path)


def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    path = run_dir / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a training run directory (no run.json)")
    run = read_json(path)
    missing = [k for k in ("kind", "run_id", "base_model") if not run.get(k)]
    if missing:
        raise ValueError(f"{path}: missing required field(s) {', '.join(missing)}")
    cfg_path = run_dir / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    return run, cfg or {}


def _parent_dir(run_dir: Path, parent: str) -> Path:
    """``parent_run`` is a path (absolute, or relative to the run's folder or its parent)."""
    for cand in (Path(parent), run_dir.parent / parent, run_dir / parent):
        if (cand / "run.json").exists():
            return cand
    raise FileNotFoundError(f"{run_dir / 'run.json'}: parent_run {parent!r} not found as a run directory")


def run_lineage(run_dir: str | Path) -> list[dict[str, Any]]:
    """Stages from the first (closest to the base) to ``run_dir``: ``{dir, run, config}`` each."""
    run_dir = Path(run_dir)
    chain: list[dict[str, Any]] = []
    seen: set[Path] = set()
    while True:
        if run_dir.resolve() in seen:
            raise ValueError(f"{run_dir}: parent_run forms a cycle")
        seen.add(run_dir.resolve())
        run, cfg = _read_run(run_dir)
        chain.insert(0, {"dir": run_dir, "run": run, "config": cfg})
        if not run.get("parent_run"):
            return chain
        run_dir = _parent_dir(run_dir, str(run["parent_run"]))


def adapter_chain(lineage: list[dict[str, Any]]) -> list[Path]:
    """Adapters to apply to the base in order. ``<run>/adapter`` is already relative to the base
    (the training stage concatenated it); otherwise fall back to the parent's chain + ``stage_adapter``."""
    last = lineage[-1]["dir"]
    if (last / "adapter" / "adapter_config.json").exists():
        return [last / "adapter"]
    if len(lineage) > 1 and (last / "stage_adapter" / "adapter_config.json").exists():
        return adapter_chain(lineage[:-1]) + [last / "stage_adapter"]
    raise FileNotFoundError(f"{last}: no adapter/ (or stage_adapter/ with a parent run) to export")


def is_quantized(cfg: Any) -> bool:
    """True when a run config trained on a 4-bit base (``quantize: nf4``, ``load_in_4bit: true``)."""
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            if key in ("quantize", "quantization") and value not in (None, "none", False, ""):
                return True
            if key in ("load_in_4bit", "qlora") and value is True:
                return True
            if is_quantized(value):
                return True
    if isinstance(cfg, list):
        return any(is_quantized(v) for v in cfg)
    return False


# ----------------------------------------------------------------------------- numerics
def parity_inputs(tokenizer, system_prompt: str | None) -> list[dict[str, Any]]:
    """Fixed chat prompts -> ``[{messages, input_ids (1, T)}]`` (explicit system message)."""
    out = []
    for text in PARITY_PROMPTS:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": text}
        ]
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        out.append({"messages": messages, "input_ids": ids})
    return out


def prompt_logits(model, prompts: list[dict[str, Any]]) -> list[Any]:
    """Full logits ``(T, V)`` per prompt, float32, no padding (one forward per prompt)."""
    import torch

    with torch.no_grad():
        return [model(input_ids=p["input_ids"]).logits[0].float() for p in prompts]


def max_abs_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def base_with_adapters(base_dir: Path, adapters: list[Path], merge_last: bool):
    """fp32 base with ``adapters`` applied in order; all but the last merged (the last too if asked)."""
    from peft import PeftModel

    from onbrand.models import load_model

    model = load_model(base_dir, dtype="float32").eval()
    for i, adapter in enumerate(adapters):
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
        if i < len(adapters) - 1 or merge_last:
            model = model.merge_and_unload()
    return model.eval()


# ----------------------------------------------------------------------------- writing
def _write_adapter(tmp: Path, chain: list[Path], base_name: str) -> Path:
    """One PEFT LoRA relative to the base (a chain is concatenated exactly, see onbrand.adapters)."""
    from onbrand.adapters import CONFIG_FILE, concat_chain

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
    from onbrand.models import _portable_configs, load_tokenizer

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


def _write_lineage(tmp: Path, lineage: list[dict[str, Any]], eval_report: Path | None) -> dict | None:
    """Copy each stage's run.json/config.yaml (``training/<n>-<kind>.*``) and the eval report.

    A report that names a different aligned run is not included (returned as ``{"excluded": why}``).
    """
    (tmp / "training").mkdir()
    for i, stage in enumerate(lineage, start=1):
        name = f"{i}-{stage['run']['kind']}"
        shutil.copy(stage["dir"] / "run.json", tmp / "training" / f"{name}.run.json")
        if (stage["dir"] / "config.yaml").exists():
            shutil.copy(stage["dir"] / "config.yaml", tmp / "training" / f"{name}.config.yaml")
    if eval_report is None or not eval_report.exists():
        return None
    report = read_json(eval_report)
    evaluated = ((report.get("inputs") or {}).get("aligned") or {}).get("run_id")
    if evaluated and evaluated != lineage[-1]["run"]["run_id"]:
        return {"excluded": f"{eval_report} evaluates run {evaluated}, not {lineage[-1]['run']['run_id']}"}
    (tmp / "eval").mkdir()
    shutil.copy(eval_report, tmp / "eval" / "report.json")
    return report


def _prepare(run_dir: Path, out_dir: Path, fmt: str, overwrite: bool) -> dict[str, Any]:
    """Validate the request and the run; resolve lineage, adapter chain and base (name, dir, hash)."""
    from onbrand.models import model_hash, resolve_model

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass --overwrite to replace it)")
    lineage = run_lineage(run_dir)
    run = lineage[-1]["run"]
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
        "quantized": any(is_quantized(s["config"]) for s in lineage),
    }


def _manifest(job: dict[str, Any], fmt: str, parity: dict[str, Any], report: dict | None) -> dict[str, Any]:
    from onbrand.export_card import snapshot_counts

    run, lineage, env = job["run"], job["lineage"], environment_record()
    gate = (report or {}).get("gate")
    return {
        "kind": EXPORT_KIND,
        "format_version": FORMAT_VERSION,
        "format": fmt,
        "run_id": run["run_id"],
        "run_kind": run["kind"],
        "lineage": [{"run_id": s["run"]["run_id"], "kind": s["run"]["kind"]} for s in lineage],
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

    from onbrand.export_card import model_card
    from onbrand.models import load_tokenizer

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


# ----------------------------------------------------------------------------- CLI
def _cmd_export(args: argparse.Namespace) -> int:
    if not args.run or not args.out:
        raise ValueError("onbrand export needs --run RUN_DIR and --out DIR (or: onbrand export verify DIR)")
    out = export_run(
        args.run,
        args.out,
        args.format,
        max_shard_size=args.max_shard_size,
        eval_report=args.eval_report,
        overwrite=args.overwrite,
    )
    manifest = read_json(out / MANIFEST)
    diff = manifest["parity"].get("merged_vs_base_plus_adapter_at_export")
    print(f"exported {manifest['run_id']} ({args.format}) -> {out}")
    if diff is not None:
        print(f"  merged vs base+adapter logits, max abs diff (fp32): {diff:.3e}")
    print(f"  {len(manifest['files'])} files; next: onbrand export verify {out}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from onbrand.export_verify import verify_export

    report = verify_export(args.dir, vllm=args.vllm, base=args.base, tol=args.tol)
    print(report.text())
    if args.json:
        atomic_write_json(reject_dotdot(args.json, "--json"), report.to_dict())
    return 0 if report.ok else 1


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a training run (merged weights and/or one LoRA adapter) and verify exports",
        description="onbrand export --run RUN --out DIR [--format merged|adapter|both]  |  onbrand export verify DIR",
    )
    p.add_argument("--run", help="training run directory (has run.json and adapter/)")
    p.add_argument("--out", help="export directory to create (written atomically)")
    p.add_argument("--format", choices=FORMATS, default="merged")
    p.add_argument("--max-shard-size", default="2GB", help="safetensors shard size for merged weights")
    p.add_argument("--eval-report", help="eval report.json for the model card (default: <run>/../eval/)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export directory")
    p.set_defaults(func=_cmd_export)
    esub = p.add_subparsers(dest="export_cmd", metavar="verify")
    v = esub.add_parser("verify", help="check checksums, loading and logits parity of an export")
    v.add_argument("dir", help="export directory")
    v.add_argument("--vllm", choices=("auto", "on", "off"), default="auto", help="load+generate with vLLM")
    v.add_argument("--base", help="local base model dir for adapter checks (default: the manifest's name)")
    v.add_argument("--tol", type=float, default=1e-4, help="max abs logits diff allowed (fp32)")
    v.add_argument("--json", help="also write the report as JSON here")
    v.set_defaults(func=_cmd_verify)
