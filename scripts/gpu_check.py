"""One-command GPU check: Triton kernel tests, kernel benchmark, bf16 DPO on CUDA vs fp32 on CPU.

    python scripts/gpu_check.py                      # everything (about 10-20 min on one GPU)
    python scripts/gpu_check.py --wheels wheels/     # first: pip install trl/liger-kernel/gguf from there
    python scripts/gpu_check.py --skip-bench --steps 5

Without CUDA it prints one line saying it skipped and exits 0 (CI runs it that way). With CUDA:

1. ``pytest tests/kernels/test_kernels_triton.py`` (the Triton kernels against the chunked reference);
2. ``scripts/bench_kernels.py`` on the 4x1024 and large-vocab (frozen head) shapes, ``--no-write``;
3. the DPO recipe (configs/dpo/demo.yaml, demo snapshot, embedded model, no SFT parent) for
   ``--steps`` steps twice: bf16 on CUDA and fp32 on CPU (CUDA hidden). Same data order and seed, so
   the step losses must agree within ``--tol`` (absolute, every step); step 1 is exactly ln 2 in both
   (LoRA B starts at 0, policy == reference).

Needs torch, transformers, peft, accelerate and triton (plus onbrand installed); trl, liger-kernel
and gguf are optional and come from ``--wheels DIR`` (``pip install --no-index --find-links DIR``).
Every step runs in a fresh ``python -P`` process. Writes ``bench/results/gpu_check.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OPTIONAL = ("trl", "liger-kernel", "gguf")
BENCH_RUNS = (["--shapes", "4x1024"], ["--shapes", "large-vocab-4x64", "--modes", "frozen"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheels", type=Path, help="folder of optional wheels (trl, liger-kernel, gguf)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_check.json")
    p.add_argument("--steps", type=int, default=20, help="DPO steps per run (default 20)")
    p.add_argument("--tol", type=float, default=0.05, help="max |bf16 - fp32| step loss (default 0.05)")
    p.add_argument("--bench-repeats", type=int, default=3)
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--skip-dpo", action="store_true")
    args = p.parse_args(argv)
    if args.steps < 2 or args.tol <= 0:
        p.error("--steps must be >= 2 and --tol > 0")
    return args


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def run(cmd: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """``python -P <cmd>`` in the repository root; exit code, seconds and the output's tail."""
    full = [sys.executable, "-P", *cmd]
    env = {**os.environ, "PYTHONSAFEPATH": "1", **(env or {})}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(full, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = 124, f"timed out after {timeout} s: {e.output or ''}"
    out = {
        "cmd": " ".join(cmd),
        "rc": rc,
        "seconds": round(time.perf_counter() - t0, 1),
        "tail": text[-3000:],
    }
    print(f"[gpu_check] {out['cmd'][:90]}: rc {out['rc']} in {out['seconds']} s", flush=True)
    return out


def install_wheels(folder: Path) -> dict:
    names = [n for n in OPTIONAL if any(folder.glob(n.replace("-", "_") + "-*.whl"))]
    if not names:
        return {"installed": [], "rc": 0, "note": f"no {', '.join(OPTIONAL)} wheel in {folder}"}
    res = run(["-m", "pip", "install", "--no-index", "--find-links", str(folder), *names])
    return {"installed": names if res["rc"] == 0 else [], **res}


def kernel_tests() -> dict:
    res = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels/test_kernels_triton.py"])
    lines = [ln for ln in res["tail"].splitlines() if ln.strip()]
    return {**res, "summary": lines[-1] if lines else "", "ok": res["rc"] == 0}


def kernel_bench(repeats: int) -> list[dict]:
    threads = str(os.cpu_count() or 1)
    common = ["--no-write", "--repeats", str(repeats), "--threads", threads]
    return [run(["scripts/bench_kernels.py", *extra, *common]) for extra in BENCH_RUNS]


def dpo_args(snapshot: Path, out: Path, steps: int, precision: str) -> list[str]:
    """The demo DPO recipe, shortened: no SFT parent, reference per step, ``steps`` steps."""
    return [
        "-m", "onbrand.training.dpo", "--config", "configs/dpo/demo.yaml",
        f"data.snapshot={snapshot}", f"out_dir={out}", "init_from=null", "ref_cache=false",
        f"train.max_steps={steps}", "train.batch_size=4", "train.max_length=256", "train.save_every=0",
        "train.warmup_ratio=0.0", "train.scheduler=constant", "train.tracking.wandb=disabled",
        "dpo.nll_weight=0", f"train.precision={precision}",
    ]  # fmt: skip


def step_losses(run_dir: Path) -> list[float]:
    from onbrand.training.tracking import read_metrics

    return [float(r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


def compare(gpu: list[float], cpu: list[float], tol: float) -> dict:
    diffs = [abs(a - b) for a, b in zip(gpu, cpu)]
    ok = bool(diffs) and len(gpu) == len(cpu) and max(diffs) <= tol
    return {"bf16_cuda": gpu, "fp32_cpu": cpu, "abs_diff": diffs, "max_abs_diff": max(diffs, default=None),
            "tol": tol, "ok": ok}  # fmt: skip


def dpo_check(steps: int, tol: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="onbrand-gpu-check-") as tmp:
        snap, runs = Path(tmp) / "snapshot", {}
        build = run(["-m", "onbrand.data.snapshot", "--config", "configs/data/demo.yaml", f"out={snap}"])
        if build["rc"] != 0:
            return {"ok": False, "snapshot": build}
        for name, precision, hide in (
            ("bf16_cuda", "bf16", {}),
            ("fp32_cpu", "fp32", {"CUDA_VISIBLE_DEVICES": ""}),
        ):
            runs[name] = run(dpo_args(snap, Path(tmp) / name, steps, precision), env=hide)
            if runs[name]["rc"] != 0:
                return {"ok": False, "runs": runs}
        result = compare(step_losses(Path(tmp) / "bf16_cuda"), step_losses(Path(tmp) / "fp32_cpu"), tol)
    return {**result, "steps": steps, "runs": {k: {"seconds": v["seconds"]} for k, v in runs.items()}}


def environment() -> dict:
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}  # fmt: skip
    for mod in ("triton", "transformers", "peft", "accelerate", "trl", "liger_kernel", "gguf"):
        try:
            env[mod] = getattr(__import__(mod), "__version__", "installed")
        except ImportError:
            env[mod] = None
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not cuda_available():
        print("gpu_check: skipped (no CUDA device)")
        return 0
    res: dict = {"wheels": install_wheels(args.wheels) if args.wheels else None}
    res["environment"] = environment()
    res["kernel_tests"] = None if args.skip_tests else kernel_tests()
    res["kernel_bench"] = None if args.skip_bench else kernel_bench(args.bench_repeats)
    res["dpo"] = None if args.skip_dpo else dpo_check(args.steps, args.tol)
    parts = [res["kernel_tests"], res["dpo"], *(res["kernel_bench"] or [])]
    res["ok"] = all(p.get("ok", p.get("rc") == 0) for p in parts if p)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"gpu_check: {'PASS' if res['ok'] else 'FAIL'} -> {args.out}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
