"""Benchmark the lm_head loss path: fwd+bwd of per-token log-probs -> DPO (sigmoid) loss.

Side by side in one run, for each shape and head mode (frozen = LoRA, trainable):

(a) naive PyTorch: full logits, log_softmax, gather;
(b) TRL 1.x's own chunked log-prob path (``trl.kernels.ChunkedLogProbFunction``, what its fused
    LM head calls);
(c) Liger-Kernel's ``LigerFusedLinearDPOLoss`` (torch.compile'd chunked loss; runs on CPU);
(d) ours: ``onbrand.kernels.fused_linear_logprobs`` + ``onbrand.kernels.losses.preference_loss``;
(e) ours-fused: ``onbrand.kernels.fused_linear_preference_loss`` (one pass, also with a trainable head).

All rows are completion tokens, reference log-probs are 0 (Liger's ``use_ref_model=False``), beta
0.1. Time: median of ``--repeats`` interleaved repeats after one warm-up (Liger compiles there).
Peak memory: each variant in its own process (warm-up, then the peak resident set of one fwd+bwd
above the resident set before it; glibc's mmap threshold is fixed so freed buffers go back to the
OS). Numerics: loss and gradients against (a).

    python scripts/bench_kernels.py                      # full run (about 20-30 min on 1 thread)
    python scripts/bench_kernels.py --shapes tiny --repeats 2 --no-write   # smoke test

Writes ``bench/results/kernels.json``, ``bench/results/kernels.md`` and ``bench/results/kernels.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
# name -> (B pairs*2 rows, T, H, V)
SHAPES = {
    "tiny": (4, 32, 64, 1000),
    "4x256": (4, 256, 576, 49152),
    "4x1024": (4, 1024, 576, 49152),
    "large-vocab-4x64": (4, 64, 4096, 128256),
}
VARIANTS = ("naive", "trl", "liger", "ours", "ours-fused")
OURS = ("ours", "ours-fused")
MODES = ("frozen", "trainable")
BETA = 0.1


def make_inputs(shape: str, mode: str, seed: int = 0):
    """hidden (2B, T, H) fp32 leaf, weight (V, H), targets (2B, T); half the rows chosen."""
    b, t, h, v = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g) * (1.0 / h**0.5)).requires_grad_(mode == "trainable")
    targets = torch.randint(0, v, (b, t), generator=g)
    return hidden, weight, targets


def dpo_from_token_logps(logp):
    """logp (2B, T) -> DPO sigmoid loss with reference log-probs 0 (same for every variant)."""
    from onbrand.kernels.losses import preference_loss

    seq = logp.sum(1)
    half = seq.shape[0] // 2
    zeros = torch.zeros_like(seq[:half])
    return preference_loss(seq[:half], seq[half:], zeros, zeros, beta=BETA).loss


def make_variant(name: str):
    """Return fn(hidden, weight, targets) -> scalar loss."""
    if name == "naive":

        def fn(hidden, weight, targets):
            logits = hidden @ weight.T
            logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            return dpo_from_token_logps(logp)

    elif name == "trl":
        from trl.kernels import ChunkedLogProbFunction

        def fn(hidden, weight, targets):
            h2 = hidden.reshape(-1, hidden.shape[-1])
            # Arguments as TRL's fused LM head passes them (its default chunk size, log_probs only).
            out = ChunkedLogProbFunction.apply(
                h2, weight, None, targets.reshape(-1), 1.0, 32768, None, 1.0, ("log_probs",)
            )
            return dpo_from_token_logps(out[0].view(targets.shape))

    elif name == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

        module = LigerFusedLinearDPOLoss(beta=BETA, use_ref_model=False, compiled=True)

        def fn(hidden, weight, targets):
            return module(weight, hidden, targets)[0]

    elif name == "ours":
        from onbrand.kernels import fused_linear_logprobs

        def fn(hidden, weight, targets):
            return dpo_from_token_logps(fused_linear_logprobs(hidden, weight, targets))

    elif name == "ours-fused":
        from onbrand.kernels import fused_linear_preference_loss

        def fn(hidden, weight, targets):
            half = hidden.shape[0] // 2
            zeros = torch.zeros(half)
            return fused_linear_preference_loss(
                hidden, weight, targets, ref_chosen_logps=zeros, ref_rejected_logps=zeros, beta=BETA
            ).loss

    else:
        raise ValueError(f"unknown variant {name!r}; valid: {VARIANTS}")
    return fn


def run_once(fn, hidden, weight, targets):
    hidden.grad = None
    weight.grad = None
    t0 = time.perf_counter()
    loss = fn(hidden, weight, targets)
    loss.backward()
    return time.perf_counter() - t0, loss.detach()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(variant: str, shape: str, mode: str, threads: int) -> dict:
    """In a fresh process: warm up, reset the peak RSS, run one fwd+bwd, report the extra peak."""
    torch.set_num_threads(threads)
    hidden, weight, targets = make_inputs(shape, mode)
    fn = make_variant(variant)
    run_once(fn, hidden, weight, targets)
    hidden.grad = None
    weight.grad = None
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    base = _status_kb("VmRSS")
    run_once(fn, hidden, weight, targets)
    peak = _status_kb("VmHWM")
    return {"peak_extra_mb": (peak - base) / 1024}


def measure_memory(variant: str, shape: str, mode: str, threads: int) -> float:
    env = dict(
        os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072", PYTHONSAFEPATH="1"
    )
    cmd = [sys.executable, __file__, "--worker", variant, shape, mode, "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {variant}/{shape}/{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra_mb"]


def rel_err(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30)).item()


def time_shape(shape: str, mode: str, variants, repeats: int, threads: int) -> dict:
    """Interleaved repeats of every variant on the same inputs; numerics vs naive from the warm-up."""
    from tqdm import tqdm

    torch.set_num_threads(threads)
    hidden, weight, targets = make_inputs(shape, mode)
    fns = {v: make_variant(v) for v in variants}
    times = {v: [] for v in variants}
    errors, ref = {}, None
    for v in variants:  # warm-up (Liger compiles here); numerics vs naive without keeping every gradient
        _, loss = run_once(fns[v], hidden, weight, targets)
        got = (loss, hidden.grad.clone(), None if weight.grad is None else weight.grad.clone())
        if v == "naive":
            ref = got
        if ref is not None:
            errors[v] = dict(
                zip(("rel_err_loss", "rel_err_grad_hidden", "rel_err_grad_weight"), map(rel_err, got, ref))
            )
        del got
    for _ in tqdm(range(repeats), desc=f"{shape}/{mode}", leave=False):
        for v in variants:
            times[v].append(run_once(fns[v], hidden, weight, targets)[0])
    out = {}
    for v in variants:
        out[v] = {"times_s": times[v], "median_s": statistics.median(times[v]), **errors.get(v, {})}
    del ref
    return out


TARGETS = {
    # (mode, metric, versus, max ratio) for 4x1024, from issue 4.
    ("frozen", "mem", "naive"): 0.10,
    ("frozen", "mem", "liger"): 0.20,
    ("frozen", "time", "naive"): 0.80,
    ("frozen", "time", "liger"): 0.85,
    ("frozen", "time", "trl"): 0.85,
    ("trainable", "mem", "naive"): 0.25,
    ("trainable", "mem", "liger"): 1.00,
    ("trainable", "time", "naive"): 1.10,
    ("trainable", "time", "liger"): 1.00,
}


def check_targets(results: dict, shape: str = "4x1024") -> list[dict]:
    rows = []
    for ours in OURS:
        for (mode, metric, versus), limit in TARGETS.items():
            r = results.get(f"{shape}/{mode}")
            if not r or versus not in r or ours not in r:
                continue
            key = "median_s" if metric == "time" else "peak_extra_mb"
            if r[ours].get(key) is None or not r[versus].get(key):
                continue
            ratio = r[ours][key] / r[versus][key]
            met = ratio <= limit
            rows.append(
                dict(ours=ours, mode=mode, metric=metric, versus=versus, limit=limit, ratio=ratio, met=met)
            )
    return rows


def _fmt(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)


def markdown(results: dict, targets: list[dict], command: str, meta: dict) -> str:
    lines = [
        "## Kernels: fused linear log-prob + DPO loss (lm_head fwd+bwd)",
        "",
        "```bash",
        command,
        "```",
        "",
        f"CPU {meta['cpu']}, {meta['torch_threads']} torch thread(s), fp32, torch {meta['torch']}. "
        f"Median of {meta['repeats']} interleaved repeats; peak extra memory of one fwd+bwd, each variant in its own "
        "process. Errors: max relative difference to naive (loss / grad hidden / grad weight). "
        "Triton path: not measured on GPU (no GPU in this run).",
        "",
        "| shape (B×T, H, V) | head | variant | time s | vs naive | vs Liger | peak extra MB | vs naive | err loss / gh / gw |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for key, r in results.items():
        shape, mode = key.split("/")
        b, t, h, v = SHAPES[shape]
        for var, e in r.items():
            tn, tl = r.get("naive", {}).get("median_s"), r.get("liger", {}).get("median_s")
            mn = r.get("naive", {}).get("peak_extra_mb")
            errs = " / ".join(
                _fmt(e.get(k), ".1e") for k in ("rel_err_loss", "rel_err_grad_hidden", "rel_err_grad_weight")
            )
            lines.append(
                f"| {b}×{t}, {h}, {v} | {mode} | {var} | {_fmt(e['median_s'], '.3f')} | "
                f"{_fmt(e['median_s'] / tn if tn else None)} | {_fmt(e['median_s'] / tl if tl else None)} | "
                f"{_fmt(e.get('peak_extra_mb'), '.0f')} | "
                f"{_fmt(e['peak_extra_mb'] / mn if mn and e.get('peak_extra_mb') is not None else None, '.3f')} | {errs} |"
            )
    if targets:
        lines += [
            "",
            "Targets of issue 4 (4×1024, ours / other):",
            "",
            "| ours | head | metric | vs | ratio | target | met |",
        ]
        lines.append("|---|---|---|---|---:|---:|---|")
        for x in targets:
            lines.append(
                f"| {x['ours']} | {x['mode']} | {x['metric']} | {x['versus']} | {x['ratio']:.3f} | ≤ {x['limit']} | "
                f"{'yes' if x['met'] else 'NO'} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(VARIANTS)
    for i, var in enumerate(VARIANTS):
        xs = [k for k in range(len(keys)) if var in results[keys[k]]]
        for ax, metric in zip(axes, ("median_s", "peak_extra_mb")):
            ax.bar(
                [x + i * width for x in xs],
                [results[keys[x]][var].get(metric) or 0 for x in xs],
                width,
                label=var,
            )
    for ax, title in zip(axes, ("fwd+bwd time (s, median)", "peak extra memory (MB)")):
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(keys))], keys, rotation=20, fontsize=8)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write(results: dict, command: str, meta: dict) -> None:
    from onbrand.artifacts import atomic_write_json, atomic_write_text

    targets = check_targets(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        RESULTS / "kernels.json", dict(machine=meta, command=command, results=results, targets=targets)
    )
    atomic_write_text(RESULTS / "kernels.md", markdown(results, targets, command, meta))
    plot(results, RESULTS / "kernels.png")
    print(f"wrote {RESULTS.relative_to(REPO)}/kernels.{{json,md,png}}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="4x1024,4x256,large-vocab-4x64", help=f"comma list of {list(SHAPES)}")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-memory", action="store_true", help="skip the per-process peak memory runs")
    p.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    p.add_argument(
        "--merge", action="store_true", help="keep results of other shapes/modes already in kernels.json"
    )
    p.add_argument("--worker", nargs=3, metavar=("VARIANT", "SHAPE", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads)))
        return 0
    shapes, modes, variants = args.shapes.split(","), args.modes.split(","), args.variants.split(",")
    for name, valid, got in (
        ("shape", SHAPES, shapes),
        ("mode", MODES, modes),
        ("variant", VARIANTS, variants),
    ):
        bad = [x for x in got if x not in valid]
        if bad:
            raise SystemExit(f"unknown {name} {bad}; valid: {list(valid)}")
    command = "python scripts/bench_kernels.py" + (
        ""
        if argv is None and len(sys.argv) == 1
        else " " + " ".join(argv if argv is not None else sys.argv[1:])
    )
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), platform.processor())  # fmt: skip
    meta = dict(cpu=cpu, cpu_count=os.cpu_count(), platform=platform.platform(), python=platform.python_version(),
                torch=torch.__version__, torch_threads=args.threads, repeats=args.repeats, gpu="not measured on GPU")  # fmt: skip
    results = {}
    if args.merge and (RESULTS / "kernels.json").exists():
        previous = json.loads((RESULTS / "kernels.json").read_text())
        results = previous["results"]
        command = (
            previous["command"] if previous["command"] == command else f"{previous['command']}; {command}"
        )
    for shape in shapes:
        for mode in modes:
            r = time_shape(shape, mode, variants, args.repeats, args.threads)
            if not args.no_memory:
                for v in variants:
                    r[v]["peak_extra_mb"] = measure_memory(v, shape, mode, args.threads)
            results[f"{shape}/{mode}"] = r
            print(
                f"{shape}/{mode}: " + ", ".join(f"{v} {r[v]['median_s']:.2f}s" for v in variants), flush=True
            )
            if not args.no_write:  # after every shape, so a long run that is stopped keeps what it measured
                write(results, command, meta)
    print(markdown(results, check_targets(results), command, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
