"""How well one judge agrees with another (an automatic judge with the human majority, the LLM
judge with the reward model): accuracy and Cohen's kappa over items, with bootstrap CIs.

Labels are ``"aligned" | "base" | "tie"`` per item (``None`` = that judge has no label for the
item: it is left out). Kappa is :func:`onbrand.stats.agreement.cohen_kappa` (the same formula
the annotation app reports between annotators); a bootstrap resample where kappa is undefined (one
category only) is skipped.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from onbrand.stats.agreement import cohen_kappa
from onbrand.stats.ci import mean_ci

LABELS = ("aligned", "base", "tie")
# The automatic judges a human round compares with people: key (in report.metrics.human.judges and
# the gate's human_kappa_judges) -> the name shown in report.md and human_agreement.png.
HUMAN_JUDGES = {
    "reward_model": "Reward model",
    "llm_judge": "LLM judge",
    "brand_rules": "Brand rules (fewer violations wins)",
}
SCORE = {"aligned": 1.0, "tie": 0.5, "base": 0.0}


def labels_from_scores(aligned, base, tie_tol: float = 1e-6) -> list[str]:
    """Per item: which side a scalar judge (reward model, rule score) prefers."""
    out = []
    for a, b in zip(aligned, base):
        out.append("tie" if abs(float(a) - float(b)) <= tie_tol else ("aligned" if a > b else "base"))
    return out


def _kappa_ci(x: np.ndarray, y: np.ndarray, n_boot: int, ci: float, seed: int) -> dict[str, Any] | None:
    point = cohen_kappa(list(x), list(y))
    if math.isnan(point):
        return None
    rng = np.random.default_rng(seed)
    reps = []
    for idx in rng.integers(0, len(x), size=(n_boot, len(x))):
        k = cohen_kappa(list(x[idx]), list(y[idx]))
        if not math.isnan(k):
            reps.append(k)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha]) if reps else (point, point)
    return {"value": float(point), "low": float(low), "high": float(high), "n": len(x), "ci": ci}


def agreement(judge: list[str | None], reference: list[str | None], n_boot: int = 1000, ci: float = 0.95,
              seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """``{"n", "accuracy", "kappa", "confusion"}`` over items both label (``None`` skips an item)."""
    if len(judge) != len(reference):
        raise ValueError(f"agreement: {len(judge)} judge labels vs {len(reference)} reference labels")
    pairs = [(j, r) for j, r in zip(judge, reference) if j is not None and r is not None]
    bad = sorted({x for p in pairs for x in p if x not in LABELS})
    if bad:
        raise ValueError(f"agreement: labels must be one of {LABELS}, got {bad}")
    if not pairs:
        return {"n": 0, "accuracy": None, "kappa": None, "confusion": {}}
    x = np.asarray([LABELS.index(j) for j, _ in pairs])
    y = np.asarray([LABELS.index(r) for _, r in pairs])
    confusion = {
        f"{LABELS[a]}|{LABELS[b]}": int(((x == a) & (y == b)).sum()) for a in range(3) for b in range(3)
    }
    return {
        "n": len(pairs),
        "accuracy": mean_ci((x == y).astype(float), n_boot, ci, seed).to_dict(),
        "kappa": _kappa_ci(x, y, n_boot, ci, seed),
        # "judge label|reference label": count
        "confusion": {k: v for k, v in confusion.items() if v},
    }
