"""Power and sample size for a pairwise win rate (normal approximation, two-sided test of 0.5).

Each test prompt gives one paired outcome (win 1, tie 0.5, loss 0) with standard deviation at
most 0.5 (no ties); that worst case is used, so the figures are conservative.

- minimum detectable difference at ``n`` prompts: ``(z_{1-alpha/2} + z_{power}) * sd / sqrt(n)``
  (0.140 at n = 100 with alpha 0.05 and power 0.8);
- prompts needed to resolve an observed effect ``d = |win_rate - 0.5|``:
  ``ceil(((z_{1-alpha/2} + z_{power}) * sd / d) ** 2)``.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from onbrand.eval.metrics.registry import RATE_NULL

ALPHA, POWER, SD = 0.05, 0.80, 0.5


def _z_sum(alpha: float, power: float) -> float:
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha and power must be in (0, 1), got alpha={alpha}, power={power}")
    nd = NormalDist()
    return nd.inv_cdf(1.0 - alpha / 2.0) + nd.inv_cdf(power)


def min_detectable_diff(n: int, alpha: float = ALPHA, power: float = POWER, sd: float = SD) -> float:
    """Smallest ``|win_rate - 0.5|`` a test on ``n`` prompts detects with probability ``power``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return _z_sum(alpha, power) * sd / math.sqrt(n)


def prompts_needed(effect: float, alpha: float = ALPHA, power: float = POWER, sd: float = SD) -> int | None:
    """Prompts needed to detect ``|win_rate - 0.5| = effect``; ``None`` when the effect is 0."""
    effect = abs(effect)
    if effect == 0.0:
        return None
    return math.ceil((_z_sum(alpha, power) * sd / effect) ** 2)


def _rate(est: dict[str, float], n: int, alpha: float, power: float) -> dict[str, Any]:
    effect = abs(est["value"] - RATE_NULL)
    inconclusive = est["low"] <= RATE_NULL <= est["high"]
    need = prompts_needed(effect, alpha, power)
    return {
        "observed": est["value"],
        "effect": effect,
        "inconclusive": inconclusive,
        # For an inconclusive rate: the prompts that would resolve an effect of the observed size.
        "prompts_needed": need if inconclusive else None,
        "detectable_at_n": effect >= min_detectable_diff(n, alpha, power),
    }


def power_analysis(
    metrics: dict[str, Any], n_prompts: int, alpha: float = ALPHA, power: float = POWER
) -> dict[str, Any]:
    """``metrics["power"]``: the minimum detectable difference at ``n_prompts`` and, per computed
    win rate (reward-model raw and length-controlled, LLM judge), whether it is inconclusive and
    how many prompts an effect of the observed size needs."""
    mdd = min_detectable_diff(n_prompts, alpha, power)
    out: dict[str, Any] = {
        "n_prompts": n_prompts, "alpha": alpha, "power": power, "sd": SD, "method": "normal approximation, two-sided",
        "min_detectable_diff": mdd, "min_detectable_win_rate": RATE_NULL + mdd, "rates": {},
    }  # fmt: skip
    wr = metrics.get("win_rate")
    if wr:
        out["rates"]["win_rate"] = _rate(wr["win_rate"], n_prompts, alpha, power)
        out["rates"]["lc_win_rate"] = _rate(wr["lc_win_rate"], n_prompts, alpha, power)
    if metrics.get("judge") and metrics["judge"].get("win_rate"):
        out["rates"]["judge_win_rate"] = _rate(metrics["judge"]["win_rate"], n_prompts, alpha, power)
    if metrics.get("human") and metrics["human"].get("win_rate"):
        h = metrics["human"]
        out["rates"]["human_win_rate"] = _rate(h["win_rate"], h["win_rate"]["n"], alpha, power)
    return out
