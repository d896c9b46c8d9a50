"""The stages of ``onbrand run``: what each reads, how it is configured, run and fingerprinted.

Which stages exist, in which order, with which config and dependencies is
:data:`onbrand.stage_table.STAGE_TABLE`; this module holds the code behind each row's ``runner``
(a :class:`Runner`: the overrides that tie the stage to the others, a ``run`` function that returns
a small JSON-able result, and a ``fingerprint`` of its output used by the stages after it, so a
changed snapshot re-runs training, a changed adapter re-runs eval and export, and nothing else) and
joins both into :data:`STAGES`.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onbrand.artifacts import hash_tree, read_json, sha256_json
from onbrand.stage_table import STAGE_TABLE, STAGES_BY_NAME, StageSpec


@dataclass
class StageContext:
    out_dir: Path
    fingerprints: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)


def _none(cfg, ctx) -> list[str]:
    return []


def _no_files(stage_cfg) -> list[str]:
    return []


@dataclass(frozen=True)
class Runner:
    """How ``onbrand run`` runs one stage (named by the stage table's ``runner``)."""

    run: Callable[[Any, Any, StageContext], dict[str, Any]]
    fingerprint: Callable[[Any, StageContext], str]
    overrides: Callable[[Any, StageContext], list[str]] = _none
    # Files the stage reads besides its config (their CONTENT goes into the input hash): a changed
    # data file must re-run the data stage even though the config naming it is the same.
    input_files: Callable[[Any], list[str]] = _no_files
    code_version: int = 1


@dataclass(frozen=True)
class Stage:
    """A stage table row joined with its runner: everything the pipeline needs."""

    title: str
    config_kind: str | None
    depends_on: tuple[str, ...]
    overrides: Callable[[Any, StageContext], list[str]]
    run: Callable[[Any, Any, StageContext], dict[str, Any]]
    fingerprint: Callable[[Any, StageContext], str]
    code_version: int = 1
    input_files: Callable[[Any], list[str]] = _no_files


def _p(ctx: StageContext, name: str) -> str:
    return str(ctx.out_dir / name)


def _tree_fingerprint(path: Path, skip_dirs: tuple[str, ...] = ("checkpoints",)) -> str:
    if not path.exists():
        return "missing"
    files = {k: v["sha256"] for k, v in hash_tree(path).items() if k.split("/")[0] not in skip_dirs}
    return sha256_json(files)


# ----------------------------------------------------------------------------- model
def _run_model(cfg, _stage_cfg, _ctx) -> dict[str, Any]:
    """Resolve (convert once) the base model, print its facts and a base answer to a sample prompt."""
    from onbrand.models import embedded_dir, model_facts, resolve_model

    key = cfg.model.partition(":")[2]
    converting = cfg.model.startswith("embedded:") and not (embedded_dir(key) / "manifest.json").exists()
    t0 = time.perf_counter()
    resolve_model(cfg.model)
    t_resolve = time.perf_counter() - t0
    facts = model_facts(cfg.model)
    prompt = cfg.sample_prompt or _brand_sample_prompt(cfg)
    answer, t_load, params = _sample_answer(cfg, prompt)
    print(
        f"  {facts['name']}: {facts['architecture']}, {params / 1e6:.1f}M parameters, vocab {facts['vocab_size']}, "
        f"{facts['num_hidden_layers']} layers, hidden {facts['hidden_size']} ({facts['path']})\n"
        f"  {'converted GGUF -> safetensors' if converting else 'cached checkpoint'} in {t_resolve:.1f} s; "
        f"loaded in {t_load:.1f} s\n  sample prompt: {prompt}\n  base answer:   {answer}"
    )
    keep = ("name", "path", "vocab_size", "hidden_size", "num_hidden_layers", "model_hash")
    return {
        **{k: facts[k] for k in keep if k in facts},
        "parameters": params,
        "sample_prompt": prompt,
        "base_answer": answer,
        "resolve_seconds": round(t_resolve, 1),
        "load_seconds": round(t_load, 1),
    }


def _brand_sample_prompt(cfg) -> str:
    """The last user turn of the first valid record of the brand's own data (its data config)."""
    from onbrand.config import load_config
    from onbrand.data.config import DataConfig
    from onbrand.data.snapshot import resolve_input
    from onbrand.data.validate import ImportStats, Quarantined, import_files

    data_cfg = load_config(DataConfig, cfg.data, [])
    paths = [resolve_input(p) for p in [*data_cfg.inputs, *data_cfg.test_inputs]]
    opts = data_cfg.format_options.as_options()  # the config's Label Studio / Argilla field names
    for item in import_files(paths, data_cfg.format, data_cfg.max_chars, ImportStats(), None, options=opts):
        if not isinstance(item, Quarantined):
            return [m["content"] for m in item["prompt"] if m["role"] == "user"][-1]
    raise ValueError(f"{cfg.data}: no valid record to take a sample prompt from (set sample_prompt)")


def _sample_answer(cfg, prompt: str) -> tuple[str, float, int]:
    """Greedy base answer under the brand card's system prompt (what the aligned model must beat)."""
    import torch

    from onbrand.data.brand import load_brand
    from onbrand.models import count_parameters, load_model, load_tokenizer

    t0 = time.perf_counter()
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model).eval()
    t_load = time.perf_counter() - t0
    messages = [
        {"role": "system", "content": load_brand(cfg.brand).system_prompt()},
        {"role": "user", "content": prompt},
    ]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=cfg.max_new_tokens, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    return answer.replace("\n", " "), t_load, count_parameters(model)


def _fp_model(cfg, _ctx) -> str:
    from onbrand.models import model_hash

    return model_hash(cfg.model)


# ----------------------------------------------------------------------------- data
def _ov_data(cfg, ctx) -> list[str]:
    return [f"brand={cfg.brand}", f"tokenizer={cfg.model}", f"out={_p(ctx, 'snapshot')}"]


def _run_data(cfg, stage_cfg, ctx) -> dict[str, Any]:
    from onbrand.data.brand import load_brand
    from onbrand.data.report import write_report
    from onbrand.data.snapshot import build_snapshot

    manifest = build_snapshot(stage_cfg)
    report_dir = stage_cfg.report_dir or str(Path(stage_cfg.out) / "report")
    write_report(stage_cfg.out, report_dir, load_brand(cfg.brand))
    report = Path(report_dir) / "report.md"
    counts = {split: c.get("pairs") for split, c in manifest.get("counts", {}).items()}
    print(f"  snapshot {manifest['snapshot_id'][:12]}  pairs {counts}  report {report}")
    return {"snapshot_id": manifest["snapshot_id"], "counts": counts, "report": str(report)}


def _files_data(stage_cfg) -> list[str]:
    from onbrand.data.snapshot import resolve_input

    if stage_cfg is None:
        return []
    return [str(resolve_input(p)) for p in stage_cfg.all_inputs]


def _fp_data(cfg, ctx) -> str:
    path = Path(_p(ctx, "snapshot")) / "manifest.json"
    return read_json(path)["snapshot_id"] if path.exists() else "missing"


# ----------------------------------------------------------------------------- training
def _ov_train(name: str, init_from: str | None = None):
    def overrides(cfg, ctx) -> list[str]:
        out = [
            f"model={cfg.model}",
            f"out_dir={_p(ctx, name)}",
            f"data.snapshot={_p(ctx, 'snapshot')}",
            f"data.brand={cfg.brand}",
        ]
        if init_from:
            out.append(f"init_from={_p(ctx, init_from)}")
        return out

    return overrides


def _run_train(name: str):
    def run(cfg, stage_cfg, ctx) -> dict[str, Any]:
        # The recipe is the module of the stage's config kind (onbrand.training.sft:SFTConfig).
        module = STAGES_BY_NAME[name].config_kind.partition(":")[0]
        code = importlib.import_module(module).train(stage_cfg)
        if code:
            raise RuntimeError(f"{module} exited with {code}")
        out = Path(stage_cfg.out_dir)
        ev = out / "eval.json"
        return {"run_dir": str(out), "eval": read_json(ev) if ev.exists() else {}}

    return run


def _fp_run(name: str):
    def fp(cfg, ctx) -> str:
        return _tree_fingerprint(Path(_p(ctx, name)) / "adapter")

    return fp


def _train_runner(name: str, init_from: str | None = None) -> Runner:
    return Runner(_run_train(name), _fp_run(name), _ov_train(name, init_from))


# ----------------------------------------------------------------------------- eval / export
def _ov_eval(cfg, ctx) -> list[str]:
    return [
        f"base_model={cfg.model}",
        f"aligned={_p(ctx, 'dpo')}",
        f"reward={_p(ctx, 'reward')}",
        f"snapshot={_p(ctx, 'snapshot')}",
        f"brand={cfg.brand}",
        f"out_dir={_p(ctx, 'eval')}",
        *([f"gate={cfg.gate}"] if cfg.gate else []),
    ]


def _files_eval(stage_cfg) -> list[str]:
    return [stage_cfg.gate] if stage_cfg is not None and stage_cfg.gate else []


def _run_eval(cfg, stage_cfg, ctx) -> dict[str, Any]:
    from onbrand.eval.runner import run_eval

    report = run_eval(stage_cfg)
    return {
        "report_dir": str(stage_cfg.out_dir),
        "summary": report.get("summary", {}),
        "verdict": report.get("verdict"),
        "gate": report.get("gate"),  # onbrand.eval.gate.check_gate on the run config's gate YAML
        # generate_s, metric_s (per metric family: the scoring passes), logprob_s, total_s
        "timings": (report.get("metrics") or {}).get("timings", {}),
    }


def _fp_eval(cfg, ctx) -> str:
    path = Path(_p(ctx, "eval")) / "report.json"
    return sha256_json(read_json(path).get("summary")) if path.exists() else "missing"


def _run_export(cfg, _stage_cfg, ctx) -> dict[str, Any]:
    from onbrand.export.checkpoint import export_run
    from onbrand.export.verify import verify_export

    out = export_run(_p(ctx, "dpo"), _p(ctx, "export"), cfg.export.format, overwrite=True)
    result: dict[str, Any] = {"export_dir": str(out)}
    if cfg.export.verify:
        report = verify_export(out)
        result["verify"] = report.to_dict() if hasattr(report, "to_dict") else str(report)
        if not report.ok:
            raise RuntimeError(f"export verify failed: {report}")
    return result


def _fp_export(cfg, ctx) -> str:
    path = Path(_p(ctx, "export")) / "manifest.json"
    return sha256_json(read_json(path)) if path.exists() else "missing"


# ----------------------------------------------------------------------------- the runners
# Named by the stage table's `runner` column ("onbrand.pipeline_stages:MODEL").
MODEL = Runner(_run_model, _fp_model)
DATA = Runner(_run_data, _fp_data, _ov_data, _files_data)
SFT = _train_runner("sft")
DPO = _train_runner("dpo", init_from="sft")
REWARD = _train_runner("reward")
EVAL = Runner(_run_eval, _fp_eval, _ov_eval, _files_eval)
EXPORT = Runner(_run_export, _fp_export)


def _stage(spec: StageSpec) -> Stage:
    module, _, attr = spec.runner.partition(":")
    runner: Runner = getattr(importlib.import_module(module), attr)
    return Stage(
        title=spec.title,
        config_kind=spec.config_kind,
        depends_on=spec.depends_on,
        overrides=runner.overrides,
        run=runner.run,
        fingerprint=runner.fingerprint,
        code_version=runner.code_version,
        input_files=runner.input_files,
    )


# `onbrand run`'s stages in pipeline order: the stage table's rows that have a runner.
STAGES: dict[str, Stage] = {spec.name: _stage(spec) for spec in STAGE_TABLE if spec.runner}


def summary_lines(cfg, ctx: StageContext) -> list[str]:
    """The final table: the verdict and the headline numbers, base vs aligned."""
    lines = []
    res = ctx.results
    if "model" in res and "parameters" in res["model"]:
        m = res["model"]
        lines.append(
            f"model     {m['name']}  {m['parameters'] / 1e6:.1f}M parameters, vocab {m['vocab_size']}"
        )
    if "data" in res:
        lines.append(
            f"data      snapshot {str(res['data'].get('snapshot_id'))[:12]}  pairs {res['data'].get('counts')}"
        )
    for name in ("sft", "dpo", "reward"):
        if name in res:
            ev = res[name].get("eval", {})
            shown = ", ".join(f"{k} {v:.3f}" for k, v in list(ev.items())[:4] if isinstance(v, (int, float)))
            lines.append(f"{name:<9} {res[name].get('run_dir')}  {shown}")
    if "eval" in res:
        lines.append(
            f"eval      {res['eval']['report_dir']}/report.md   verdict: {res['eval'].get('verdict')}"
        )
        for key, value in (res["eval"].get("summary") or {}).items():
            lines.append(f"          {key:<42} {value}")
        gate = res["eval"].get("gate")
        if gate:
            checks = gate["checks"]
            status = "PASSED" if gate["passed"] else "FAILED"
            lines.append(
                f"gate      {gate['config']}: {status} ({sum(c['passed'] for c in checks)}/{len(checks)} checks)"
            )
            for c in checks:
                value = f"{c['value']:.3f}" if isinstance(c["value"], float) else c["value"]
                lines.append(
                    f"          {'PASS' if c['passed'] else 'FAIL'}  {c['name']:<24} {value!s:<10} {c['detail']}"
                )
    if "export" in res:
        lines.append(f"export    {res['export']['export_dir']}")
    return lines
