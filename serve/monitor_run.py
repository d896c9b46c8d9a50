"""One monitor run: resolve the baseline, brand card, tokenizer and scorers; stream the logs once;
score the reservoirs; test; write ``monitor.json``, ``monitor.md`` and the PNGs (each file atomic)."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

from onbrand.artifacts import atomic_write_json, atomic_write_text, now_iso
from onbrand.config import to_dict
from onbrand.serve.conversations import Problems, iter_conversations, log_files
from onbrand.serve.monitor import (
    MonitorConfig,
    PassContext,
    aggregate,
    length_counter,
    refusal_regex,
    score_samples,
)
from onbrand.serve.monitor_baseline import Baseline, load_baseline
from onbrand.serve.monitor_checks import drift_checks
from onbrand.serve.monitor_report import monitor_md, window_rows, write_plots

SCHEMA = "onbrand.monitor/1"
TARGETS = {
    "holm": "family-wise error rate: the chance of any false alarm in one run over a stable log",
    "bh": "false discovery rate: the expected share of false alarms among the flagged checks",
}


def _card(cfg: MonitorConfig, base: Baseline | None):
    from onbrand.data.brand import load_brand

    path = cfg.brand or (base.brand if base else "")
    if not path:
        return None
    if not Path(path).exists():
        named = f" (named by {base.source})" if not cfg.brand and base else ""
        raise FileNotFoundError(f"{path}: brand card not found{named}; pass --brand configs/brands/<id>.yaml")
    return load_brand(path)


def _scorer(cfg: MonitorConfig, base: Baseline | None, notes: list[str]):
    run = cfg.reward
    if run == "eval":
        run = (base.reward_run if base else None) or ""
        if not run:
            raise ValueError(
                "reward: eval: the baseline's eval report names no reward run; pass --reward <run dir>"
            )
    if not run:
        return None
    from onbrand.scoring import load_scorer

    notes.append(
        f"reward-model scores: {run}, on a seeded sample of at most {cfg.scored_per_window} exchanges per window"
    )
    return load_scorer(run)


def _embedder(cfg: MonitorConfig, card, notes: list[str]):
    if not cfg.voice:
        return None
    if card is None or not card.exemplars:
        raise ValueError("voice: true needs a brand card with exemplars (pass --brand)")
    from onbrand.embedder import load_embedder

    notes.append(f"brand-voice similarity on the same sample (at most {cfg.scored_per_window} per window)")
    return load_embedder()


def prepare(cfg: MonitorConfig) -> tuple[PassContext, dict[str, Any]]:
    """The pass context and what the report says about the inputs (baseline, scorers, notes)."""
    notes: list[str] = []
    base = load_baseline(cfg.baseline) if cfg.baseline else None
    if base is None:
        notes.append("no release baseline (--baseline / --export): only the absolute ceilings are tested")
    card = _card(cfg, base)
    tokenizer = cfg.tokenizer or (base.tokenizer if base else None)
    lengths, unit, length_note = length_counter(cfg, tokenizer)
    notes.append(f"length unit: {length_note}")
    ctx = PassContext(cfg, card, lengths, refusal_regex(cfg.refusal_patterns), random.Random(cfg.seed))
    info = {
        "baseline": base,
        "card": card,
        "unit": unit,
        "length_tested": unit == "tokens" and base is not None and base.length is not None,
        "scorer": _scorer(cfg, base, notes),
        "embedder": _embedder(cfg, card, notes),
        "notes": notes,
    }
    return ctx, info


def _examples(agg) -> list[dict[str, Any]]:
    return [{"window": w, "rule": r, **ex} for (w, r), exs in sorted(agg.examples.items()) for ex in exs]


def analyse(
    logs: list[str], cfg: MonitorConfig, visit=None, prepared=None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stream ``logs``, test every window; returns (the result ``monitor.json`` holds, the inputs:
    baseline, card, scorer, embedder, length unit). ``prepared``: :func:`prepare`'s output."""
    ctx, info = prepared or prepare(cfg)
    ctx.visit = visit
    files = [str(p) for p in log_files(logs)]
    problems = Problems(strict=cfg.strict)
    agg = aggregate(iter_conversations(files, problems), ctx)
    if agg.n == 0:
        raise ValueError(f"no readable exchanges in {', '.join(files)} ({problems.total} unreadable rows)")
    score_samples(agg, info["scorer"], info["embedder"], info["card"], cfg.batch_size)
    checks = drift_checks(agg, info["baseline"], cfg.thresholds, info["length_tested"])
    tested = [c for c in checks if c["tested"]]
    drift = [c for c in checks if c["drift"]]
    thr = cfg.thresholds
    notes = info["notes"]
    if agg.rules_computed:
        notes.append(
            f"rules computed from the brand card for {agg.rules_computed} exchanges without rule results"
        )
    result = {
        "schema": SCHEMA, "created_at": now_iso(), "logs": files, "window": cfg.window,
        "n_conversations": agg.n, "first_ts": agg.first_ts, "last_ts": agg.last_ts,
        "channels": dict(agg.channels), "rules_computed": agg.rules_computed,
        "baseline": info["baseline"].to_dict() if info["baseline"] else None,
        "length_unit": info["unit"], "unreadable": problems.to_dict(), "notes": notes,
        "correction": {"method": thr.correction, "alpha": thr.alpha, "family_size": len(tested),
                       "targets": TARGETS[thr.correction]},
        "passed": not drift, "drift": drift, "windows": window_rows(agg, checks), "checks": checks,
        "examples": _examples(agg), "plots": [], "config": to_dict(cfg),
    }  # fmt: skip
    return result, info


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> Path:
    """``monitor.json``, ``monitor.md`` and the PNGs in ``out_dir`` (each written atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".plots-"))
    try:
        result["plots"] = write_plots(tmp, result["checks"])
        for name in result["plots"]:
            os.replace(tmp / name, out / name)
    finally:
        for leftover in tmp.iterdir():
            leftover.unlink()
        tmp.rmdir()
    atomic_write_json(out / "monitor.json", result)
    atomic_write_text(out / "monitor.md", monitor_md(result))
    return out
