"""The stage profile: CPU seconds include the children a stage waited for, the sampled peak RSS
sees memory a stage held, and every ran stage's ``stages/<stage>.json`` and the summary carry them."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from onbrand import pipeline_stages
from onbrand.pipeline import RunConfig, run_pipeline
from onbrand.profiling import StageProfile, tree_rss_bytes

CHILD = "import time\nx = sum(i * i for i in range(3_000_000))\nprint(time.process_time())"


def test_cpu_seconds_count_a_child_process():
    with StageProfile() as prof:
        out = subprocess.run([sys.executable, "-P", "-c", CHILD], capture_output=True, text=True, check=True)
    child_cpu = float(out.stdout.strip())
    assert child_cpu > 0
    # The child's own CPU time is inside the stage's (rounding to 0.1 s in as_dict aside).
    assert prof.cpu >= child_cpu * 0.99
    assert prof.as_dict()["cpu_seconds"] >= round(child_cpu, 1) - 0.1


HOLD = (
    "import sys, time, numpy as np\n"
    "block = np.ones(300 * 2**20 // 8); block.sum()  # 300 MiB, touched\n"
    "print('ready', flush=True); time.sleep(1.0)"
)


def test_peak_rss_sees_memory_held_inside_the_block():
    """A child holds 300 MiB for a second and exits: the tree's sampled peak saw it. (A child, not
    this process: a long test process may reuse freed, still-resident memory for a new array.)"""
    before = tree_rss_bytes()
    with StageProfile(interval=0.05) as prof:
        subprocess.run([sys.executable, "-P", "-c", HOLD], capture_output=True, check=True)
    # The end-of-block sample no longer holds it (the child is gone); an interval sample did.
    assert prof.peak_rss - before > 250 * 2**20
    assert prof.as_dict()["peak_rss_mb"] > 250


def test_pipeline_writes_the_profile(monkeypatch, tmp_path, capsys):
    def run(cfg, stage_cfg, ctx):
        out = Path(cfg.out_dir) / "model"
        out.mkdir(parents=True, exist_ok=True)
        (out / "out.txt").write_text("m")
        subprocess.run([sys.executable, "-P", "-c", CHILD], capture_output=True, check=True)
        return {"run_dir": str(out)}

    stage = pipeline_stages.STAGES["model"]
    monkeypatch.setitem(
        pipeline_stages.STAGES,
        "model",
        replace(stage, config_kind=None, run=run, fingerprint=lambda cfg, ctx: "fp"),
    )
    cfg = RunConfig(out_dir=str(tmp_path / "run"), stages=["model"])
    assert run_pipeline(cfg) == 0
    state = json.loads((tmp_path / "run" / "stages" / "model.json").read_text())
    assert state["cpu_seconds"] > 0 and state["peak_rss_mb"] > 10
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["timings"]["model"]
    assert summary["status"] == "ran" and summary["cpu_seconds"] == state["cpu_seconds"]
    printed = capsys.readouterr().out
    assert "peak RSS MiB" in printed and "CPU s" in printed
