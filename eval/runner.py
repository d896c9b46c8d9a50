"""The ``onbrand eval`` stage: generate with base and aligned from one engine, score, report, gate.

``run_eval(cfg) -> report dict`` is what the pipeline calls; ``main(argv)`` is the recipe entry::

    onbrand eval --config configs/eval/demo.yaml [key=value ...] [--gate configs/eval/gates.yaml]

Steps: resolve inputs -> generate (vLLM LoRA requests or transformers) -> free the engine -> score
(reward model, brand rules, voice, log-prob metrics on one PEFT model holding the aligned adapter
and the DPO reference) -> report dir (report.json, report.md, PNGs, samples.jsonl).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from onbrand.config import load_config, to_dict
from onbrand.embedder import load_embedder
from onbrand.engines import Request, get_engine
from onbrand.eval.config import EvalConfig
from onbrand.eval.inputs import Aligned, PromptSet, load_prompts, resolve_aligned, with_system
from onbrand.scoring import load_scorer

ALIGNED, REFERENCE = "aligned", "reference"


def _log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


def generate_both(cfg: EvalConfig, aligned: Aligned, chats: list[list[dict]]) -> tuple[list, list, str]:
    """Greedy/sampled generations for base and aligned, in prompt order; returns (base, aligned, engine kind)."""
    opts = dict(
        kv_cache_gib=cfg.kv_cache_gib, max_model_len=cfg.max_model_len, seed=cfg.seed,
        batch_size=cfg.batch_size, progress=True,
    )  # fmt: skip
    base_reqs = [Request(c, None, f"base-{i}") for i, c in enumerate(chats)]
    if aligned.kind == "adapter":
        engine = get_engine(cfg.engine, aligned.base_model, {ALIGNED: aligned.path}, **opts)
        try:
            al_reqs = [Request(c, ALIGNED, f"aligned-{i}") for i, c in enumerate(chats)]
            outs = engine.generate(base_reqs + al_reqs, cfg.sampling)
            kind = engine.kind
        finally:
            engine.close()
        return outs[: len(chats)], outs[len(chats) :], kind
    # A merged checkpoint is a different model: one engine each, one at a time (memory).
    outs = []
    for model in (aligned.base_model, aligned.path):
        engine = get_engine(cfg.engine, model, None, **opts)
        try:
            outs.append(engine.generate(base_reqs, cfg.sampling))
            kind = engine.kind
        finally:
            engine.close()
    return outs[0], outs[1], kind


class LogProbModels:
    """Teacher-forced log-probs for base / aligned / reference from one PEFT model (plus a second
    model when aligned is a merged checkpoint)."""

    def __init__(self, aligned: Aligned, batch_size: int):
        from onbrand.engines.hf import load_with_adapters

        adapters = {}
        if aligned.kind == "adapter":
            adapters[ALIGNED] = aligned.path
        if aligned.reference_adapter is not None:
            adapters[REFERENCE] = aligned.reference_adapter
        self.model, self.tokenizer = load_with_adapters(aligned.base_model, adapters)
        self.merged = None
        if aligned.kind == "merged":
            from onbrand.models import load_model

            self.merged = load_model(aligned.path).eval()
        self.has_reference = aligned.reference_adapter is not None
        self.batch_size = batch_size

    def fn(self, which: str):
        from onbrand.engines.hf import use_adapter
        from onbrand.eval.metrics.logprobs import token_logprobs

        def run(prompts, responses):
            if which == ALIGNED and self.merged is not None:
                return token_logprobs(self.merged, prompts, responses, self.batch_size)
            adapter = {"base": None, ALIGNED: ALIGNED, REFERENCE: REFERENCE if self.has_reference else None}[
                which
            ]
            with use_adapter(self.model, adapter) as m:
                return token_logprobs(m, prompts, responses, self.batch_size)

        return run


def _channels(card, channels: list[str | None], warnings: list[str]) -> list[str | None]:
    known = set(getattr(card, "channels", {}) or {})
    unknown = sorted({c for c in channels if c is not None and c not in known})
    if unknown:
        warnings.append(
            f"prompt channels {unknown} are not in the brand card: their channel rules are not checked"
        )
    return [c if c in known else None for c in channels]


def score_all(
    cfg, aligned, ps: PromptSet, chats, base_gen, al_gen, card, scorer, embedder, warnings, judge=None
) -> dict:
    """Every metric family; a family whose input is missing is recorded under ``skipped``."""
    from onbrand.eval.metrics import compliance, drift, winrate

    m: dict[str, Any] = {"skipped": {}}
    base_txt, al_txt = [g.text for g in base_gen], [g.text for g in al_gen]
    base_len, al_len = [len(g.token_ids[0]) for g in base_gen], [len(g.token_ids[0]) for g in al_gen]
    nb, seed = cfg.bootstrap, cfg.seed
    m["drift"] = drift.drift(al_txt, base_txt, al_len, base_len)
    if cfg.metrics.reward and (scorer is not None or cfg.reward):
        if scorer is None:
            scorer = load_scorer(cfg.reward)
        ra, rb = winrate.score_pairs(scorer, chats, al_txt, base_txt)
        m["win_rate"] = winrate.win_rates(ra, rb, al_len, base_len, nb, cfg.ci, seed, cfg.lc_warn_gap)
        m["rewards"] = {"aligned": ra, "base": rb}
        if m["win_rate"]["warning"]:
            warnings.append(m["win_rate"]["warning"])
    elif cfg.metrics.reward:
        m["skipped"]["win_rate"] = "no reward model (set reward: <reward run dir>)"
    chans = _channels(card, ps.channels, warnings) if card is not None else ps.channels
    if cfg.metrics.compliance and card is not None:
        m["compliance"] = compliance.compliance(card, al_txt, base_txt, chans, nb, seed)
    elif cfg.metrics.compliance:
        m["skipped"]["compliance"] = "no brand card (set brand: configs/brands/<id>.yaml)"
    if cfg.metrics.voice:
        _voice(cfg, card, al_txt, base_txt, chans, embedder, m)
    if cfg.metrics.kl or cfg.metrics.implicit or cfg.metrics.perplexity:
        _logprob_metrics(cfg, aligned, ps, chats, al_gen, card, m)
    if judge is not None:
        _judge(cfg, judge, card, chats, al_txt, base_txt, chans, m, warnings)
    return m


def _judge(cfg, judge, card, chats, al_txt, base_txt, chans, m, warnings) -> None:
    """The pairwise LLM judge (prepared before generation by ``onbrand.eval.judge.prepare``)."""
    _log(f"LLM judge: {2 * len(chats)} verdicts from {judge.backend.describe().get('model')}")
    j = judge.run(card, chats, al_txt, base_txt, chans, m.get("rewards"), cfg.bootstrap, cfg.ci, cfg.seed)
    m["judge"] = j
    m.setdefault("timings", {})["judge_s"] = j["cost"]["seconds"]
    if j["invalid_rate"] > 0.2:
        warnings.append(f"LLM judge: {j['invalid_answers']} of {2 * j['n_items']} answers were invalid "
                        f"({j['invalid_kinds']}); its win rate covers {j['n_valid']} of {j['n_items']} prompts")  # fmt: skip


def kl_note(sampling) -> str:
    """What the KL number means for these samples: only plain sampling (temperature 1, top_p 1,
    no repetition penalty) draws from the aligned model itself, so only then is it a KL estimate."""
    if sampling.greedy:
        how = "greedy samples: log-ratio at the aligned mode"
        return how + (
            f" (repetition penalty {sampling.repetition_penalty})"
            if sampling.repetition_penalty != 1.0
            else ""
        )
    if sampling.temperature == 1.0 and sampling.top_p == 1.0 and sampling.repetition_penalty == 1.0:
        return "sampled from the aligned model: Monte Carlo KL estimate"
    return (
        f"samples at temperature {sampling.temperature}, top_p {sampling.top_p}, repetition penalty "
        f"{sampling.repetition_penalty} (as served): mean log-ratio on the served outputs, not an unbiased KL"
    )


def _voice(cfg, card, al_txt, base_txt, chans, embedder, m) -> None:
    """Similarity to the card's exemplars; without any, to the snapshot's train chosen answers."""
    from onbrand.eval.inputs import train_exemplars
    from onbrand.eval.metrics import voice

    exemplars = list(getattr(card, "exemplars", []) or [])
    reference = f"the brand card's {len(exemplars)} exemplars"
    if not exemplars and cfg.snapshot:
        exemplars = train_exemplars(cfg.snapshot, card)
        reference = f"{len(exemplars)} train chosen answers, the card has no exemplars"
    if not exemplars:
        m["skipped"]["voice"] = (
            "the brand card has no exemplars (and no snapshot train split to fall back on)"
        )
        return
    m["voice"] = voice.voice(
        embedder or load_embedder(), al_txt, base_txt, chans, exemplars, cfg.bootstrap, cfg.seed
    )
    m["voice"]["reference"] = reference


def _logprob_metrics(cfg, aligned, ps, chats, al_gen, card, m) -> None:
    from onbrand.engines import render_prompt
    from onbrand.engines.base import stop_token_ids
    from onbrand.eval.inputs import general_text_files
    from onbrand.eval.metrics import logprobs

    t0 = time.perf_counter()
    lp = LogProbModels(aligned, cfg.batch_size)
    tok = lp.tokenizer
    nb, seed = cfg.bootstrap, cfg.seed
    if cfg.metrics.kl:
        prompt_ids = [render_prompt(tok, c) for c in chats]
        m["kl"] = logprobs.kl_estimate(
            lp.fn(ALIGNED), lp.fn("base"), prompt_ids, [g.token_ids[0] for g in al_gen], nb, seed
        )
        m["kl"]["note"] = kl_note(cfg.sampling)
    if cfg.metrics.implicit and ps.pairs:
        end = stop_token_ids(tok, getattr(lp.model, "generation_config", None))[:1]
        system = card.system_prompt() if card is not None else None
        p_ids = [render_prompt(tok, with_system(p["prompt"], system)) for p in ps.pairs]

        def resp(p, key):
            text = "".join(x["content"] for x in p[key] if x["role"] == "assistant")
            return tok.encode(text, add_special_tokens=False) + end

        chosen = [resp(p, "chosen") for p in ps.pairs]
        rejected = [resp(p, "rejected") for p in ps.pairs]
        m["implicit"] = logprobs.implicit_reward(
            lp.fn(ALIGNED), lp.fn(REFERENCE), p_ids, chosen, rejected, aligned.beta, nb, seed
        )
        m["implicit"]["reference"] = str(aligned.reference_adapter or "base model")
    elif cfg.metrics.implicit:
        m["skipped"]["implicit"] = (
            "no held-out preference pairs (needs a snapshot or records with chosen/rejected)"
        )
    if cfg.metrics.perplexity:
        ids: list[int] = []
        for f in general_text_files():
            ids += tok.encode(f.read_text(encoding="utf-8"), add_special_tokens=False)
        ids = ids[: cfg.ppl_max_tokens] if cfg.ppl_max_tokens else ids
        win = logprobs.windows(ids, cfg.ppl_window)
        pb, pa = logprobs.perplexity(lp.fn("base"), win), logprobs.perplexity(lp.fn(ALIGNED), win)
        m["perplexity"] = {"base": pb, "aligned": pa, "ratio": pa["ppl"]["value"] / pb["ppl"]["value"]}
    m.setdefault("timings", {})["logprob_s"] = round(time.perf_counter() - t0, 1)


def flatten_samples(ps: PromptSet, chats, base_gen, al_gen):
    """With ``n`` samples per prompt, sample ``j`` of base is paired with sample ``j`` of aligned and
    each pair becomes one row (ids ``<id>#j``): every metric then averages over all samples."""
    from dataclasses import replace

    from onbrand.engines import Generation

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
    from onbrand.eval.independence import JUDGE_SAW_TRAINING, judge_independence

    reward = cfg.reward if cfg.metrics.reward else None
    ji = judge_independence(cfg.aligned if aligned.run else None, reward, cfg.allow_judge_overlap)
    if ji["overlap"]:
        warnings.append(f"{JUDGE_SAW_TRAINING}: the reward model was trained on {ji['overlap']} record(s) "
                        "the policy was trained on (allow_judge_overlap=true); its win rate is not independent")  # fmt: skip
    elif reward and not ji["checked"]:
        warnings.append(f"judge independence not checked: {ji['detail']}")
    return ji


def _adversarial_items(cfg: EvalConfig, card, skipped: dict[str, str]) -> list[dict[str, Any]]:
    from onbrand.eval.metrics.adversarial import suite

    if not cfg.adversarial.enabled:
        return []
    if card is None:
        skipped["adversarial"] = "no brand card (set brand: configs/brands/<id>.yaml)"
        return []
    items = suite(card, cfg.adversarial.per_rule, cfg.adversarial.inputs)
    if not items:
        skipped["adversarial"] = "no adversarial prompts (adversarial.per_rule=0 and no inputs)"
    return items


def _score_adversarial(cfg, card, items, base_gen, al_gen, warnings) -> dict[str, Any]:
    from onbrand.eval.metrics.adversarial import adversarial

    texts = lambda gens: [g.texts for g in gens]  # noqa: E731 - every sample of each prompt
    out = adversarial(card, items, texts(base_gen), texts(al_gen), cfg.bootstrap, cfg.ci, cfg.seed)
    if out["worse_rules"]:
        warnings.append(
            "adversarial prompts: aligned breaks these rules more often than base: "
            + ", ".join(out["worse_rules"])
        )
    return out


def run_eval(cfg: EvalConfig, scorer=None, embedder=None) -> dict[str, Any]:
    """Run the whole eval stage; returns the report dict (also written to ``cfg.out_dir``).

    ``scorer`` (anything with ``.score(conversations) -> list[float]``) and ``embedder`` (anything
    with ``.encode(texts)``) override the reward run and the MiniLM embedder (tests, custom RMs).
    """
    from onbrand.eval.metrics.power import power_analysis
    from onbrand.eval.report import build_report, write_report

    t0 = time.perf_counter()
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    aligned = resolve_aligned(cfg.aligned, cfg.base_model, cfg.beta)
    warnings: list[str] = []
    judge_ind = _judge_check(cfg, aligned, warnings)  # before any generation: fail fast
    llm_judge = None
    if cfg.metrics.judge:  # also before generation: endpoint reachable, not the policy judging itself
        from onbrand.eval.judge import prepare

        llm_judge = prepare(cfg, aligned, warnings)
    ps = load_prompts(cfg.snapshot, cfg.prompts, cfg.split, cfg.max_prompts, cfg.max_pairs)
    card = None
    if cfg.brand:
        from onbrand.data.brand import load_brand

        card = load_brand(cfg.brand)
    system = card.system_prompt() if card is not None else None
    if card is not None and aligned.run and aligned.run.get("system_prompt") not in (None, system):
        warnings.append(
            "the aligned run was trained with a different system prompt than this brand card renders"
        )
    chats = [with_system(p, system) for p in ps.prompts]
    skipped: dict[str, str] = {}
    adv_items = _adversarial_items(cfg, card, skipped)
    adv_chats = [with_system([{"role": "user", "content": it["prompt"]}], system) for it in adv_items]
    _log(
        f"{len(chats)} prompts from {ps.source} + {len(adv_chats)} adversarial; aligned = {aligned.kind} {aligned.path}"
    )
    t_gen = time.perf_counter()
    # One engine call for the main and the adversarial prompts: same engine start, same sampling.
    base_all, al_all, engine_kind = generate_both(cfg, aligned, chats + adv_chats)
    gen_s = time.perf_counter() - t_gen
    n_main = len(chats)
    base_gen, al_gen = base_all[:n_main], al_all[:n_main]
    adv_base, adv_al = base_all[n_main:], al_all[n_main:]
    _log(f"generated with {engine_kind} in {gen_s:.1f}s; scoring")
    if cfg.sampling.n > 1:
        ps, chats, base_gen, al_gen = flatten_samples(ps, chats, base_gen, al_gen)
    metrics = score_all(
        cfg, aligned, ps, chats, base_gen, al_gen, card, scorer, embedder, warnings, llm_judge
    )
    metrics["skipped"].update(skipped)
    if adv_items:
        metrics["adversarial"] = _score_adversarial(cfg, card, adv_items, adv_base, adv_al, warnings)
    metrics["power"] = power_analysis(metrics, n_main)
    metrics.setdefault("timings", {}).update(
        generate_s=round(gen_s, 1), total_s=round(time.perf_counter() - t0, 1)
    )
    report = build_report(
        cfg, aligned, ps, chats, base_gen, al_gen, metrics, warnings, engine_kind, to_dict(cfg), judge_ind
    )
    if cfg.gate:
        report["gate"] = apply_gate(report, cfg.gate)
    adv_rows = [{**it, "base": b.texts, "aligned": a.texts} for it, b, a in zip(adv_items, adv_base, adv_al)]
    write_report(Path(cfg.out_dir), report, ps, chats, base_gen, al_gen, cfg.samples_in_report, adv_rows)
    _log(f"report written to {cfg.out_dir}/report.md")
    return report


def apply_gate(report: dict[str, Any], gate_path: str) -> dict[str, Any]:
    """``{"config", "passed", "checks": [...]}`` for the thresholds in ``gate_path``."""
    from onbrand.eval.gate import GateConfig, check_gate

    checks = check_gate(report, load_config(GateConfig, gate_path))
    return {
        "config": str(gate_path),
        "passed": all(c.passed for c in checks),
        "checks": [c.to_dict() for c in checks],
    }


def print_gate(gate: dict[str, Any]) -> int:
    """Print the gate checks; 0 when all pass, 1 otherwise."""
    from onbrand.eval.gate import GateCheck, format_checks

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
    import json

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
