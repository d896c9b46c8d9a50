"""Benchmark the eval stage: what the honest-evidence additions cost in wall time.

Side by side in one sitting, on the same trained demo runs (``runs/demo`` after ``make demo``),
``onbrand eval --config configs/eval/demo.yaml`` runs in two settings, alternating, each in its
own process:

- ``before``: the eval as it was before the honest-evidence work: greedy decoding without a
  repetition penalty and no adversarial suite (``sampling.temperature=0
  sampling.repetition_penalty=1.0 adversarial.enabled=false``);
- ``now``: the shipped config (served sampling with a repetition penalty, the adversarial suite in
  the same engine call, judge-lineage check, power analysis).

The figure of merit is the ratio of median wall times (``now / before``); the issue's budget is
at most 1.25. Each run's ``report.json`` timings (generation, log-prob pass, total) are kept too.

    python scripts/bench_eval.py                  # 2 x 2 evals, about 20 min on 2 cores
    python scripts/bench_eval.py --repeats 1      # one of each, about 10 min

Writes ``bench/results/eval.json`` and ``bench/results/eval.md``.
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
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SETTINGS = {
    "before": ["sampling.temperature=0", "sampling.repetition_penalty=1.0", "adversarial.enabled=false"],
    "now": [],
}


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].replace("(R)", "").replace(" Processor", "").strip()
    return platform.processor() or platform.machine()


def run_eval(config: str, overrides: list[str], out_dir: Path) -> dict:
    """One ``onbrand eval`` in a fresh process (safe path: the repo's folders shadow PyPI names)."""
    cmd = [
        sys.executable,
        "-P",
        "-m",
        "onbrand.cli",
        "eval",
        "--config",
        config,
        f"out_dir={out_dir}",
        *overrides,
    ]
    env = {
        **os.environ,
        "PYTHONSAFEPATH": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "TOKENIZERS_PARALLELISM": "false",
    }
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    report = json.loads((out_dir / "report.json").read_text())
    timings = report["metrics"].get("timings", {})
    return {"wall_s": round(wall, 1), **{k: timings.get(k) for k in ("generate_s", "logprob_s", "total_s")},
            "n_prompts": report["inputs"]["n_prompts"],
            "adversarial_prompts": (report["metrics"].get("adversarial") or {}).get("n_prompts", 0)}  # fmt: skip


def markdown(res: dict) -> str:
    rows = [
        "| setting | eval wall (median) | generation | log-prob pass | prompts (+ adversarial) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in SETTINGS:
        runs = res["runs"][name]

        def med(key: str, runs=runs) -> float:
            return statistics.median(r[key] for r in runs if r[key] is not None)

        rows.append(f"| {name} | {med('wall_s'):.0f} s | {med('generate_s'):.0f} s | {med('logprob_s'):.0f} s | "
                    f"{runs[0]['n_prompts']} (+{runs[0]['adversarial_prompts']}) |")  # fmt: skip
    return (
        "## Eval stage: cost of the honest-evidence checks\n\n"
        f"`python scripts/bench_eval.py --repeats {res['repeats']}` on {res['date']} ({res['load']}), "
        f"the demo's trained runs, settings alternating, each eval in its own process.\n\n"
        + "\n".join(rows)
        + f"\n\n**now / before = {res['ratio']:.2f}x** median eval wall time (budget: at most 1.25x). "
        "`before` = greedy, no repetition penalty, no adversarial suite; `now` = the shipped "
        "`configs/eval/demo.yaml`.\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/eval/demo.yaml")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    load = f"{_cpu()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start"
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        for i in range(args.repeats):
            order = list(SETTINGS) if i % 2 == 0 else list(reversed(SETTINGS))
            for name in order:
                got = run_eval(args.config, SETTINGS[name], Path(tmp) / f"{name}-{i}")
                print(f"{name} #{i}: {got}", flush=True)
                runs[name].append(got)
    ratio = statistics.median(r["wall_s"] for r in runs["now"]) / statistics.median(
        r["wall_s"] for r in runs["before"]
    )
    res = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "load": load, "repeats": args.repeats,
           "machine": platform.processor() or platform.machine(), "settings": SETTINGS, "runs": runs,
           "ratio": round(ratio, 3)}  # fmt: skip
    print(markdown(res))
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "eval.json").write_text(json.dumps(res, indent=2) + "\n")
        (RESULTS / "eval.md").write_text(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
