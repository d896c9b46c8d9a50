"""``onbrand run configs/demo.yaml``: the whole pipeline in one script.

    model -> data (import + validate + snapshot + report) -> sft -> dpo -> reward -> eval -> export

Each stage reads the artefact of the stage before it (see docs/architecture.md). The run config
names one YAML per stage; the pipeline forces the paths that tie the stages together (the
snapshot, the run dirs, the brand card, the base model) from ``out_dir``, ``brand`` and ``model``,
so a new brand needs only a new run config. Each stage records the hash of its inputs (its
resolved config plus the fingerprints of the artefacts it reads) in ``<out_dir>/stages/<stage>.json``
and is skipped on re-run when they match and its output is intact; ``--force STAGE`` re-runs it.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onbrand.artifacts import atomic_write_json, read_json, sha256_file, sha256_json
from onbrand.config import ConfigError, load_config, resolve_kind, to_dict
from onbrand.console import RunOutput, user_error_message
from onbrand.engines.pool import POOL
from onbrand.pipeline_stages import STAGES, StageContext, summary_lines
from onbrand.profiling import StageProfile

KNOWN_STAGES = tuple(STAGES)


@dataclass
class ExportSection:
    format: str = "merged"  # merged | adapter | both
    verify: bool = True

    def __post_init__(self) -> None:
        if self.format not in ("merged", "adapter", "both"):
            raise ValueError(f"export.format must be one of merged, adapter, both; got {self.format!r}")


@dataclass
class RunConfig:
    """The main job. Paths are relative to the current directory."""

    name: str = "demo"
    model: str = "embedded:smollm2-135m-instruct"
    brand: str = "configs/brands/aurora.yaml"
    out_dir: str = "runs/demo"
    stages: list[str] = field(default_factory=lambda: list(KNOWN_STAGES))
    # One YAML per stage; the pipeline overrides the paths that connect the stages.
    data: str = "configs/data/demo.yaml"
    sft: str = "configs/sft/demo.yaml"
    dpo: str = "configs/dpo/demo.yaml"
    reward: str = "configs/reward/demo.yaml"
    eval: str = "configs/eval/demo.yaml"
    export: ExportSection = field(default_factory=ExportSection)
    # Extra dotted overrides per stage, e.g. {dpo: ["train.epochs=2"]}.
    overrides: dict[str, list[str]] = field(default_factory=dict)
    # The model stage's base answer: "" = the first prompt of the brand's own data (its data config).
    sample_prompt: str = ""
    max_new_tokens: int = 64
    # The release gate applied to the eval report (configs/eval/gates.yaml); "" = no gate.
    # `onbrand run` exits 1 when it fails.
    gate: str = "configs/eval/gates.yaml"
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in KNOWN_STAGES]
        if bad:
            raise ValueError(f"stages: unknown stage(s) {bad}; valid stages: {', '.join(KNOWN_STAGES)}")
        bad = [s for s in self.overrides if s not in KNOWN_STAGES]
        if bad:
            raise ValueError(f"overrides: unknown stage(s) {bad}; valid stages: {', '.join(KNOWN_STAGES)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def _state_path(cfg: RunConfig, stage: str) -> Path:
    return Path(cfg.out_dir) / "stages" / f"{stage}.json"


def _stage_config(cfg: RunConfig, stage: str, ctx: StageContext) -> Any:
    spec = STAGES[stage]
    if spec.config_kind is None:
        return None
    path = getattr(cfg, stage)
    overrides = spec.overrides(cfg, ctx) + list(cfg.overrides.get(stage, []))
    return load_config(resolve_kind(spec.config_kind), path, overrides)


def _input_hash(cfg: RunConfig, stage: str, stage_cfg: Any, ctx: StageContext) -> str:
    """Config + upstream fingerprints + the content of the files the stage reads (the brand card
    for every stage after `model`: its system prompt, rules and exemplars shape training and eval)."""
    spec = STAGES[stage]
    upstream = {dep: ctx.fingerprints.get(dep) for dep in spec.depends_on}
    paths = ([cfg.brand] if stage != "model" else []) + spec.input_files(stage_cfg)
    files = {p: sha256_file(p) if Path(p).is_file() else "missing" for p in paths if p}
    return sha256_json(
        {
            "stage": stage,
            "config": to_dict(stage_cfg) if stage_cfg is not None else None,
            "upstream": upstream,
            "files": files,
            "code": spec.code_version,
        }
    )


def _skippable(cfg: RunConfig, stage: str, input_hash: str, ctx: StageContext) -> bool:
    state_file = _state_path(cfg, stage)
    if not state_file.exists():
        return False
    state = read_json(state_file)
    if state.get("input_hash") != input_hash:
        return False
    return STAGES[stage].fingerprint(cfg, ctx) == state.get("output_fingerprint")


def run_stage(cfg: RunConfig, stage: str, ctx: StageContext, force: bool) -> tuple[str, dict[str, float]]:
    """Run (or skip) one stage; return ("ran"|"skipped", profile): the profile is
    :class:`onbrand.profiling.StageProfile` ``as_dict()`` (wall/CPU seconds, peak RSS), zeros if skipped."""
    spec = STAGES[stage]
    stage_cfg = _stage_config(cfg, stage, ctx)
    input_hash = _input_hash(cfg, stage, stage_cfg, ctx)
    if not force and _skippable(cfg, stage, input_hash, ctx):
        state = read_json(_state_path(cfg, stage))
        ctx.fingerprints[stage] = state["output_fingerprint"]
        ctx.results[stage] = state.get("result", {})
        return "skipped", {"wall_seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_mb": 0.0, "engine_starts": 0}
    starts = POOL.starts
    with StageProfile() as prof:
        ctx.results[stage] = spec.run(cfg, stage_cfg, ctx)
    profile = {**prof.as_dict(), "engine_starts": POOL.starts - starts}  # vLLM engines started in-process
    fingerprint = spec.fingerprint(cfg, ctx)
    ctx.fingerprints[stage] = fingerprint
    atomic_write_json(
        _state_path(cfg, stage),
        {
            "stage": stage,
            "input_hash": input_hash,
            "output_fingerprint": fingerprint,
            "seconds": profile["wall_seconds"],
            "cpu_seconds": profile["cpu_seconds"],
            "peak_rss_mb": profile["peak_rss_mb"],
            "engine_starts": profile["engine_starts"],
            "result": ctx.results[stage],
        },
    )
    return "ran", profile


def _log_path(cfg: RunConfig, stage: str) -> Path:
    return Path(cfg.out_dir) / "stages" / f"{stage}.log"


def run_pipeline(
    cfg: RunConfig, force: tuple[str, ...] = (), config_path: str = "configs/demo.yaml", verbose: bool = False
) -> int:
    """Run ``cfg.stages`` in order; 0 = done, 1 = a stage or the gate failed, 2 = a user error
    (config, input), 130 = interrupted. Quiet unless ``verbose``: see :mod:`onbrand.console`."""
    ctx = StageContext(out_dir=Path(cfg.out_dir))
    with RunOutput(verbose) as out:
        out.line(f"onbrand run: {cfg.name}  (model {cfg.model}, brand {cfg.brand}) -> {cfg.out_dir}/")
        if not verbose:
            out.line(
                f"stage logs: {Path(cfg.out_dir) / 'stages'}/<stage>.log (onbrand run -v shows them here)"
            )
        timings: dict[str, tuple[str, dict[str, float]]] = {}
        n = len(cfg.stages)
        with POOL.keeping():  # one engine per run where it can sleep between stages
            for i, stage in enumerate(cfg.stages, 1):
                code = _attempt_stage(cfg, stage, f"[{i}/{n}] {stage}", ctx, out, force, config_path, timings)
                if code:
                    return code
        _print_summary(cfg, ctx, timings, out)
        gate = (ctx.results.get("eval") or {}).get("gate")
        if gate and not gate.get("passed"):
            failed = [c["name"] for c in gate["checks"] if not c["passed"]]
            out.line(f"\nGATE FAILED ({gate['config']}): {', '.join(failed)}", err=True)
            return 1
    return 0


def _attempt_stage(cfg, stage, name, ctx, out: RunOutput, force, config_path, timings) -> int:
    """Run one stage inside its log; on failure print what happened and return the exit code."""
    log = _log_path(cfg, stage)
    t0 = time.perf_counter()
    try:
        with out.stage(name, STAGES[stage].title, log) as log_file:
            status, profile = run_stage(cfg, stage, ctx, force=stage in force or "all" in force)
            log_file.write(
                f"==== {stage}: {status} (vLLM engines started in this process: {profile['engine_starts']})\n"
            )
    except KeyboardInterrupt:
        out.stage_done(name, "interrupted")
        out.line(
            f"\ninterrupted in stage '{stage}'; re-run `onbrand run {config_path}` to resume "
            f"(finished stages are skipped)",
            err=True,
        )
        return 130
    except Exception as e:  # noqa: BLE001 - report any stage failure the same way
        out.stage_done(name, f"FAILED after {time.perf_counter() - t0:.0f} s")
        return _report_failure(e, stage, log, out, config_path)
    timings[stage] = (status, profile)
    done = f"done in {profile['wall_seconds']:.0f} s (CPU {profile['cpu_seconds']:.0f} s, peak {profile['peak_rss_mb']:.0f} MiB)"
    out.stage_done(name, "skipped (inputs unchanged)" if status == "skipped" else done)
    return 0


def _report_failure(e: Exception, stage: str, log: Path, out: RunOutput, config_path: str) -> int:
    """A user error (config, input) is one line and exit 2; anything else exit 1 with the log's path
    (its traceback is in the log; ``--verbose`` prints it here too)."""
    message = user_error_message(e)
    if message is not None:
        where = "" if isinstance(e, ConfigError) else f"  (stage '{stage}'; log: {log})"
        out.line(message + where, err=True)
        return 2
    if out.verbose:
        out.line("".join(traceback.format_exception(e)).rstrip(), err=True)
    out.line(
        f"\nstage '{stage}' failed: {type(e).__name__}: {e}\n"
        f"see {log} for its log and the traceback\n"
        f"fix the cause and re-run `onbrand run {config_path}` (finished stages are skipped), "
        f"or `onbrand run {config_path} --force {stage}`",
        err=True,
    )
    return 1


def profile_lines(timings: dict[str, tuple[str, dict[str, float]]], eval_timings: dict | None) -> list[str]:
    """The stage profile table (wall, CPU, peak RSS per stage) and, for eval, where its time went."""
    lines = [f"\n{'stage':<10} {'wall s':>8} {'CPU s':>8} {'peak RSS MiB':>13}"]
    for k, (st, p) in timings.items():
        if st == "skipped":
            lines.append(f"{k:<10} {'skipped (inputs unchanged)':>31}")
        else:
            lines.append(
                f"{k:<10} {p['wall_seconds']:>8.0f} {p['cpu_seconds']:>8.0f} {p['peak_rss_mb']:>13.0f}"
            )
    total = sum(p["wall_seconds"] for _, p in timings.values())
    cpu = sum(p["cpu_seconds"] for _, p in timings.values())
    lines.append(f"{'total':<10} {total:>8.0f} {cpu:>8.0f}")
    if eval_timings and "generate_s" in eval_timings:
        fams = sorted((eval_timings.get("metric_s") or {}).items(), key=lambda kv: -kv[1])
        top = ", ".join(f"{k} {v:.0f}" for k, v in fams if v >= 1) or "all < 1 s"
        lines.append(
            f"eval: generation {eval_timings['generate_s']:.0f} s; metrics "
            f"{sum(v for _, v in fams):.0f} s ({top}); total {eval_timings.get('total_s', 0):.0f} s"
        )
    return lines


def _print_summary(
    cfg: RunConfig, ctx: StageContext, timings: dict[str, tuple[str, dict[str, float]]], out: RunOutput
) -> None:
    out.line("\n" + "=" * 78)
    out.line(f"onbrand run {cfg.name}: summary")
    out.line("=" * 78)
    for line in summary_lines(cfg, ctx):
        out.line(line)
    ran_eval = timings.get("eval", ("skipped",))[0] == "ran"
    eval_timings = (ctx.results.get("eval") or {}).get("timings") if ran_eval else None
    for line in profile_lines(timings, eval_timings):
        out.line(line)
    atomic_write_json(
        Path(cfg.out_dir) / "summary.json",
        {
            "name": cfg.name,
            "timings": {
                k: {"status": st, "seconds": p["wall_seconds"], **p} for k, (st, p) in timings.items()
            },
            "results": ctx.results,
        },
    )


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default="configs/demo.yaml", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides (dotted), e.g. out_dir=runs/x")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every stage's output (library logs included) here instead of only in "
        "<out_dir>/stages/<stage>.log",
    )
    p.add_argument(
        "--force",
        action="append",
        default=[],
        choices=(*KNOWN_STAGES, "all"),
        help="re-run STAGE even when its inputs are unchanged (repeatable; 'all' for every stage)",
    )


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(RunConfig, args.config, args.overrides)
    return run_pipeline(cfg, tuple(args.force), args.config, verbose=args.verbose)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onbrand run", description=__doc__)
    _add_args(parser)
    return _run(parser.parse_args(argv))


def register(sub) -> None:
    p = sub.add_parser("run", help="run the whole pipeline from one config (what `make demo` calls)")
    _add_args(p)
    p.set_defaults(func=_run)


if __name__ == "__main__":
    sys.exit(main())
