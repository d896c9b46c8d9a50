"""Goodhart monitor: is the policy gaming the reward instead of getting better?

Each RL step it records the reward (total and per component), the KL to the reference, the
response length and the diversity of the responses (distinct-2 and 4-gram repetition, from eval's
``onbrand.stats.text`` so RL and eval measure the same thing). It warns when the reward
RISES while a proxy of reward hacking EXPLODES:

    rising  = mean(reward, last W steps) - mean(reward, first W steps) > min_reward_gain
    flags   = KL/token > kl_max
            | mean length > length_ratio_max * baseline length     (baseline = first W steps)
            | distinct-2  < distinct2_min_ratio * baseline distinct-2
            | repetition  > repetition_max
            | truncated   > baseline truncated + truncated_max_rise  (answers hit max_new_tokens:
                            the length growth the rollout cap hides from the length ratio)
    warning = rising & any(flags)

With ``stop: true`` a warning that lasts ``patience`` consecutive steps raises
:class:`GoodhartStop` (the recipe then saves the adapter as it was BEFORE that step's update).
Every step's signals go to the metrics (``goodhart/*``) and each warning to ``<run>/goodhart.jsonl``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onbrand.artifacts import atomic_write_bytes, atomic_write_text
from onbrand.config import check_range
from onbrand.stats.text import distinct_n, repetition_rate
from onbrand.training.tracking import read_metrics


@dataclass
class GoodhartConfig:
    window: int = 4  # steps in the baseline window and in the "recent" window
    min_reward_gain: float = 0.0  # reward gain (recent - baseline) that counts as "rising"
    kl_max: float = 0.5  # nats per completion token
    length_ratio_max: float = 2.0
    distinct2_min_ratio: float = 0.5
    repetition_max: float = 0.5
    truncated_max_rise: float = 0.2  # rise of the fraction cut at rollout.max_new_tokens
    stop: bool = False  # raise GoodhartStop when the warning persists
    patience: int = 2

    def __post_init__(self) -> None:
        check_range("goodhart.window", self.window, 1, 10_000)
        check_range("goodhart.kl_max", self.kl_max, 0, None, lo_open=True)
        check_range("goodhart.length_ratio_max", self.length_ratio_max, 1, None, lo_open=True)
        check_range("goodhart.distinct2_min_ratio", self.distinct2_min_ratio, 0, 1)
        check_range("goodhart.repetition_max", self.repetition_max, 0, 1)
        check_range("goodhart.truncated_max_rise", self.truncated_max_rise, 0, 1)
        check_range("goodhart.patience", self.patience, 1, 10_000)


class GoodhartStop(RuntimeError):
    """The reward rose while KL/length/diversity went out of bounds for ``patience`` steps."""


def diversity(texts: list[str]) -> dict[str, float]:
    """distinct-2 over the batch and mean 4-gram repetition per response."""

    return {
        "distinct_2": distinct_n(texts, 2),
        "repetition": sum(repetition_rate(t) for t in texts) / max(1, len(texts)),
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


class GoodhartMonitor:
    """``observe(step, signals) -> metrics``; ``signals`` has reward, kl, length, distinct_2, repetition
    and optionally truncated (fraction of answers cut at max_new_tokens; 0 when absent)."""

    def __init__(self, cfg: GoodhartConfig, log_path: str | Path | None = None, verbose: bool = True):
        self.cfg = cfg
        self.log_path = Path(log_path) if log_path else None
        self.verbose = verbose
        self.history: list[dict[str, float]] = []
        self.streak = 0
        self.warnings: list[dict[str, Any]] = []

    def _flags(self, now: dict[str, float], base: dict[str, float]) -> list[str]:
        c = self.cfg
        flags = []
        if now["kl"] > c.kl_max:
            flags.append(f"KL {now['kl']:.3f}/token > {c.kl_max}")
        if base["length"] > 0 and now["length"] > c.length_ratio_max * base["length"]:
            flags.append(f"length {now['length']:.1f} > {c.length_ratio_max} x baseline {base['length']:.1f}")
        if base["distinct_2"] > 0 and now["distinct_2"] < c.distinct2_min_ratio * base["distinct_2"]:
            flags.append(
                f"distinct-2 {now['distinct_2']:.3f} < {c.distinct2_min_ratio} x baseline {base['distinct_2']:.3f}"
            )
        if now["repetition"] > c.repetition_max:
            flags.append(f"repetition {now['repetition']:.3f} > {c.repetition_max}")
        if now["truncated"] > base["truncated"] + c.truncated_max_rise:
            flags.append(
                f"truncated {now['truncated']:.2f} > baseline {base['truncated']:.2f} + {c.truncated_max_rise}"
            )
        return flags

    def observe(self, step: int, signals: dict[str, float]) -> dict[str, float]:
        keys = ("reward", "kl", "length", "distinct_2", "repetition")
        missing = [k for k in keys if k not in signals]
        if missing:
            raise ValueError(f"goodhart monitor: signals lack {missing}")
        self.history.append(
            {k: float(signals[k]) for k in keys} | {"truncated": float(signals.get("truncated", 0))}
        )
        keys = (*keys, "truncated")
        w = self.cfg.window
        base = {k: _mean([h[k] for h in self.history[:w]]) for k in keys}
        recent = {k: _mean([h[k] for h in self.history[-w:]]) for k in keys}
        now = self.history[-1]
        gain = recent["reward"] - base["reward"]
        rising = len(self.history) > w and gain > self.cfg.min_reward_gain
        flags = self._flags(now, base) if rising else []
        self.streak = self.streak + 1 if flags else 0
        out = {
            "goodhart/reward_gain": gain,
            "goodhart/length_ratio": now["length"] / base["length"] if base["length"] else 1.0,
            "goodhart/distinct2_ratio": now["distinct_2"] / base["distinct_2"] if base["distinct_2"] else 1.0,
            "goodhart/warning": float(bool(flags)),
        }
        if flags:
            self._warn(step, gain, flags, now)
        return out

    def _warn(self, step: int, gain: float, flags: list[str], now: dict[str, float]) -> None:
        record = {"step": step, "reward_gain": gain, "flags": flags, **now}
        self.warnings.append(record)
        if self.verbose:
            print(
                f"goodhart: step {step}: reward up {gain:+.3f} while " + "; ".join(flags)
                + (" (stopping)" if self.should_stop else ""),
                file=sys.stderr,
            )  # fmt: skip
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    @property
    def should_stop(self) -> bool:
        return self.cfg.stop and self.streak >= self.cfg.patience

    def check_stop(self, step: int) -> None:
        if self.should_stop:
            last = self.warnings[-1]["flags"] if self.warnings else []
            raise GoodhartStop(
                f"step {step}: reward kept rising for {self.streak} steps while {'; '.join(last)} "
                "(goodhart.stop=true); the adapter is saved as it was before this step"
            )


# ----------------------------------------------------------------------------- report
CURVES = (
    ("reward", "reward/"),  # every reward component + task/total
    ("KL to reference (nats/token)", "kl"),
    ("completion length (tokens)", "completion/length"),
    ("distinct-2 / repetition", "completion/"),
)


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """``<run>/rl_curves.png`` (reward components, KL, length, diversity per step) and
    ``<run>/rl_report.md`` (first vs last steps, Goodhart warnings). Returns both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl: no steps logged")
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for ax, (title, key) in zip(axes, CURVES):
        if key == "completion/":
            keys = ["completion/distinct_2", "completion/repetition"]
        elif key.endswith("/"):
            keys = sorted(k for k in rows[0] if k.startswith(key) and k != "reward/group_std")
        else:
            keys = [key]
        for k in keys:
            ax.plot(steps, [float(r.get(k, "nan")) for r in rows], marker=".", label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    warned = [r["step"] for r in rows if r.get("goodhart/warning")]
    for ax in axes:
        for s in warned:
            ax.axvline(s, color="red", alpha=0.25)
    fig.tight_layout()
    png = run_dir / "rl_curves.png"
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(png, buf.getvalue())
    md = run_dir / "rl_report.md"
    atomic_write_text(md, _markdown(rows, run_dir))
    return png, md


def _markdown(rows: list[dict[str, Any]], run_dir: Path) -> str:
    w = max(1, min(3, len(rows) // 2))
    keys = [k for k in rows[0] if k.startswith(("reward/", "kl", "completion/")) and k != "reward/group_std"]
    lines = [
        f"# RL run {run_dir.name}: {len(rows)} steps",
        "",
        "![curves](rl_curves.png)",
        "",
        f"| metric | first {w} steps | last {w} steps |",
        "| --- | --- | --- |",
    ]
    for k in keys:
        a = _mean([float(r[k]) for r in rows[:w]])
        b = _mean([float(r[k]) for r in rows[-w:]])
        lines.append(f"| {k} | {a:.4f} | {b:.4f} |")
    warn_path = run_dir / "goodhart.jsonl"
    warns = [json.loads(x) for x in warn_path.read_text().splitlines()] if warn_path.exists() else []
    lines += ["", f"Goodhart warnings: {len(warns)}"]
    lines += [
        f"- step {x['step']}: reward {x['reward_gain']:+.3f} while {'; '.join(x['flags'])}"
        for x in warns[:20]
    ]
    return "\n".join(lines) + "\n"
