"""RL rollouts through transformers (the live policy) vs vLLM (the policy's LoRA, refreshed every
``sync_every`` steps), side by side on the embedded model: the same RL config, seeds and prompts.

    python -P scripts/bench_rl_rollouts.py [--init-from runs/demo/dpo] [--steps 6] [--runs live,vllm:1,vllm:4]

Each run is a fresh ``python -P -m onbrand.training.rl`` process (configs/rl/demo.yaml plus the
overrides below). Reported per run, as medians over steps 2..N (step 1 holds the vLLM start):
rollout tokens/s, rollout seconds, adapter-refresh seconds and wall seconds per RL step; plus the
whole wall time of the run (vLLM start included) and, for vLLM, the log-prob gap between vLLM's
sampling distribution and the trainer's. Writes bench/results/rl_rollouts.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
KEYS = (
    "rollout/tokens_per_s",
    "rollout/seconds",
    "rollout/sync_seconds",
    "step_seconds",
    "completion/length",
)


def run_one(spec: str, args, work: Path) -> dict:
    engine, _, sync = spec.partition(":")
    out = work / spec.replace(":", "-sync")
    overrides = [
        f"init_from={args.init_from}", f"out_dir={out}", f"train.max_steps={args.steps}", "train.save_every=0",
        "train.tracking.wandb=disabled", f"rollout.engine={engine}", f"rollout.max_new_tokens={args.max_new_tokens}",
    ]  # fmt: skip
    if sync:
        overrides.append(f"rollout.sync_every={sync}")
    env = {**os.environ, "PYTHONSAFEPATH": "1", "OMP_WAIT_POLICY": "PASSIVE", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-P", "-m", "onbrand.training.rl", "--config", args.config, *overrides]
    load = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{spec}: RL run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    later = rows[1:] or rows
    res = {"run": spec, "engine": engine, "sync_every": int(sync) if sync else None, "steps": len(rows),
           "run_wall_seconds": round(wall, 1), "load_avg_1m_at_start": load, "step1_seconds": round(rows[0]["step_seconds"], 2),
           "command": " ".join(["python -P -m onbrand.training.rl --config", args.config, *overrides[2:]])}  # fmt: skip
    for key in KEYS:
        res[f"median_{key}"] = round(statistics.median(r[key] for r in later), 3)
    if engine == "vllm":
        res["median_rollout/logp_gap_synced"] = _median(
            r["rollout/logp_gap"] for r in rows if r["rollout/synced"]
        )
        res["median_rollout/logp_gap_lagged"] = _median(
            r["rollout/logp_gap"] for r in rows if not r["rollout/synced"]
        )
    res["reward_task_per_step"] = [round(r["reward/task"], 4) for r in rows]
    return res


def _median(values) -> float | None:
    vals = list(values)
    return round(statistics.median(vals), 6) if vals else None


def write(results: list[dict], args) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "load_avg_1m_at_start": args.load,
        "cpus": os.cpu_count(), "init_from": args.init_from, "steps": args.steps,
        "max_new_tokens": args.max_new_tokens, "config": args.config,
    }  # fmt: skip
    (RESULTS / "rl_rollouts.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=2) + "\n")
    base = next((r for r in results if r["engine"] == "live"), results[0])
    lines = [
        "## RL rollouts: transformers (live policy) vs vLLM (LoRA refreshed every sync_every steps)",
        "",
        f"`python -P scripts/bench_rl_rollouts.py --init-from {args.init_from} --steps {args.steps} "
        f"--runs {args.runs}` on {meta['date']}, {meta['cpus']} shared CPUs (load {args.load} at start). "
        f"configs/rl/demo.yaml: 2 prompts x 4 completions x at most {args.max_new_tokens} new tokens per "
        "step, fp32; medians over steps 2..N (step 1 also starts vLLM).",
        "",
        "| run | load at start | rollout tokens/s | rollout s/step | refresh s/step | RL step s | step 1 s | "
        "run wall s | log-prob gap (synced / lagged) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        gap = (
            f"{r['median_rollout/logp_gap_synced']} / {r['median_rollout/logp_gap_lagged']}"
            if r["engine"] == "vllm"
            else "0 (on-policy)"
        )
        speed = r["median_rollout/tokens_per_s"] / base["median_rollout/tokens_per_s"]
        lines.append(
            f"| {r['run']} | {r['load_avg_1m_at_start']} | {r['median_rollout/tokens_per_s']:.1f} (x{speed:.2f}) | {r['median_rollout/seconds']:.2f} "
            f"| {r['median_rollout/sync_seconds']:.2f} | {r['median_step_seconds']:.2f} | {r['step1_seconds']:.1f} "
            f"| {r['run_wall_seconds']:.0f} | {gap} |"
        )
    (RESULTS / "rl_rollouts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/rl/demo.yaml")
    ap.add_argument("--init-from", default="runs/demo/dpo")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--runs", default="live,vllm:1,vllm:4")
    args = ap.parse_args(argv)
    args.load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-rl-") as tmp:
        results = [run_one(spec, args, Path(tmp)) for spec in args.runs.split(",")]
    write(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
