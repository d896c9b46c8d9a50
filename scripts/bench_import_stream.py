"""How much memory `onbrand data import` needs for a big one-line JSON-array export.

Builds a Label Studio export of N tasks (3 annotations each, one line, as the tool writes it) from
the fixture ``tests/data/fixtures/label_studio_pairwise.json``, then measures in fresh processes:
``onbrand data import`` of it, and ``json.load`` of the same file alone (what a whole-file reader
would hold). Peak RSS is sampled over each process tree (``onbrand.profiling.StageProfile``).

    python -P scripts/bench_import_stream.py --tasks 30000

Writes ``bench/results/import_stream.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from onbrand.artifacts import atomic_write_json, atomic_write_text
from onbrand.profiling import StageProfile

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "data" / "fixtures" / "label_studio_pairwise.json"
OUT = REPO / "bench" / "results"


def build(path: Path, n: int) -> None:
    """``n`` tasks, each with 3 left/right annotations, written as one line like Label Studio does."""
    template = next(t for t in json.loads(FIXTURE.read_text()) if len(t.get("annotations", [])) >= 1)
    ann = template["annotations"][0]
    tasks = []
    for i in range(n):
        t = copy.deepcopy(template)
        t["id"] = i + 1
        for k, v in t["data"].items():
            if isinstance(v, str):
                t["data"][k] = f"{v} (task {i})"
        t["annotations"] = []
        for a in range(3):
            x = copy.deepcopy(ann)
            x["id"], x["completed_by"] = i * 3 + a + 1, a + 1
            x["result"][0]["value"]["selected"] = "left" if (i + a) % 4 else "right"
            t["annotations"].append(x)
        tasks.append(t)
    path.write_text(json.dumps(tasks), encoding="utf-8")


def measure(cmd: list[str]) -> dict:
    with StageProfile(interval=0.05) as prof:
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONSAFEPATH": "1"})
    if proc.returncode not in (0, 1):  # 1: some rows quarantined, still a finished import
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {
        **prof.as_dict(),
        "returncode": proc.returncode,
        "summary": proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=30000)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "label_studio_export.json"
        build(src, args.tasks)
        size_mb = src.stat().st_size / 2**20
        py = [sys.executable, "-P"]
        baseline = measure([*py, "-c", "import onbrand.data.cli"])
        imp = measure([*py, "-c", "import sys; from onbrand.cli import main; sys.exit(main())", "data", "import", str(src), "--format", "label-studio",
                       "--out", str(Path(tmp) / "imported")])  # fmt: skip
        whole = measure([*py, "-c", f"import json; json.load(open({str(src)!r}))"])
    result = {
        "date": dt.date.today().isoformat(),
        "load_avg_1m": os.getloadavg()[0],
        "command": f"python -P scripts/bench_import_stream.py --tasks {args.tasks}",
        "file": {"tasks": args.tasks, "annotations_per_task": 3, "size_mb": round(size_mb, 1), "lines": 1},
        "import": imp,
        "json_load_whole_file": whole,
        "python_with_onbrand_data_imported": baseline,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / "import_stream.json", result)
    atomic_write_text(
        OUT / "import_stream.md",
        f"# Streaming import of a one-line JSON array ({result['date']}, load {result['load_avg_1m']:.1f})\n\n"
        f"`{result['command']}`: a Label Studio export of {args.tasks} tasks x 3 annotations, "
        f"{size_mb:.0f} MB on one line.\n\n"
        "| process | wall s | peak RSS MiB |\n|---|---|---|\n"
        f"| `onbrand data import --format label-studio` | {imp['wall_seconds']} | {imp['peak_rss_mb']} |\n"
        f"| `json.load` of the file alone | {whole['wall_seconds']} | {whole['peak_rss_mb']} |\n"
        f"| python + `import onbrand.data.cli` (floor) | {baseline['wall_seconds']} | {baseline['peak_rss_mb']} |\n",
    )
    print(json.dumps({k: result[k] for k in ("file", "import", "json_load_whole_file")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
