"""Reward-model win rate of aligned over base, raw and length-controlled (AlpacaEval-style).

Per prompt ``i``: ``w_i = 1`` if ``r(aligned_i) > r(base_i)``, ``0.5`` on a tie, else ``0``.
Raw win rate = mean(w). Length-controlled (LC) win rate: fit a logistic regression

    P(aligned wins | i) = sigmoid(theta0 + theta1 * tanh(d_i / std(d))),   d_i = len(aligned_i) - len(base_i)

to the (soft, ties = 1/2) outcomes and report ``sigmoid(theta0)``: the predicted win rate at zero
length difference. A model that only writes longer answers wins the raw rate but not the LC rate.
(AlpacaEval 2 fits extra per-instruction terms; with one pair of models per prompt set this
two-parameter form is what is identifiable.) Both come with bootstrap CIs over prompts.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from onbrand.eval.independence import JUDGE_SAW_TRAINING
from onbrand.eval.metrics.registry import RATE_NULL, EvalContext, Metric, fmt_ci, register, row, side
from onbrand.scoring import load_scorer
from onbrand.stats.ci import bootstrap, mean_ci

# Warn when the raw and the length-controlled win rate differ by more (EvalConfig.lc_warn_gap).
LC_WARN_GAP = 0.10


class Scorer(Protocol):
    def score(self, conversations: list[list[dict[str, str]]]) -> list[float]: ...


def outcomes(aligned_rewards, base_rewards, tie_tol: float = 1e-6) -> np.ndarray:
    """``(N,)`` win indicators with ties = 0.5."""
    a = np.asarray(aligned_rewards, dtype=float)
    b = np.asarray(base_rewards, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"aligned and base rewards differ in shape: {a.shape} vs {b.shape}")
    return np.where(np.abs(a - b) <= tie_tol, 0.5, (a > b).astype(float))


def fit_lc(wins: np.ndarray, len_diff: np.ndarray, l2: float = 1e-3, iters: int = 50) -> tuple[float, float]:
    """Newton-Raphson for the 2-parameter logistic regression above; returns (theta0, theta1).

    Soft labels (ties 0.5) use the same cross-entropy; the small L2 term keeps the fit finite when
    outcomes are perfectly separated (e.g. aligned always wins).
    """
    d = np.asarray(len_diff, dtype=float)
    scale = d.std()
    x = np.tanh(d / scale) if scale > 0 else np.zeros_like(d)
    X = np.stack([np.ones_like(x), x], axis=1)  # (N, 2)
    y = np.asarray(wins, dtype=float)
    theta = np.zeros(2)
    reg = l2 * len(y) * np.eye(2)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(X @ theta)))
        grad = X.T @ (p - y) + reg @ theta
        hess = (X * (p * (1 - p))[:, None]).T @ X + reg
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def lc_win_rate(wins, len_diff) -> float:
    theta0, _ = fit_lc(np.asarray(wins), np.asarray(len_diff))
    return float(1.0 / (1.0 + np.exp(-theta0)))


def win_rates(
    aligned_rewards,
    base_rewards,
    aligned_lengths,
    base_lengths,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    warn_gap: float = LC_WARN_GAP,
) -> dict[str, Any]:
    """Raw and length-controlled win rates with CIs, and a warning when they differ by > warn_gap."""
    w = outcomes(aligned_rewards, base_rewards)
    d = np.asarray(aligned_lengths, dtype=float) - np.asarray(base_lengths, dtype=float)
    raw = mean_ci(w, n_boot=n_boot, ci=ci, seed=seed)
    lc = bootstrap(lc_win_rate, w, d, n_boot=n_boot, ci=ci, seed=seed)
    gap = abs(raw.value - lc.value)
    out: dict[str, Any] = {
        "win_rate": raw.to_dict(),
        "lc_win_rate": lc.to_dict(),
        "wins": int((w == 1).sum()),
        "ties": int((w == 0.5).sum()),
        "losses": int((w == 0).sum()),
        "mean_length_diff": float(d.mean()),
        "gap": gap,
        "warning": None,
    }
    if gap > warn_gap:
        out["warning"] = (
            f"raw win rate {raw.value:.2f} and length-controlled {lc.value:.2f} differ by {gap:.2f} "
            f"(> {warn_gap:.2f}): the reward model may be rewarding length, not quality"
        )
    return out


def score_pairs(scorer: Scorer, prompts, aligned_texts, base_texts) -> tuple[list[float], list[float]]:
    """Score ``prompt + assistant`` for both models with any object with ``.score(conversations)``."""

    def convs(texts):
        return [list(p) + [{"role": "assistant", "content": t}] for p, t in zip(prompts, texts)]

    a = list(scorer.score(convs(aligned_texts)))
    b = list(scorer.score(convs(base_texts)))
    if len(a) != len(aligned_texts) or len(b) != len(base_texts):
        raise ValueError(
            f"reward scorer returned {len(a)}/{len(b)} scores for {len(aligned_texts)} responses"
        )
    return [float(x) for x in a], [float(x) for x in b]


def _compute(ctx: EvalContext) -> None:
    cfg = ctx.cfg
    if ctx.scorer is None and not cfg.reward:
        ctx.skip("win_rate", "no reward model (set reward: <reward run dir>)")
        return
    scorer = ctx.scorer if ctx.scorer is not None else load_scorer(cfg.reward)
    ra, rb = score_pairs(scorer, ctx.chats, ctx.aligned_texts, ctx.base_texts)
    wr = win_rates(
        ra, rb, ctx.aligned_tokens, ctx.base_tokens, cfg.bootstrap, cfg.ci, cfg.seed, cfg.lc_warn_gap
    )
    ctx.metrics["win_rate"] = wr
    ctx.metrics["rewards"] = {"aligned": ra, "base": rb}
    if wr["warning"]:
        ctx.warnings.append(wr["warning"])


RAW_ROW, LC_ROW = "Reward-model win rate", "Length-controlled win rate"


def _rows(m: dict[str, Any], judge: dict[str, Any] | None) -> list[dict[str, str]]:
    wr = m["win_rate"]
    tainted = f" — ⚠ {JUDGE_SAW_TRAINING}" if judge and judge.get("overlap") else ""
    return [
        row(RAW_ROW, "—", fmt_ci(wr["win_rate"]), f"W/T/L {wr['wins']}/{wr['ties']}/{wr['losses']}",
            side(wr["win_rate"], RATE_NULL), f"{RATE_NULL} = no difference" + tainted),
        row(LC_ROW, "—", fmt_ci(wr["lc_win_rate"]), f"gap {wr['gap']:.3f}",
            side(wr["lc_win_rate"], RATE_NULL), "at zero length difference" + tainted),
    ]  # fmt: skip


def _sample_fields(m: dict[str, Any], i: int) -> dict[str, Any]:
    return {"base_reward": m["rewards"]["base"][i], "aligned_reward": m["rewards"]["aligned"][i]}


register(Metric(
    "reward", order=10, compute=_compute, result_key="win_rate", rows=((10, _rows),),
    help="reward-model win rate (raw + length-controlled); needs `reward`",
    primary={LC_ROW: 1, RAW_ROW: 2}, sample_fields=_sample_fields,
    gate_checks=("win_rate_ci_low", "lc_win_rate_ci_low", "lc_win_rate", "lc_agreement", "judge_independent"),
))  # fmt: skip
