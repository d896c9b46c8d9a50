"""onbrand DPO vs TRL DPOTrainer, side by side in one run (a benchmark, not a test).

Same embedded model, data snapshot, LoRA config (r, alpha, all linear layers), beta, loss type,
batch, max length, steps and data order (sequential), at the same dtype:

  (a) TRL DPOTrainer, its defaults except dtype and gradient checkpointing off;
  (b) the same with ``precompute_ref_log_probs=True`` (its up-front cost counted in the total);
  (c) onbrand (shared-prefix packing, fused log-probs, cached reference).

Each configuration runs in its own subprocess (clean peak RSS). "Real tokens" are the non-pad
tokens of the data (prompt+chosen and prompt+rejected per pair), the same count for every
implementation, so tokens/s compare the same work. Writes ``bench/results/train.json`` and
``bench/results/train.md``.

    python scripts/bench_train.py                      # fp32 and bf16, 8 steps of 4 pairs
    python scripts/bench_train.py --dtypes fp32 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "embedded:smollm2-135m-instruct"
SNAPSHOT = "runs/demo/snapshot"
BRAND = "configs/brands/aurora.yaml"
RESULTS = Path("bench/results")


def records(args) -> list[dict]:
    from onbrand.data.snapshot import load_snapshot

    dd, _ = load_snapshot(args.snapshot)
    n = args.steps * args.batch
    if len(dd["train"]) < n:
        raise SystemExit(f"{args.snapshot}: {len(dd['train'])} train pairs < steps*batch = {n}")
    return [dd["train"][i] for i in range(n)]


def data_tokens(args, recs) -> list[int]:
    """Non-pad tokens per pair: (prompt + chosen) + (prompt + rejected), as TRL tokenizes them."""
    from onbrand.models import load_tokenizer
    from onbrand.training.batching import tokenize_pair
    from onbrand.training.common import brand_prompt

    tok = load_tokenizer(MODEL)
    sp, _ = brand_prompt(BRAND)
    out = []
    for r in recs:
        p = tokenize_pair(tok, r, sp, args.max_length)
        out.append(2 * len(p.prompt) + len(p.chosen) + len(p.rejected))
    return out


# ----------------------------------------------------------------------------- workers
def worker_trl(args, precompute: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from onbrand.models import load_model, load_tokenizer
    from onbrand.training.batching import with_system
    from onbrand.training.common import brand_prompt
    from onbrand.training.lora import ALL_LINEAR

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sp, _ = brand_prompt(BRAND)
    recs = records(args)
    ds = Dataset.from_list(
        [
            {"prompt": with_system(sp, r["prompt"]), "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in recs
        ]
    )
    t0 = time.perf_counter()
    tok = load_tokenizer(MODEL)
    model = load_model(MODEL)
    cfg = DPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, beta=args.beta, loss_type=["sigmoid"],
        max_length=args.max_length, bf16=args.dtype == "bf16", gradient_checkpointing=False, report_to=[],
        use_cpu=True, logging_steps=1, save_strategy="no", precompute_ref_log_probs=precompute,
        train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    lora = LoraConfig(
        r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0, target_modules=ALL_LINEAR, task_type="CAUSAL_LM"
    )
    steps, losses = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            steps.append(time.perf_counter() - self.t)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora)
    trainer.add_callback(Timer())
    trainer.train()
    return {"step_seconds": steps, "losses": losses, "total_seconds": time.perf_counter() - t0}


def worker_onbrand(args) -> dict:
    import torch

    from onbrand.training import dpo
    from onbrand.training.tracking import read_metrics

    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp()) / "run"
    overrides = [
        f"model={MODEL}", "init_from=null", f"out_dir={out}", f"data.snapshot={args.snapshot}", f"data.brand={BRAND}",
        f"data.max_train_pairs={args.steps * args.batch}", "data.max_eval_pairs=1", f"ref_cache_dir={out.parent / 'cache'}",
        f"lora.r={args.r}", f"lora.alpha={2 * args.r}", "lora.layers=0", "lora.dropout=0.0",
        f"train.batch_size={args.batch}", f"train.max_steps={args.steps}", f"train.max_length={args.max_length}",
        f"train.lr={args.lr}", "train.scheduler=constant", "train.warmup_ratio=0.0", "train.shuffle=false",
        f"train.precision={args.dtype}", f"train.threads={args.threads}", "train.tracking.wandb=disabled",
        "train.save_every=0", f"dpo.beta={args.beta}", "dpo.loss_type=sigmoid", "dpo.nll_weight=0",
    ]  # fmt: skip
    t0 = time.perf_counter()
    dpo.main(["--config", "configs/dpo/demo.yaml", *overrides])
    total = time.perf_counter() - t0
    rows = read_metrics(out)
    return {
        "step_seconds": [r["step_seconds"] for r in rows],
        "losses": [r["loss"] for r in rows],
        "total_seconds": total,
    }


def run_worker(args) -> None:
    fn = {
        "trl": lambda: worker_trl(args, False),
        "trl_pre": lambda: worker_trl(args, True),
        "onbrand": lambda: worker_onbrand(args),
    }
    res = fn[args.worker]()
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.result).write_text(json.dumps(res))


# ----------------------------------------------------------------------------- driver
LABELS = {
    "trl": "(a) TRL DPOTrainer",
    "trl_pre": "(b) TRL + precompute_ref_log_probs",
    "onbrand": "(c) onbrand",
}


def summarize(raw: dict, tokens_per_step: list[int]) -> dict:
    step_s = raw["step_seconds"]
    # the first step includes one-off warm-up (allocator, autocast caches): report the median
    med = statistics.median(step_s)
    tok_med = statistics.median(tokens_per_step)
    return {
        "s_per_step_median": med,
        "real_tokens_per_s": tok_med / med,
        "total_seconds": raw["total_seconds"],
        "peak_rss_mb": raw["peak_rss_mb"],
        "losses": raw["losses"],
        "first_loss": raw["losses"][0] if raw["losses"] else None,
    }


def markdown(cmd: str, results: dict, targets: dict) -> str:
    lines = [
        "## Training: onbrand DPO vs TRL DPOTrainer",
        "",
        "SmolLM2-135M (embedded), demo snapshot, LoRA on all linear layers, sigmoid DPO, same data order; "
        "real tokens = non-pad tokens of prompt+chosen and prompt+rejected (same work for all). "
        "Medians of the step times; total includes model load and any reference precompute.",
        "",
        "```",
        cmd,
        "```",
        "",
        "| dtype | implementation | s/step (median) | real tok/s | vs (a) | vs (b) | total s | peak RSS MB | RSS vs (a) | loss step 1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype, rows in results.items():
        a, b = rows.get("trl"), rows.get("trl_pre")
        for name, r in rows.items():
            va = f"{r['real_tokens_per_s'] / a['real_tokens_per_s']:.2f}x" if a else "-"
            vb = f"{r['real_tokens_per_s'] / b['real_tokens_per_s']:.2f}x" if b else "-"
            ra = f"{r['peak_rss_mb'] / a['peak_rss_mb']:.2f}" if a else "-"
            lines.append(
                f"| {dtype} | {LABELS[name]} | {r['s_per_step_median']:.2f} | {r['real_tokens_per_s']:.0f} | {va} | {vb} | "
                f"{r['total_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {ra} | {r['first_loss']:.6f} |"
            )
    lines += ["", "Loss at each step:", "", "| dtype | implementation | losses |", "|---|---|---|"]
    for dtype, rows in results.items():
        for name, r in rows.items():
            lines.append(f"| {dtype} | {LABELS[name]} | {', '.join(f'{x:.4f}' for x in r['losses'])} |")
    lines += ["", "Targets (onbrand vs TRL at the same dtype):", ""]
    for dtype, t in targets.items():
        lines.append(
            f"- {dtype}: ≥3x (a) tok/s: **{'met' if t['x_a'] >= 3 else 'not met'}** ({t['x_a']:.2f}x); "
            f"≥1.5x (b) tok/s: **{'met' if t['x_b'] >= 1.5 else 'not met'}** ({t['x_b']:.2f}x); "
            f"RSS ≤0.6x (a): **{'met' if t['rss'] <= 0.6 else 'not met'}** ({t['rss']:.2f}); "
            f"first-step loss within 1e-4 of TRL: **{'met' if t['loss_diff'] <= 1e-4 else 'not met'}** "
            f"({t['loss_diff']:.2e})"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--impls", default="trl,trl_pre,onbrand")
    p.add_argument("--snapshot", default=SNAPSHOT)
    p.add_argument("--name", default="train")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    import torch

    cmd = "python scripts/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    recs = records(args)
    per_pair = data_tokens(args, recs)
    tokens_per_step = [sum(per_pair[i * args.batch : (i + 1) * args.batch]) for i in range(args.steps)]
    results: dict = {}
    for dtype in args.dtypes.split(","):
        results[dtype] = {}
        for impl in args.impls.split(","):
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                out = f.name
            sub = [sys.executable, "-P", __file__, "--worker", impl, "--dtype", dtype, "--result", out,
                   "--steps", str(args.steps), "--batch", str(args.batch), "--max-length", str(args.max_length),
                   "--r", str(args.r), "--beta", str(args.beta), "--lr", str(args.lr), "--threads", str(args.threads),
                   "--snapshot", args.snapshot]  # fmt: skip
            print(f"[bench_train] {dtype} {LABELS[impl]} ...", file=sys.stderr, flush=True)
            subprocess.run(sub, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            results[dtype][impl] = summarize(json.loads(Path(out).read_text()), tokens_per_step)
            r = results[dtype][impl]
            print(f"  {r['s_per_step_median']:.2f} s/step, {r['real_tokens_per_s']:.0f} tok/s, "
                  f"{r['peak_rss_mb']:.0f} MB, losses {r['losses']}", file=sys.stderr, flush=True)  # fmt: skip
    targets = {}
    for dtype, rows in results.items():
        if {"trl", "trl_pre", "onbrand"} <= rows.keys():
            o, a, b = rows["onbrand"], rows["trl"], rows["trl_pre"]
            targets[dtype] = {
                "x_a": o["real_tokens_per_s"] / a["real_tokens_per_s"],
                "x_b": o["real_tokens_per_s"] / b["real_tokens_per_s"],
                "rss": o["peak_rss_mb"] / a["peak_rss_mb"],
                "loss_diff": abs(o["first_loss"] - a["first_loss"]),
            }
    payload = {
        "name": args.name,
        "command": cmd,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        },  # fmt: skip
        "settings": {
            k: getattr(args, k) for k in ("steps", "batch", "max_length", "r", "beta", "lr", "dtypes")
        },
        "tokens_per_step": tokens_per_step,
        "results": results,
        "targets": targets,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    from onbrand.artifacts import atomic_write_json, atomic_write_text

    atomic_write_json(RESULTS / f"{args.name}.json", payload)
    md = markdown(cmd, results, targets)
    atomic_write_text(RESULTS / f"{args.name}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
