"""Metric sinks: local JSONL always; wandb (offline unless an API key says otherwise) and
tensorboard optional. A sink that fails to start is reported once and skipped: tracking never
stops or hangs a run (wandb is started with a short init timeout and offline by default)."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass
class TrackingConfig:
    wandb: Literal["disabled", "offline", "online"] = "offline"
    tensorboard: bool = False
    project: str = "onbrand"


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    return v


class Tracker:
    """``log(step, metrics)`` to ``<run>/metrics.jsonl`` (+ wandb / tensorboard); rank 0 only."""

    def __init__(self, run_dir: str | Path, cfg: TrackingConfig, run_name: str, config: dict, enabled=True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb = None
        self._tb = None
        if not enabled:
            return
        mode = cfg.wandb
        if os.environ.get("WANDB_MODE") == "disabled":
            mode = "disabled"
        if mode == "online" and not os.environ.get("WANDB_API_KEY"):
            print("tracking: no WANDB_API_KEY, wandb runs offline", file=sys.stderr)
            mode = "offline"
        if mode != "disabled":
            try:
                import wandb

                self._wandb = wandb.init(
                    project=cfg.project,
                    name=run_name,
                    dir=str(run_dir),
                    mode=mode,
                    config=config,
                    settings=wandb.Settings(init_timeout=30, silent=True),
                )
            except Exception as e:  # noqa: BLE001 - any wandb failure must not stop training
                print(f"tracking: wandb disabled ({type(e).__name__}: {e})", file=sys.stderr)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception as e:  # noqa: BLE001
                print(f"tracking: tensorboard disabled ({type(e).__name__}: {e})", file=sys.stderr)

    def truncate(self, step: int) -> None:
        """On resume drop lines past ``step`` (written after the checkpoint we resume from)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [
            ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step
        ]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
