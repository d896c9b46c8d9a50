"""The loop every recipe shares: data order, micro-batching, DDP, clipping, metrics, checkpoints.

A recipe supplies ``step_fn(model, pairs) -> (loss, metrics)`` for one micro-batch of
:class:`~onbrand.training.batching.TokenizedPair` (loss = mean over those pairs; metrics are
per-micro-batch means as floats or 0-d tensors). An optional ``step_fn.begin_step(mine, world, reduce_sum)``
is called once per optimizer step with this rank's pairs, the world size and a cross-rank float sum, for terms
normalised over the whole global batch (DPO's token-mean NLL). This loop is written by hand rather than on
``transformers.Trainer`` because the packed batches (one row holds many pairs, 4D masks) and the
hidden-state-only loss do not fit Trainer's padded-batch/logits contract; ``accelerate`` still does
the device placement, DDP/FSDP wrapping and gradient sync.

Global batch semantics: ``train.batch_size`` pairs per optimizer step across all ranks; each rank
takes a contiguous ``batch_size / world`` slice, split into micro-batches of
``train.micro_batch_size`` pairs. The step loss is the mean over the global batch, so a 2-process
run equals a 1-process run with the same global batch.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from onbrand.config import check_range
from onbrand.training.checkpoint import (
    checkpoint_states,
    config_fingerprint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    trainable_state,
)
from onbrand.training.fsdp_cpu import cpu_fsdp_requested, full_tensor, is_sharded, make_cpu_fsdp_accelerator
from onbrand.training.tracking import Tracker, TrackingConfig


@dataclass
class TrainConfig:
    epochs: float = 1.0
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 8  # pairs per optimizer step (global, all ranks)
    micro_batch_size: int = 0  # pairs per forward (0 = the whole per-rank batch)
    max_length: int = 512  # prompt + longest completion, tokens
    max_tokens_per_row: int = 2048  # packing budget of one row
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = 1.0
    # auto: bf16 where the hardware has native bf16 (CUDA with bf16, a CPU with AVX-512 BF16 or AMX),
    # else fp32. Without native support bf16 is emulated and 2-4x slower per step on CPU
    # (bench/results/cpu_dtype.md); setup_run resolves it once, so run.json records the real one.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0
    shuffle: bool = True  # False: dataset order (to compare step by step with another trainer)
    threads: int = 0  # torch intra-op threads (0 = torch default)
    log_every: int = 1
    save_every: int = 0  # checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2
    stop_after: int = 0  # stop (as if killed) after saving step N; for resume tests
    resume: bool = True  # continue from the latest checkpoint in out_dir
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        check_range("train.epochs", self.epochs, 0, None, lo_open=True)
        check_range("train.max_steps", self.max_steps, 0, None)
        check_range("train.batch_size", self.batch_size, 1, None)
        check_range("train.micro_batch_size", self.micro_batch_size, 0, self.batch_size)
        check_range("train.max_length", self.max_length, 16, 1 << 20)
        check_range("train.max_tokens_per_row", self.max_tokens_per_row, 16, None)
        check_range("train.lr", self.lr, 0, 1, lo_open=True)
        check_range("train.warmup_ratio", self.warmup_ratio, 0, 1)
        check_range("train.max_grad_norm", self.max_grad_norm, 0, None)
        check_range("train.threads", self.threads, 0, 1024)


class TrainingDiverged(RuntimeError):
    """Loss became NaN/inf; the message names the step and the last good checkpoint."""


StepFn = Callable[[torch.nn.Module, list], tuple[torch.Tensor, dict[str, Any]]]


def cpu_has_native_bf16() -> bool:
    """The CPU advertises bf16 instructions (AVX-512 BF16 or AMX BF16; Linux /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on hardware with native bf16, else ``fp32``; other values unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_accelerator():
    from accelerate import Accelerator

    if cpu_fsdp_requested():  # accelerate alone would run FSDP-on-CPU as DDP
        return make_cpu_fsdp_accelerator()
    return Accelerator(cpu=not torch.cuda.is_available())


def batch_indices(n: int, batch: int, seed: int, step: int, shuffle: bool = True) -> list[int]:
    """Global pair indices of optimizer step ``step``: a seeded permutation per epoch."""
    per_epoch = n // batch
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
    return perm[k * batch : (k + 1) * batch]


def _optimizer(model, cfg: TrainConfig, total: int):
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters (check lora.target_modules)")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_scheduler(
        cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup",
        opt,
        num_warmup_steps=int(round(cfg.warmup_ratio * total)),
        num_training_steps=total,
    )
    return opt, sched


def _reduce(acc, values: dict[str, float], weight: float) -> dict[str, float]:
    """Weighted mean of per-rank metrics across ranks (weights = pairs per rank)."""
    keys = sorted(values)
    t = torch.tensor([values[k] * weight for k in keys] + [weight], dtype=torch.float64)
    if acc.num_processes > 1:
        t = acc.reduce(t.to(acc.device), reduction="sum").cpu()
    return {k: (t[i] / t[-1]).item() for i, k in enumerate(keys)}


def _reduce_sum(acc, value: float) -> float:
    """Sum of a per-rank float over ranks."""
    t = torch.tensor([value], dtype=torch.float64)
    if acc.num_processes > 1:
        t = acc.reduce(t.to(acc.device), reduction="sum").cpu()
    return t.item()


@dataclass
class LoopResult:
    steps: int
    last_metrics: dict[str, Any]
    stopped_early: bool
    seconds: float
    # FSDP: the whole trainable parameters (gathered on every rank), for saving the adapter on one
    trainable: dict[str, torch.Tensor] | None = None


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    per_epoch = n_train // cfg.batch_size
    if per_epoch < 1:
        raise ValueError(f"train.batch_size={cfg.batch_size} is larger than the {n_train} training pairs")
    return cfg.max_steps or max(1, int(math.floor(cfg.epochs * per_epoch)))


def _resume_point(acc, cfg: TrainConfig, out_dir: Path, fingerprint: str, model, opt, sched, total: int):
    """``(start_step, checkpoint or None)``: the newest checkpoint of this config, loaded into model/opt/sched."""
    ckpt = latest_checkpoint(out_dir, fingerprint) if cfg.resume else None
    if cfg.resume and ckpt is None and latest_checkpoint(out_dir) is not None and acc.is_main_process:
        print(
            f"not resuming: the checkpoints in {Path(out_dir) / 'checkpoints'} were written by a different "
            "config or data; training from step 0",
            file=sys.stderr,
        )
    if ckpt is None:
        return 0, None
    start = load_checkpoint(ckpt, model, opt, sched)["step"]
    if acc.is_main_process:
        print(f"resuming from {ckpt} (step {start}/{total})", file=sys.stderr)
    return start, ckpt


def _accumulate(acc, wrapped, step_fn: StepFn, mine: list, micro: int, step: int, last_good: str | None):
    """Forward/backward every micro-batch of ``mine``; gradients sync on the last one only.

    Returns the per-rank metric means (``loss`` included), each micro-batch weighted by its pairs."""
    chunks = [mine[i : i + micro] for i in range(0, len(mine), micro)]
    sums: dict[str, float] = {}
    for j, chunk in enumerate(chunks):
        sync = contextlib.nullcontext() if j == len(chunks) - 1 else acc.no_sync(wrapped)
        with sync:
            loss, m = step_fn(wrapped, chunk)
            if not torch.isfinite(loss.detach()).all():
                raise TrainingDiverged(
                    f"loss is {loss.item()} at step {step}; last good checkpoint: "
                    f"{last_good or 'none (no checkpoint saved yet)'}. Lower train.lr, use "
                    "train.precision=fp32, or check the data of this batch"
                )
            acc.backward(loss * (len(chunk) / len(mine)))
        m["loss"] = loss.detach()
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(chunk) / len(mine)
    return sums


def _optimizer_step(acc, model, opt, sched, cfg: TrainConfig) -> tuple[Any, float]:
    """Clip, step the optimizer and scheduler, zero the gradients; returns ``(grad_norm, lr used)``."""
    grad_norm = acc.clip_grad_norm_(
        [p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm or float("inf")
    )
    grad_norm = full_tensor(grad_norm)  # FSDP: a DTensor
    lr = sched.get_last_lr()[0]
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return grad_norm, lr


def _step_metrics(
    acc, sums: dict[str, float], mine: list, tokens_of: Callable[[list], int], grad_norm: float, lr: float,
    dt: float, epoch: float,
) -> dict[str, Any]:  # fmt: skip
    """The step's logged metrics: cross-rank means of ``sums`` plus throughput, memory and schedule."""
    metrics = _reduce(acc, sums, float(len(mine)))
    tok = _reduce_sum(acc, float(tokens_of(mine)))
    metrics.update(
        grad_norm=grad_norm, lr=lr, step_seconds=dt, tokens_per_s=tok / dt,
        peak_memory_mb=peak_memory_mb(acc.device), world_size=acc.num_processes, epoch=epoch,
    )  # fmt: skip
    return metrics


def _oom_error(step: int, e: BaseException) -> MemoryError:
    return MemoryError(
        f"out of memory at step {step} ({e}); lower train.micro_batch_size, train.max_length or "
        "train.max_tokens_per_row, set train.gradient_checkpointing=true, or use lora.quantize=nf4"
    )


def run_loop(
    acc, model, wrapped, train: list, cfg: TrainConfig, out_dir: Path, step_fn: StepFn, run_name: str,
    config_dict: dict, tokens_of: Callable[[list], int], lineage: dict | None = None,
) -> LoopResult:  # fmt: skip
    """Train ``wrapped`` (the accelerate-prepared ``model``) for ``total_steps`` optimizer steps.

    Resumes from the newest checkpoint in ``out_dir`` written by the same config and ``lineage``
    (snapshot id, model hash); checkpoints of another config are reported and left alone."""
    world, rank = acc.num_processes, acc.process_index
    if cfg.batch_size % world:
        raise ValueError(f"train.batch_size={cfg.batch_size} must be divisible by the world size {world}")
    total = total_steps(cfg, len(train))
    opt, sched = _optimizer(model, cfg, total)
    fingerprint = config_fingerprint(config_dict, lineage)
    start, ckpt = _resume_point(acc, cfg, out_dir, fingerprint, model, opt, sched, total)
    tracker = Tracker(out_dir, cfg.tracking, run_name, config_dict, enabled=acc.is_main_process)
    tracker.truncate(start)
    last_good = str(ckpt) if ckpt else None
    per_rank = cfg.batch_size // world
    micro = cfg.micro_batch_size or per_rank
    metrics: dict[str, Any] = {}
    t_run = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, desc=run_name, disable=not acc.is_main_process, dynamic_ncols=True)
    step = start
    try:
        for step in range(start + 1, total + 1):
            t0 = time.perf_counter()
            idx = batch_indices(len(train), cfg.batch_size, cfg.seed, step - 1, cfg.shuffle)
            mine = [train[i] for i in idx[rank * per_rank : (rank + 1) * per_rank]]
            begin = getattr(step_fn, "begin_step", None)
            if begin is not None:  # step-level context (e.g. token counts over the global batch)
                begin(mine, world, lambda v: _reduce_sum(acc, v))
            sums = _accumulate(acc, wrapped, step_fn, mine, micro, step, last_good)
            grad_norm, lr = _optimizer_step(acc, model, opt, sched, cfg)
            dt = time.perf_counter() - t0
            epoch = (step - 1) * cfg.batch_size / len(train)
            metrics = _step_metrics(acc, sums, mine, tokens_of, float(grad_norm), lr, dt, epoch)
            if step % cfg.log_every == 0 or step == total:
                tracker.log(step, metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.stop_after:
                states = checkpoint_states(model, opt)  # every rank: FSDP gathers its shards
                if acc.is_main_process:
                    extra = {"total_steps": total, "seed": cfg.seed, "config_fingerprint": fingerprint}
                    last_good = str(
                        save_checkpoint(out_dir, step, model, opt, sched, extra, cfg.keep_checkpoints, states)
                    )
                acc.wait_for_everyone()
            if cfg.stop_after and step == cfg.stop_after:
                return LoopResult(step, metrics, True, time.perf_counter() - t_run)
    except (torch.OutOfMemoryError, MemoryError) as e:
        raise _oom_error(step, e) from None
    finally:
        bar.close()
        tracker.close()
    gathered = trainable_state(model) if is_sharded(model) else None
    return LoopResult(total, metrics, False, time.perf_counter() - t_run, gathered)
