"""The eval stage of the demo, old code against new, on the same trained runs, one after the other.

Runs ``onbrand eval --config configs/eval/demo.yaml`` (as the demo pipeline does: base = the
embedded model, aligned = ``runs/demo/dpo``, judge = ``runs/demo/reward``, the test split) with a
checkout's own ``.venv`` into a temporary out_dir, profiles the process tree, and records the
report's timings and the log-prob metrics (KL, implicit reward, perplexity) so equal metrics can be
checked beside the times.

    python -P scripts/bench_eval_stage.py --label old --repo ../onbrand-old
    python -P scripts/bench_eval_stage.py --label new

Needs ``runs/demo`` of THIS checkout (``make demo``). Writes ``bench/results/eval_stage.{json,md}``;
an earlier label is kept, so old and new from one sitting sit side by side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from onbrand.artifacts import atomic_write_json, atomic_write_text, read_json
from onbrand.profiling import StageProfile

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "results"
RUN = REPO / "runs" / "demo"


def _metrics(report: dict) -> dict:
    m = report.get("metrics", {})
    pick = {
        "kl_per_sequence": (m.get("kl") or {}).get("per_sequence", {}).get("value"),
        "kl_per_token": (m.get("kl") or {}).get("per_token"),
        "implicit_accuracy": (m.get("implicit") or {}).get("accuracy", {}).get("value"),
        "implicit_margin": (m.get("implicit") or {}).get("margin", {}).get("value"),
        "ppl_base": ((m.get("perplexity") or {}).get("base") or {}).get("ppl", {}).get("value"),
        "ppl_aligned": ((m.get("perplexity") or {}).get("aligned") or {}).get("ppl", {}).get("value"),
        "scored_by": (m.get("kl") or {}).get("scored_by", "transformers"),
    }
    return pick


def run(repo: Path, out_dir: Path) -> dict:
    env = {**os.environ, "PYTHONSAFEPATH": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
           # One model cache for both checkouts: neither pays for converting the embedded model.
           "ONBRAND_CACHE": os.environ.get("ONBRAND_CACHE", str(REPO / ".cache" / "onbrand"))}  # fmt: skip
    cmd = [str(repo / ".venv" / "bin" / "onbrand"), "eval", "--config", "configs/eval/demo.yaml",
           f"aligned={RUN / 'dpo'}", f"snapshot={RUN / 'snapshot'}", f"reward={RUN / 'reward'}",
           f"out_dir={out_dir}"]  # fmt: skip
    load = os.getloadavg()[0]
    with StageProfile(interval=0.5) as prof:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"eval failed ({proc.returncode}): {proc.stderr[-3000:]}")
    report = read_json(out_dir / "report.json")
    return {
        "load_avg_1m_at_start": round(load, 2),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "process_tree": prof.as_dict(),
        "timings": report.get("metrics", {}).get("timings", {}),
        "metrics": _metrics(report),
        "verdict": report.get("verdict"),
    }


def markdown(res: dict) -> str:
    lines = ["# The demo's eval stage: old vs new code, same trained runs", "",
             f"`{res['command']}`; {res['machine']}.", "",
             "| label | commit | date | load start -> end | wall s | CPU s | peak RSS MiB | generate s | log-prob s | scored by |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, r in res["runs"].items():
        t, p = r["timings"], r["process_tree"]
        lines.append(f"| {label} | {r['commit']} | {r['date']} | {r['load_avg_1m_at_start']} -> {r['load_avg_1m_at_end']} | "
                     f"{p['wall_seconds']} | {p['cpu_seconds']} | {p['peak_rss_mb']} | {t.get('generate_s')} | "
                     f"{t.get('logprob_s')} | {r['metrics']['scored_by']} |")  # fmt: skip
    if {"old", "new"} <= set(res["runs"]):
        o, n = res["runs"]["old"], res["runs"]["new"]
        lines += ["", f"new / old: wall {n['process_tree']['wall_seconds'] / o['process_tree']['wall_seconds']:.3f}, "
                  f"peak RSS {n['process_tree']['peak_rss_mb'] / o['process_tree']['peak_rss_mb']:.3f}", "",
                  "| metric | old | new |", "|---|---|---|"]  # fmt: skip
        for k in o["metrics"]:
            lines.append(f"| {k} | {o['metrics'][k]} | {n['metrics'][k]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", default="new")
    p.add_argument("--repo", type=Path, default=REPO, help="checkout whose .venv runs the eval")
    args = p.parse_args(argv)
    if not (RUN / "dpo").exists():
        raise SystemExit(f"{RUN}: no demo runs here; run `make demo` first")
    repo = args.repo.resolve()
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="onbrand-bench-eval-"))
    try:
        entry = {"date": dt.date.today().isoformat(), "commit": commit, **run(repo, work / "eval")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = OUT / "eval_stage.json"
    res = read_json(path) if path.exists() else {"runs": {}}
    res["command"] = "python -P scripts/bench_eval_stage.py --label LABEL [--repo CHECKOUT]"
    res["machine"] = f"{os.cpu_count()} CPU cores, shared (see the load averages)"
    res["runs"][args.label] = entry
    atomic_write_json(path, res)
    atomic_write_text(OUT / "eval_stage.md", markdown(res))
    print(json.dumps({k: entry[k] for k in ("process_tree", "timings", "metrics")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
