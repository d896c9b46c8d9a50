"""Benchmark ``onbrand monitor``: conversations per second (rules only; rules + reward model) and peak
memory on generated logs of 100k and 1M conversations (each measured in a fresh process).

    python -P scripts/bench_monitor.py            # writes bench/results/monitor.{json,md}

The logs are OpenAI-format JSONL (no rule results: the monitor runs the brand card's checks on every
answer, its heavier path), 30 days, the demo card's channels, about 8% of answers breaking a rule.
Rules + reward model: a reward run on the embedded SmolLM2-135M (LoRA, trained here for one short
epoch on toy pairs: its scores mean nothing, its compute is the real model's) scores every answer of
a smaller log (``--rm-n``); the rules-only pass is not the bottleneck there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
BRAND = "configs/brands/aurora.yaml"
CHANNELS = ["product_question", "complaint_reply", "health_claim", None]
ANSWERS = [
    "Yes, the Dawn lamp dims smoothly from full brightness to a soft glow, and you can set it in the app.",
    "The Halo bedside light has three warm white levels and a gentle night mode for reading before sleep.",
    "I am sorry the bulb stopped responding. Please reset it in the Aurora app and tell us if it helps.",
    "Drift bulbs change colour and brightness; pair them once in the app and group them by room.",
    "The Dawn lamp is a game changer for your mornings, honestly the best ever sunrise lamp you can buy.",
    "We guarantee you will sleep better with Halo, it never fails. Not a medical device, of course.",
    "The Aurora app schedules your lights; it is free and works with every Aurora product we make.",
    "Sorry about the delay with your order. I have asked the warehouse and will email you tomorrow.",
]
WEIGHTS = [30, 25, 12, 20, 4, 4, 20, 10]  # about 8% break a banned rule


def write_log(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    t0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    span = 30 * 86400
    with open(path, "w") as f:
        for i in range(n):
            ts = (t0 + dt.timedelta(seconds=span * i // n)).strftime("%Y-%m-%dT%H:%M:%SZ")
            ans = rng.choices(ANSWERS, WEIGHTS)[0]
            row = {"id": f"{i:08x}", "ts": ts, "channel": rng.choice(CHANNELS),
                   "messages": [{"role": "user", "content": f"Question {i}: how do I use my Aurora lamp?"},
                                {"role": "assistant", "content": ans}]}  # fmt: skip
            f.write(json.dumps(row) + "\n")


def child(log: str, reward: str, out: str) -> None:
    """Runs in a fresh process: one monitor pass over ``log``; prints its numbers as JSON."""
    from onbrand.config import load_config
    from onbrand.serve import monitor_run
    from onbrand.serve.monitor import MonitorConfig

    over = [f"brand={BRAND}", "length_unit=words", f"out_dir={out}"]
    over += (
        [f"reward={reward}", "scored_per_window=100000", "window=week"] if reward else ["scored_per_window=0"]
    )
    cfg = load_config(MonitorConfig, REPO / "configs" / "monitor" / "demo.yaml", over)
    t0 = time.perf_counter()
    prepared = monitor_run.prepare(cfg)  # brand card, and the reward model when there is one
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t1 = time.perf_counter()
    result, _ = monitor_run.analyse([log], cfg, prepared=prepared)
    seconds = time.perf_counter() - t1
    monitor_run.write_outputs(result, out)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    hwm = next(
        int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM")
    )
    n = result["n_conversations"]
    print(json.dumps({"n": n, "seconds": round(seconds, 2), "conv_per_s": round(n / seconds, 1),
                      "load_s": round(t1 - t0, 2), "peak_rss_mib": round(rss / 1024, 1),
                      "vm_hwm_mib": round(hwm / 1024, 1), "rss_before_pass_mib": round(rss0 / 1024, 1),
                      "windows": len(result["windows"]), "drift_checks": len(result["drift"])}))  # fmt: skip


def measure(log: Path, reward: str = "") -> dict:
    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-P", __file__, "--child", str(log), "--reward", reward, "--out", out]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["log_mib"] = round(log.stat().st_size / 2**20, 1)
    return row


def train_reward(root: Path) -> Path:
    """A LoRA reward run on the embedded 135M model (one epoch on 16 toy pairs, for its compute)."""
    from datasets import Dataset

    from onbrand.data.snapshot import features
    from onbrand.training import reward_model

    snap = root / "snapshot"
    snap.mkdir()
    for split in ("train", "dev", "test", "judge"):
        rows = [{"id": f"{split}-{i}", "prompt": [{"role": "user", "content": f"Is lamp {i} dimmable?"}],
                 "chosen": [{"role": "assistant", "content": ANSWERS[i % 4]}],
                 "rejected": [{"role": "assistant", "content": ANSWERS[4 + i % 2]}], "brand": "aurora",
                 "channel": "product_question", "created_at": None, "annotators": [], "reason_tags": [],
                 "source": {"file": "bench", "line": i}} for i in range(16)]  # fmt: skip
        Dataset.from_list(rows, features=features()).to_parquet(str(snap / f"{split}.parquet"))
    (snap / "manifest.json").write_text(
        json.dumps({"snapshot_id": "bench", "schema_version": 1, "counts": {}})
    )
    out = root / "reward"
    args = [f"data.snapshot={snap}", f"data.brand={BRAND}", f"out_dir={out}", "train.epochs=1",
            "train.max_length=256", "train.tracking.wandb=disabled", "train.batch_size=8"]  # fmt: skip
    if reward_model.main(["--config", "configs/reward/demo.yaml", *args]) != 0:
        raise SystemExit("reward run failed")
    return out


def md(res: dict) -> str:
    rows = res["rules_only"]
    lines = [
        "## Monitor: conversations per second and memory", "",
        "```bash", "python -P scripts/bench_monitor.py", "```", "",
        f"{res['date']}, {res['machine']}; load average before / after: {res['load_before']} / {res['load_after']}. "
        "Generated OpenAI-format logs (30 days, demo card channels, about 8% rule violations, no rule results: the "
        "monitor runs the brand card on every answer; no baseline given, so the windows' tests are a "
        "negligible share of the time). Each run is a fresh process; peak RSS is its `ru_maxrss`; "
        f"'pass s' excludes loading the brand card and the reward model (reward model load: {res['rules_rm']['load_s']} s).",
        "",
        "| checks | conversations | file MiB | pass s | conversations/s | peak RSS MiB (ru_maxrss) | RSS before the pass MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        lines.append(f"| rules only | {r['n']:,} | {r['log_mib']} | {r['seconds']} | {r['conv_per_s']:,.0f} | "
                     f"{r['peak_rss_mib']} | {r['rss_before_pass_mib']} |")  # fmt: skip
    rm = res["rules_rm"]
    lines.append(f"| rules + reward model | {rm['n']:,} | {rm['log_mib']} | {rm['seconds']} | {rm['conv_per_s']:,.1f} | "
                 f"{rm['peak_rss_mib']} | {rm['rss_before_pass_mib']} |")  # fmt: skip
    small, big = rows[-2], rows[-1]
    lines += ["", f"Peak RSS, {big['n']:,} vs {small['n']:,} conversations: {big['peak_rss_mib']} vs "
              f"{small['peak_rss_mib']} MiB (x{big['peak_rss_mib'] / small['peak_rss_mib']:.2f} for "
              f"{big['n'] // small['n']}x the log). Reward model: {res['reward_model']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--reward", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--train-reward", help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--rm-n", type=int, default=200, help="conversations scored by the reward model")
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.reward, args.out)
        return 0
    if args.train_reward:
        train_reward(Path(args.train_reward))
        return 0
    res = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"shared 2-core CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
                      "other jobs running)", "load_before": [round(x, 2) for x in os.getloadavg()],
           "python": platform.python_version(), "rules_only": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in map(int, args.sizes.split(",")):
            log = tmp / f"log-{n}.jsonl"
            write_log(log, n)
            res["rules_only"].append(measure(log))
            print(json.dumps(res["rules_only"][-1]), flush=True)
            log.unlink()
        run = tmp / "reward"  # trained in its own process: this one stays small for the children's ru_maxrss
        cmd = [sys.executable, "-P", __file__, "--train-reward", str(tmp)]
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = tmp / "log-rm.jsonl"
        write_log(log, args.rm_n, seed=1)
        res["rules_rm"] = measure(log, str(run))
        print(json.dumps(res["rules_rm"]), flush=True)
    res["reward_model"] = ("LoRA reward run on the embedded SmolLM2-135M-Instruct (fp32, CPU, batch 32), "
                           f"every one of {args.rm_n:,} answers scored")  # fmt: skip
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "monitor.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "monitor.md").write_text(md(res))
    print(md(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
