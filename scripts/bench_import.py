"""Benchmark: streaming import of a large synthetic JSONL, peak RSS and wall time, side by side.

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_import.py --mb 200 --repeats 3

Methods (each in a fresh subprocess; peak RSS from ``os.wait4`` of that process alone):

- ``onbrand``: ``onbrand data import FILE --out DIR`` (line-by-line, validation, dedup, quarantine);
- ``naive``: ``json.loads`` every line into a list, then the same canonicalization (what a
  non-streaming importer does);
- ``datasets``: ``datasets.load_dataset("json", data_files=FILE)`` (Arrow conversion, no validation).

The file is TRL conversational rows (~1 KB each) with 1% exact duplicates and 1% invalid rows
(empty text, unknown role, identical pair). Writes ``bench/results/import.json`` and ``import.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORDS = (
    "lamp light warm sunrise evening calm bulb dim bright amber white routine app alarm sound timer "
    "quiet gentle morning bedside charge wireless battery schedule colour kelvin lumen order warranty"
).split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_file(path: Path, mb: int, seed: int = 0) -> dict[str, int]:
    """Write ~``mb`` MB of rows; returns counts of good, duplicate and bad rows written."""
    rng = random.Random(seed)
    target = mb * 1_000_000
    size = good = dup = bad = 0
    last = None
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            i = good + dup + bad
            roll = rng.random()
            if roll < 0.01 and last is not None:
                line, dup = last, dup + 1
            else:
                row = {
                    "prompt": [{"role": "user", "content": f"Question {i}: " + _text(rng, 25)}],
                    "chosen": [{"role": "assistant", "content": _text(rng, 60)}],
                    "rejected": [{"role": "assistant", "content": _text(rng, 50)}],
                    "channel": rng.choice(("product_question", "complaint_reply", "social_post")),
                }
                if roll > 0.99:
                    kind = rng.randrange(3)
                    if kind == 0:
                        row["chosen"][0]["content"] = "   "
                    elif kind == 1:
                        row["prompt"][0]["role"] = "customer"
                    else:
                        row["rejected"] = row["chosen"]
                    bad += 1
                else:
                    good += 1
                line = json.dumps(row) + "\n"
                last = line
            f.write(line)
            size += len(line.encode())
    return {"bytes": size, "good": good, "duplicates": dup, "invalid": bad}


WORKERS = {
    "onbrand": "from onbrand.cli import main; import sys; sys.exit(main(['data', 'import', sys.argv[1], '--out', sys.argv[2]]))",
    "naive": (
        "import json, sys\n"
        "from onbrand.data.records import RecordError, canonicalize\n"
        "rows = [json.loads(l) for l in open(sys.argv[1], encoding='utf-8') if l.strip()]\n"
        "out = []\n"
        "for r in rows:\n"
        "    try:\n"
        "        out.append(canonicalize(r))\n"
        "    except RecordError:\n"
        "        pass\n"
        "print(len(out))\n"
    ),
    "datasets": (
        "import sys\nfrom datasets import load_dataset\n"
        "ds = load_dataset('json', data_files=sys.argv[1], cache_dir=sys.argv[2] + '/hf')\n"
        "print(ds['train'].num_rows)\n"
    ),
}


NOTES = {
    "onbrand": "quarantined with file, line, field, reason",
    "naive": "validated, dropped silently",
    "datasets": "not validated",
}


def run_worker(method: str, data: Path, scratch: Path) -> dict[str, float]:
    """One fresh process; returns wall seconds and its own peak RSS (MB)."""
    out = scratch / method
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONSAFEPATH": "1",
        "TQDM_DISABLE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKERS[method], str(data), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed ({proc.returncode}): {stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    del stdout  # it names temp paths; only the numbers are recorded
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default="onbrand,naive,datasets")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    p.add_argument("--render-only", action="store_true", help="rewrite import.md from import.json")
    args = p.parse_args(argv)
    if args.render_only:
        rec = json.loads((Path(args.out) / "import.json").read_text())
        args.mb, args.repeats = int(rec["file"]["mb"]), rec["repeats"]
        made = {k: rec["file"][k] for k in ("bytes", "good", "duplicates", "invalid")}
        write_results(args, made, list(rec["runs"]), rec["runs"])
        return 0
    methods = args.methods.split(",")
    scratch = Path(tempfile.mkdtemp(prefix="bench-import-"))
    try:
        data = scratch / "pairs.jsonl"
        made = make_file(data, args.mb)
        results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        for rep in range(args.repeats):
            for m in methods:  # interleaved, so drift in machine load hits every method alike
                r = run_worker(m, data, scratch)
                results[m].append(r)
                print(
                    f"[{rep + 1}/{args.repeats}] {m}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_results(args, made, methods, results)
    return 0


def write_results(args, made, methods, results) -> None:
    from onbrand.artifacts import atomic_write_json, atomic_write_text, environment_record

    med = {
        m: {k: statistics.median(r[k] for r in results[m]) for k in ("wall_s", "peak_rss_mb")}
        for m in methods
    }
    command = (
        f"OMP_WAIT_POLICY=PASSIVE python scripts/bench_import.py --mb {args.mb} --repeats {args.repeats}"
    )
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # the import path does not use torch
        torch_version = None
    record = {
        "name": "import",
        "command": command,
        "file": {"mb": round(made["bytes"] / 1e6, 1), **made},
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch_version,
            "threads": "OMP_NUM_THREADS=1 (the import path is pure Python)",
        },
        "environment": environment_record(),
        "repeats": args.repeats,
        "median": med,
        "runs": results,
    }
    out = Path(args.out)
    atomic_write_json(out / "import.json", record)
    base = med.get("onbrand")
    lines = [
        f"## Streaming import ({record['file']['mb']} MB JSONL)",
        "",
        f"{made['good'] + made['duplicates'] + made['invalid']} rows (1% duplicates, 1% invalid); each method in "
        f"a fresh process, median of {args.repeats} interleaved repeats; peak RSS of that process.",
        "",
        "```",
        command,
        "```",
        "",
        "| method | wall (s) | peak RSS (MB) | RSS vs onbrand | bad rows |",
        "|---|---|---|---|---|",
    ]
    for m in methods:
        ratio = f"{med[m]['peak_rss_mb'] / base['peak_rss_mb']:.1f}x" if base else ""
        lines.append(
            f"| {m} | {med[m]['wall_s']:.1f} | {med[m]['peak_rss_mb']:.0f} | {ratio} | {NOTES.get(m, '')} |"
        )
    lines.append("")
    atomic_write_text(out / "import.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
