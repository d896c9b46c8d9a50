"""The monitor's tests, vectorised (numpy): each drift check is a one-sided p-value, and all p-values
of one monitor run form one family corrected for multiple testing.

- rates (a rule's violation rate, the share failing any rule) against the release baseline: the
  pooled two-proportion z-test, one-sided (H1: the window violates more often than the baseline);
- a rate against an absolute ceiling (refusals, fallbacks; the eval has no baseline for them): the
  one-sample binomial z-test, one-sided (H1: rate > ceiling);
- means (reward-model score, brand-voice similarity, response length) against the baseline's mean:
  Welch's z (normal approximation; the baseline's standard error comes from its bootstrap CI or its
  per-sample values), one- or two-sided;
- the family: Holm (family-wise error rate <= alpha under any dependence: the chance that a run
  over a stable log raises any false alarm) or Benjamini-Hochberg (false discovery rate <= alpha,
  for independent or positively dependent tests).
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054
_ERFC = np.frompyfunc(math.erfc, 1, 1)


def norm_sf(z) -> np.ndarray:
    """P(Z > z) for a standard normal Z (elementwise)."""
    z = np.asarray(z, dtype=float)
    return np.asarray(_ERFC(z / math.sqrt(2.0)), dtype=float) * 0.5


def two_proportion_p(k, n, k0, n0) -> np.ndarray:
    """One-sided p-value of H0 p <= p0 against H1 p > p0: window ``k/n`` vs baseline ``k0/n0``
    (pooled z-test). 1.0 where a sample is empty or both rates are 0 or 1 (nothing to test)."""
    k, n, k0, n0 = (np.asarray(x, dtype=float) for x in (k, n, k0, n0))
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (k + k0) / (n + n0)
        se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n + 1.0 / n0))
        z = (k / n - k0 / n0) / se
    ok = (n > 0) & (n0 > 0) & (se > 0)
    return np.where(ok, norm_sf(np.where(ok, z, 0.0)), 1.0)


def binomial_above_p(k, n, ceiling) -> np.ndarray:
    """One-sided p-value of H0 rate <= ``ceiling`` (normal approximation); 1.0 for n = 0."""
    k, n, c = (np.asarray(x, dtype=float) for x in (k, n, ceiling))
    c = np.clip(c, 1e-9, 1.0 - 1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (k / n - c) / np.sqrt(c * (1.0 - c) / n)
    ok = n > 0
    return np.where(ok, norm_sf(np.where(ok, z, 0.0)), 1.0)


def mean_p(mean, se, mean0, se0, side: str) -> np.ndarray:
    """p-value of a window mean against the baseline mean (Welch's z on the two standard errors).

    ``side``: ``"lower"`` (H1: the window is lower), ``"higher"`` or ``"two-sided"``."""
    m, s, m0, s0 = (np.asarray(x, dtype=float) for x in (mean, se, mean0, se0))
    se_all = np.sqrt(s**2 + s0**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (m - m0) / se_all
    ok = se_all > 0
    z = np.where(ok, z, 0.0)
    if side == "lower":
        p = norm_sf(-z)
    elif side == "higher":
        p = norm_sf(z)
    elif side == "two-sided":
        p = np.minimum(1.0, 2.0 * norm_sf(np.abs(z)))
    else:
        raise ValueError(f"side must be lower, higher or two-sided, got {side!r}")
    return np.where(ok, p, 1.0)


def _unsort(adjusted: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty(len(order))
    out[order] = adjusted
    return out


def holm(p) -> np.ndarray:
    """Holm step-down adjusted p-values (reject where adjusted <= alpha: FWER <= alpha)."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    return _unsort(np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order])), order)


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (reject where adjusted <= alpha: FDR <= alpha)."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    return _unsort(np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0), order)


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}


def adjust(p, method: str) -> np.ndarray:
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {method!r}")
    return CORRECTIONS[method](p)


def rate_ci(k: float, n: float) -> tuple[float, float]:
    """Wilson 95% interval of a proportion (for the plots and tables)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1.0 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


class Moments:
    """Streaming count / mean / variance (Welford), constant memory."""

    __slots__ = ("n", "mean", "m2")

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    @property
    def var(self) -> float:
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    @property
    def se(self) -> float:
        return math.sqrt(self.var / self.n) if self.n > 0 else math.nan
