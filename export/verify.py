"""``onbrand export verify DIR``: is this export what was evaluated, and does it load where it is served?

Checks, each reported with its reason:

1. ``manifest.json`` is an onbrand export; every listed file exists with its size and sha256; no file
   is missing or unlisted; no listed path escapes the directory (``..``, absolute).
2. Merged weights load with plain transformers (``AutoModelForCausalLM``/``AutoTokenizer``); the
   exported tokenizer reproduces the stored prompt token ids; logits on the fixed prompts match the
   base+adapter reference stored at export time: ``max |merged - ref| <= tol`` (fp32).
3. The adapter loads with PEFT on the base named in the manifest, whose content hash must match;
   its logits match the reference; with both parts, merged vs live base+adapter on all positions.
4. When vLLM is importable (or ``--vllm on``): loads the export in a subprocess and generates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onbrand.artifacts import read_json, sha256_file
from onbrand.export.common import EXPORT_KIND, MANIFEST, REFERENCE, max_abs_diff, prompt_logits, reject_dotdot
from onbrand.models import load_model, load_tokenizer, model_hash, resolve_model
from onbrand.stats.text import common_prefix


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class VerifyReport:
    """Outcome of ``verify_export``; ``ok`` is True only when every check passed."""

    export_dir: str
    checks: list[Check] = field(default_factory=list)
    parity: dict[str, float] = field(default_factory=dict)
    tol: float = 1e-4
    vllm: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]

    def add(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(passed), detail))
        return bool(passed)

    def text(self) -> str:
        lines = [f"verify {self.export_dir}: {'PASS' if self.ok else 'FAIL'}"]
        lines += [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "export_dir": self.export_dir,
            "ok": self.ok,
            "tol": self.tol,
            "parity_max_abs_diff": self.parity,
            "checks": [c.__dict__ for c in self.checks],
            "failures": self.failures,
            "vllm": self.vllm,
        }


def _bad_path(rel: str) -> bool:
    p = Path(rel)
    return p.is_absolute() or ".." in p.parts or "\\" in rel or rel.startswith("~")


def check_files(root: Path, manifest: dict[str, Any], report: VerifyReport) -> bool:
    """Sizes, sha256, missing/unlisted files, and no listed path outside ``root``."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return report.add("checksums", False, f"{root / MANIFEST}: no 'files' table")
    problems = [f"{rel}: path escapes the export (rejected)" for rel in files if _bad_path(rel)]
    for rel, meta in files.items():
        if _bad_path(rel):
            continue
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != meta.get("size"):
            problems.append(f"{rel}: size {path.stat().st_size} != {meta.get('size')} in manifest")
        elif sha256_file(path) != meta.get("sha256"):
            problems.append(f"{rel}: sha256 differs from manifest (file changed)")
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {MANIFEST}
    problems += [f"{rel}: not listed in manifest" for rel in sorted(on_disk - set(files))]
    detail = f"{len(files)} files match" if not problems else "; ".join(problems[:8])
    return report.add("checksums", not problems, detail)


def _reference(root: Path, manifest: dict[str, Any]) -> tuple[list[dict], list[Any]]:
    from safetensors.torch import load_file

    tensors = load_file(str(root / REFERENCE))
    n = len(manifest["parity"]["prompts"])
    prompts = [
        {"messages": manifest["parity"]["prompts"][i], "input_ids": tensors[f"input_ids.{i}"][None]}
        for i in range(n)
    ]
    return prompts, [tensors[f"logits.{i}"] for i in range(n)]


def _tail_logits(model, prompts: list[dict], positions: int) -> list[Any]:
    return [lg[-positions:] for lg in prompt_logits(model, prompts)]


def _check_tokenizer(tok, prompts: list[dict], report: VerifyReport, where: str) -> None:
    bad = 0
    for p in prompts:
        ids = tok.apply_chat_template(
            p["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        bad += int(ids.shape != p["input_ids"].shape or not bool((ids == p["input_ids"]).all()))
    report.add(
        f"tokenizer ({where})",
        bad == 0,
        f"chat template reproduces the {len(prompts)} reference prompts"
        if bad == 0
        else f"{bad}/{len(prompts)} prompts tokenize differently from export time",
    )


def _parity(report: VerifyReport, key: str, diff: float, what: str) -> None:
    report.parity[key] = diff
    report.add(
        f"parity {key}", diff <= report.tol, f"{what}: max abs diff {diff:.3e} (tol {report.tol:g}, fp32)"
    )


def check_merged(root: Path, prompts, ref, report: VerifyReport):
    """Plain transformers load (no onbrand code involved) + parity vs the stored reference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(root)
    n_params = sum(p.numel() for p in model.parameters())
    report.add(
        "transformers load (merged)", True, f"{type(model).__name__}, {n_params / 1e6:.1f}M parameters"
    )
    _check_tokenizer(tok, prompts, report, "merged")
    got = _tail_logits(model, prompts, ref[0].shape[0])
    _parity(report, "merged_vs_reference", max_abs_diff(got, ref), "merged vs base+adapter reference")
    return model


def check_adapter(root: Path, manifest, prompts, ref, report: VerifyReport, base: str | None, merged):
    """PEFT load on the expected base (hash checked) + parity; merged vs live base+adapter if both."""
    from peft import PeftModel

    expected = manifest["base_model"]
    base_dir = resolve_model(base or expected["name"])
    got_hash = model_hash(base_dir)
    if not report.add(
        "base model hash",
        got_hash == expected["hash"],
        f"{base_dir.name}: {got_hash[:16]}… {'==' if got_hash == expected['hash'] else '!='} manifest "
        f"{expected['hash'][:16]}…",
    ):
        return
    model = PeftModel.from_pretrained(load_model(base_dir), str(root / "adapter")).eval()
    report.add("PEFT load (adapter)", True, f"LoRA r={model.peft_config['default'].r} on {expected['name']}")
    _check_tokenizer(load_tokenizer(base_dir), prompts, report, "base")
    got = _tail_logits(model, prompts, ref[0].shape[0])
    _parity(report, "adapter_vs_reference", max_abs_diff(got, ref), "base+adapter vs reference")
    if merged is not None:
        diff = max_abs_diff(prompt_logits(merged, prompts), prompt_logits(model, prompts))
        _parity(report, "merged_vs_base_plus_adapter", diff, "merged vs live base+adapter, all positions")
    return model


def hf_greedy(model, prompts: list[dict], max_new_tokens: int) -> list[list[int]]:
    """transformers greedy continuations of the fixed prompts (what vLLM's are compared with)."""
    import torch

    outs = []
    with torch.no_grad():
        for p in prompts:
            ids = p["input_ids"]
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                # Plain greedy, like vLLM's SamplingParams(temperature=0): the export's
                # generation_config.json carries the serving sampling (repetition penalty too).
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                repetition_penalty=1.0,
            )
            outs.append(gen[0, ids.shape[1] :].tolist())
    return outs


def greedy_agreement(hf: list[list[int]], vllm: list[list[int]]) -> float:
    """Fraction of vLLM's greedy tokens equal to transformers' before the first difference."""
    same = sum(common_prefix(a, b) for a, b in zip(hf, vllm))
    return same / max(sum(len(b) for b in vllm), 1)


def check_vllm(
    root: Path,
    report: VerifyReport,
    base: str | None,
    hf_models: dict,
    prompts: list,
    timeout: int = 900,
    in_process: bool = False,
) -> None:
    """Load + greedy generate, in a separate process (vLLM spawns workers and holds memory) or, with
    ``in_process`` (inside ``onbrand run``), on this process's one engine (``serve_check.run_in_process``).

    Passing = vLLM loads and generates. Agreement of its greedy tokens with transformers' is reported
    (not gated: fp32 kernels differ in summation order, so near-ties may flip a token).
    """
    if in_process:
        from onbrand.export.serve_check import run_in_process

        try:
            result = run_in_process(root, base, 16)
        except Exception as e:  # noqa: BLE001 - a load failure is a verify failure with its reason
            report.add("vLLM load+generate", False, f"in process: {type(e).__name__}: {e}"[:500])
            return
        _vllm_result(report, result, hf_models, prompts)
        return
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="onbrand-vllm-")) / "result.json"
    env = dict(os.environ, PYTHONSAFEPATH="1")  # and -P below: vLLM's own workers inherit the env
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cmd = [sys.executable, "-P", "-m", "onbrand.export.serve_check", str(root), "--json", str(out)]
    if base:
        cmd += ["--base", base]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        report.add("vLLM load+generate", False, f"timed out after {timeout} s")
        return
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        report.add("vLLM load+generate", False, f"exit {proc.returncode}: {' | '.join(tail)}")
        return
    result = json.loads(out.read_text())
    out.unlink()
    out.parent.rmdir()
    result["engine"] = "started in a separate process"
    _vllm_result(report, result, hf_models, prompts)


def _vllm_result(report: VerifyReport, result: dict, hf_models: dict, prompts: list) -> None:
    report.vllm = result
    texts = [g["text"] for part in result["parts"] for g in part["generations"]]
    ok = bool(texts) and all(g["token_ids"] for part in result["parts"] for g in part["generations"])
    for part in result["parts"]:
        model = hf_models.get(part["part"])
        if model is not None:
            hf = hf_greedy(model, prompts, result["max_tokens"])
            part["greedy_agreement_with_transformers"] = greedy_agreement(
                hf, [g["token_ids"] for g in part["generations"]]
            )
    detail = "; ".join(
        f"{p['part']}: {len(p['generations'])} prompts, greedy agreement with transformers "
        f"{p.get('greedy_agreement_with_transformers', float('nan')):.0%}, first: {p['generations'][0]['text']!r}"
        for p in result["parts"]
    )
    report.add(
        "vLLM load+generate", ok, f"vllm {result['vllm_version']} ({result['engine']}): {detail}"[:400]
    )


def verify_export(
    export_dir: str | Path,
    vllm: str = "auto",
    base: str | None = None,
    tol: float = 1e-4,
    in_process: bool | None = None,
) -> VerifyReport:
    """Run every check on ``export_dir``; never raises for a bad export (the report says why).
    ``in_process`` (default: inside ``onbrand run``, where the engine pool is active) runs the vLLM
    check on this process's engine instead of a separate interpreter."""
    import importlib.util

    root = reject_dotdot(export_dir, "export dir")
    report = VerifyReport(str(root), tol=tol)
    if not (root / MANIFEST).is_file():
        report.add("manifest", False, f"{root / MANIFEST} not found: not a complete export")
        return report
    try:
        manifest = read_json(root / MANIFEST)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        report.add("manifest", False, f"{root / MANIFEST}: unreadable ({e})")
        return report
    if manifest.get("kind") != EXPORT_KIND:
        report.add("manifest", False, f"{root / MANIFEST}: kind {manifest.get('kind')!r} != {EXPORT_KIND!r}")
        return report
    report.add("manifest", True, f"run {manifest.get('run_id')}, format {manifest.get('format')}")
    if not check_files(root, manifest, report):
        return report  # never load weights that are not the exported ones
    fmt = manifest["format"]
    try:
        prompts, ref = _reference(root, manifest)
        merged = check_merged(root, prompts, ref, report) if fmt in ("merged", "both") else None
        served = None
        if fmt in ("adapter", "both"):
            served = check_adapter(root, manifest, prompts, ref, report, base, merged)
    except Exception as e:  # noqa: BLE001 - any load failure is a verify failure with its reason
        report.add("load", False, f"{type(e).__name__}: {e}"[:500])
        return report
    if vllm == "on" or (vllm == "auto" and importlib.util.find_spec("vllm") is not None):
        from onbrand.engines.pool import POOL

        inproc = POOL.active if in_process is None else in_process
        check_vllm(root, report, base, {"merged": merged, "base+adapter": served}, prompts, in_process=inproc)
    return report
