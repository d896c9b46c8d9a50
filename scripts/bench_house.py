"""How the house is kept: function sizes, where imports sit, and (optionally) whether a `make demo`
gives the same numbers as a baseline `make demo` and how many lines it prints.

    python scripts/bench_house.py                                  # static checks only
    python scripts/bench_house.py --demo NEW_CLONE --demo-log new.log \
        --baseline BASE_CLONE --baseline-log base.log              # + the two demo runs side by side
    python scripts/bench_house.py --e2e                            # + the end-to-end test's wall time

Results of an earlier call that this one does not redo (the demo runs, the e2e time) are kept.

Writes ``bench/results/house.json`` and ``bench/results/house.md``. The layering itself is a test
(``tests/core/test_core_layout.py``); this records the numbers quoted in notes.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from onbrand.artifacts import sha256_file

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "results"
FOLDERS = ("onbrand", "kernels", "data", "annotate", "training", "eval", "export")


def _sources(root: Path, with_scripts: bool) -> list[Path]:
    files = [p for f in FOLDERS if (root / f).exists() for p in sorted((root / f).rglob("*.py"))]
    # onbrand/<stage>/ inside the core folder is counted once: as itself when there is no top-level <stage>/
    nested = {root / "onbrand" / f for f in FOLDERS if (root / f).exists() and f != "onbrand"}
    files = [p for p in files if not any(p.is_relative_to(n) for n in nested)]
    if with_scripts:  # entry scripts count; benchmarks do not
        files += [p for p in sorted((root / "scripts").glob("*.py")) if not p.name.startswith("bench_")]
    return files


def _in_functions(tree: ast.AST) -> set[int]:
    return {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
    }


def static(root: Path) -> dict:
    """Longest functions, largest files, and how many imports between onbrand modules sit in functions."""
    funcs, sizes, total, local = [], [], 0, 0
    for path in _sources(root, with_scripts=True):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = str(path.relative_to(root))
        sizes.append((len(path.read_text(encoding="utf-8").splitlines()), rel))
        inner = _in_functions(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.lineno} {node.name}"))
            own = (
                isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("onbrand"))
            ) or (isinstance(node, ast.Import) and any(a.name.startswith("onbrand") for a in node.names))
            if own and not rel.startswith("scripts/"):
                total += 1
                local += id(node) in inner
    funcs.sort(reverse=True)
    sizes.sort(reverse=True)
    return {
        "longest_functions": [{"lines": n, "where": w} for n, w in funcs[:5]],
        "functions_over_60": sum(n > 60 for n, _ in funcs),
        "largest_files": [{"lines": n, "file": f} for n, f in sizes[:3]],
        "onbrand_imports": {"total": total, "inside_functions": local},
    }


def _demo(clone: Path, log: Path) -> dict:
    run = clone / "runs" / "demo"
    report = json.loads((run / "eval" / "report.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    text = log.read_text(encoding="utf-8", errors="replace")
    setup, _, run_part = text.partition("bin/onbrand run ")  # make's echo of the pipeline command
    return {
        "terminal_lines": text.count("\n"),
        "setup_lines": setup.count("\n"),  # make setup on a fresh clone (pip's own output included)
        "onbrand_run_lines": run_part.count("\n"),
        "stage_seconds": {k: v.get("seconds") for k, v in summary["timings"].items()},
        "eval_summary": report["summary"],
        "verdict": report["verdict"],
        "gate_passed": (report.get("gate") or {}).get("passed"),
        "weights_sha256": {
            str(f.relative_to(run)): sha256_file(f)
            for f in sorted(
                [*run.glob("*/adapter/adapter_model.safetensors"), *run.glob("export/model*.safetensors")]
            )
        },
        "samples": [
            (r["base"], r["aligned"]) for r in map(json.loads, (run / "eval" / "samples.jsonl").open())
        ],
        "dpo_eval": {
            k: v for k, v in json.loads((run / "dpo" / "run.json").read_text()).get("eval", {}).items()
        },
    }


def compare(new: dict, base: dict) -> dict:
    """Which eval summary rows differ between the two runs (the exclamation row is new)."""
    rows = sorted(set(new["eval_summary"]) | set(base["eval_summary"]))
    differ = [
        r for r in rows if r in base["eval_summary"] and new["eval_summary"].get(r) != base["eval_summary"][r]
    ]
    return {
        "rows_compared": sum(r in base["eval_summary"] and r in new["eval_summary"] for r in rows),
        "rows_that_differ": differ,
        "rows_only_new": [r for r in rows if r not in base["eval_summary"]],
        "rows_only_baseline": [r for r in rows if r not in new["eval_summary"]],
        "same_weights": new["weights_sha256"] == base["weights_sha256"],
        "same_answers": f"{sum(a == b for a, b in zip(new['samples'], base['samples']))} of {len(base['samples'])}",
        "same_verdict": new["verdict"] == base["verdict"],
        "same_gate": new["gate_passed"] == base["gate_passed"],
    }


def e2e_wall() -> dict:
    """One run of the end-to-end ``onbrand run`` test (two pipeline runs: the real one, then all skipped)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/core/test_core_e2e.py"],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    return {"seconds": round(time.perf_counter() - t0, 1), "passed": proc.returncode == 0,
            "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count()}  # fmt: skip


def markdown(res: dict) -> str:
    s = res["static"]
    lines = [
        "## House keeping (sizes, imports, demo output)",
        "",
        f"`{res['command']}` ({res.get('date', '')})",
        "",
    ]
    lines += ["| longest functions (lines) | where |", "| --- | --- |"]
    lines += [f"| {f['lines']} | `{f['where']}` |" for f in s["longest_functions"]]
    imp = s["onbrand_imports"]
    lines += ["", f"Functions over 60 lines: {s['functions_over_60']}. Imports between onbrand modules inside "
              f"functions: {imp['inside_functions']} of {imp['total']}."]  # fmt: skip
    if "baseline_static" in res:
        b = res["baseline_static"]
        lines += [f"Baseline: {b['functions_over_60']} functions over 60 lines (longest {b['longest_functions'][0]['lines']}); "
                  f"{b['onbrand_imports']['inside_functions']} of {b['onbrand_imports']['total']} imports inside functions."]  # fmt: skip
    if "demo" in res:
        d, b, c = res["demo"], res["baseline"], res["comparison"]
        lines += ["", "| `make demo` | baseline | this commit |", "| --- | --- | --- |",
                  f"| terminal lines, `onbrand run` part | {b['onbrand_run_lines']} | {d['onbrand_run_lines']} |",
                  f"| terminal lines, `make setup` part (fresh clone) | {b['setup_lines']} | {d['setup_lines']} |",
                  f"| eval summary rows that differ | | {len(c['rows_that_differ'])} of {c['rows_compared']} |",
                  f"| same verdict / same gate result | | {c['same_verdict']} / {c['same_gate']} |",
                  f"| SFT, DPO, reward adapters and merged export bit-identical | | {c['same_weights']} |",
                  f"| eval answers (base, aligned) identical | | {c['same_answers']} |"]  # fmt: skip
    if "e2e" in res:
        e = res["e2e"]
        lines += ["", f"End-to-end test (`tests/core/test_core_e2e.py`, {e['date']}, {e['cpus']} CPUs): "
                  f"{e['seconds']:.0f} s, {'passed' if e['passed'] else 'FAILED'}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", type=Path, help="checkout where `make demo` ran (runs/demo/)")
    p.add_argument("--demo-log", type=Path, help="its terminal output")
    p.add_argument("--baseline", type=Path, help="checkout of the baseline commit where `make demo` ran")
    p.add_argument("--baseline-log", type=Path)
    p.add_argument("--date", default="", help="when the demo runs were made (and the load)")
    p.add_argument("--e2e", action="store_true", help="time tests/core/test_core_e2e.py (one run)")
    args = p.parse_args(argv)
    res = json.loads((OUT / "house.json").read_text()) if (OUT / "house.json").exists() else {}
    res.setdefault("command", "python scripts/bench_house.py")
    res["static"] = static(REPO)
    if args.demo:
        res["command"], res["date"] = "python scripts/bench_house.py --demo ... --baseline ...", args.date
    if args.e2e:
        res["e2e"] = e2e_wall()
    if args.baseline:
        res["baseline_static"] = static(args.baseline)
    if args.demo and args.baseline:
        res["demo"], res["baseline"] = (
            _demo(args.demo, args.demo_log),
            _demo(args.baseline, args.baseline_log),
        )
        res["comparison"] = compare(res["demo"], res["baseline"])
        for side in (res["demo"], res["baseline"]):
            side.pop("samples")  # compared above; the texts stay in runs/demo/eval/samples.jsonl
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "house.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    (OUT / "house.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
