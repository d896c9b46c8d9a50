"""The demo pipeline, measured the same way every time: per-stage wall and CPU seconds and peak RSS.

Runs ``onbrand run configs/demo.yaml`` of a checkout into a fresh ``out_dir`` twice: **cold** (an
empty ``ONBRAND_CACHE``: model conversion, reference log-probs, token ids all computed) and **warm**
(the cache the cold run filled; stages still run, since the out_dir is new). Each run is a separate
process; its stage records (``<out_dir>/stages/<stage>.json``) give the per-stage numbers, and the
whole process tree is profiled as well (older checkouts record wall seconds only).

    python -P scripts/bench_demo.py --label new                        # this checkout
    python -P scripts/bench_demo.py --label old --repo ../onbrand-old  # another checkout, same sitting

Results go into ``bench/results/demo.json`` (of THIS checkout), keyed by label; an earlier label is
kept, so old and new measured in one sitting sit side by side, and ``demo.md`` shows the ratios.
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
STAGES = ("model", "data", "sft", "dpo", "reward", "eval", "export")


def run_once(repo: Path, out_dir: Path, cache: Path, config: str) -> dict:
    """One ``onbrand run`` in ``repo`` (its own .venv), profiled; the per-stage records it wrote."""
    env = {**os.environ, "ONBRAND_CACHE": str(cache), "PYTHONSAFEPATH": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    cmd = [str(repo / ".venv" / "bin" / "onbrand"), "run", config, f"out_dir={out_dir}"]
    load = os.getloadavg()[0]
    with StageProfile(interval=0.5) as prof:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    stages = {}
    for s in STAGES:
        f = out_dir / "stages" / f"{s}.json"
        if f.exists():
            rec = read_json(f)
            stages[s] = {k: rec.get(k) for k in ("seconds", "cpu_seconds", "peak_rss_mb", "engine_starts")}
            if s == "eval":
                res = rec.get("result") or {}
                stages[s]["eval_timings"] = res.get("timings")
                # What the run concluded, so a speed-up is read beside the numbers it produced.
                stages[s]["eval_summary"] = res.get("summary")
                stages[s]["verdict"] = res.get("verdict")
                gate = res.get("gate") or {}
                stages[s]["gate_passed"] = gate.get("passed")
                stages[s]["gate_failed"] = [c["name"] for c in gate.get("checks", []) if not c["passed"]]
    return {
        "returncode": proc.returncode,  # 1 = the release gate failed (the pipeline still ran)
        "load_avg_1m_at_start": round(load, 2),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "process_tree": prof.as_dict(),
        "stages": stages,
        "tail": proc.stdout.strip().splitlines()[-3:],
    }


def ratios(new: dict, old: dict, key: str = "seconds") -> dict:
    """new / old per stage (``key``: wall ``seconds`` or ``peak_rss_mb``) and, for wall time, the
    whole run (< 1 = faster / smaller)."""
    out = {}
    for s in STAGES:
        a, b = (new["stages"].get(s) or {}).get(key), (old["stages"].get(s) or {}).get(key)
        if a and b:
            out[s] = round(a / b, 3)
    if key == "seconds":
        out["total"] = round(new["process_tree"]["wall_seconds"] / old["process_tree"]["wall_seconds"], 3)
    return out


def _table(label: str, cache: str, r: dict, run: dict) -> list[str]:
    lines = [f"### {label}, {cache} cache ({r['date']}, commit {r['commit']}, "
             f"load {run['load_avg_1m_at_start']} -> {run['load_avg_1m_at_end']}, exit {run['returncode']})", "",
             "| stage | wall s | CPU s | peak RSS MiB | vLLM engines started in-process |", "|---|---|---|---|---|"]  # fmt: skip
    for s, v in run["stages"].items():
        cells = [v.get(k) for k in ("cpu_seconds", "peak_rss_mb", "engine_starts")]
        lines.append(
            f"| {s} | {v['seconds']} | " + " | ".join("—" if c is None else str(c) for c in cells) + " |"
        )
    t = run["process_tree"]
    lines += [f"| **whole run** | {t['wall_seconds']} | {t['cpu_seconds']} | {t['peak_rss_mb']} | |", ""]
    ev = (run["stages"].get("eval") or {}).get("eval_timings") or {}
    if ev:
        fams = ", ".join(
            f"{k} {v}" for k, v in sorted((ev.get("metric_s") or {}).items(), key=lambda kv: -kv[1])
        )
        lines += [f"eval: generation {ev.get('generate_s')} s, total {ev.get('total_s')} s; "
                  f"seconds per metric family: {fams or 'not recorded'}", ""]  # fmt: skip
    ev = run["stages"].get("eval") or {}
    if ev.get("eval_summary"):
        failed = f" (failed: {', '.join(ev['gate_failed'])})" if ev.get("gate_failed") else ""
        lines += [f"eval result (test split; gate passed: {ev.get('gate_passed')}{failed}): "
                  + "; ".join(f"{k} {v}" for k, v in ev["eval_summary"].items()), ""]  # fmt: skip
    return lines


def markdown(results: dict) -> str:
    lines = ["## Pipeline: the demo, stage by stage", "",
             f"`{results['command']}`: `onbrand run configs/demo.yaml` of each checkout, in its own process, "
             f"into a fresh out_dir, cold (empty cache) then warm (the cache the cold run filled). {results['machine']}.",
             ""]  # fmt: skip
    runs = results["runs"]
    if "old" in runs and "new" in runs:
        for cache in ("cold", "warm"):
            o, n = runs["old"].get(cache), runs["new"].get(cache)
            if o and n:
                lines += [f"- new / old wall time, {cache}: `{json.dumps(ratios(n, o))}`",
                          f"- new / old peak RSS, {cache}: `{json.dumps(ratios(n, o, 'peak_rss_mb'))}`"]  # fmt: skip
        lines.append("")
    for label, r in runs.items():
        for cache in ("cold", "warm"):
            if r.get(cache):
                lines += _table(label, cache, r, r[cache])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", default="new", help="key in demo.json (e.g. old / new)")
    p.add_argument("--repo", type=Path, default=REPO, help="checkout to run (its .venv is used)")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--only", choices=("cold", "warm", "both"), default="both")
    args = p.parse_args(argv)
    repo = args.repo.resolve()
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    entry = {"date": dt.date.today().isoformat(), "commit": commit, "config": args.config}
    work = Path(tempfile.mkdtemp(prefix="onbrand-bench-demo-"))
    try:
        cache = work / "cache"
        for n, which in enumerate(("cold", "warm")):
            if args.only in (which, "both"):
                entry[which] = run_once(repo, work / f"run{n}", cache, args.config)
                print(f"{args.label} {which}: {entry[which]['process_tree']}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = OUT / "demo.json"
    results = read_json(path) if path.exists() else {"runs": {}}
    results["machine"] = f"{os.cpu_count()} CPU cores, shared; see the load averages per run"
    results["command"] = "python -P scripts/bench_demo.py --label LABEL [--repo CHECKOUT]"
    results["runs"][args.label] = entry
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, results)
    atomic_write_text(OUT / "demo.md", markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
