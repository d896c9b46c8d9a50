"""Bootstrap confidence intervals (percentile method, resampling the prompts)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Estimate:
    """A point estimate with a bootstrap CI: ``value`` in ``[low, high]`` at level ``ci``."""

    value: float
    low: float
    high: float
    n: int
    ci: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(
    stat: Callable[[np.ndarray], float] | Callable[..., float],
    *columns: np.ndarray,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    vectorized_mean: bool = False,
) -> Estimate:
    """Percentile bootstrap of ``stat(*columns)`` over rows (the prompts).

    ``columns`` are arrays of equal length ``N`` (paired: the same row indices are drawn for all of
    them). With ``vectorized_mean=True`` and one column, the mean of ``B`` resamples is computed as
    one ``(B, N)`` gather (fast path for win rates and pass rates).
    """
    cols = [np.asarray(c, dtype=float) for c in columns]
    n = len(cols[0])
    if n == 0:
        raise ValueError("bootstrap needs at least one observation")
    if any(len(c) != n for c in cols):
        raise ValueError(f"bootstrap columns differ in length: {[len(c) for c in cols]}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    point = float(stat(*cols))
    if vectorized_mean and len(cols) == 1:
        reps = cols[0][idx].mean(axis=1)
    else:
        reps = np.array([stat(*(c[i] for c in cols)) for i in idx], dtype=float)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return Estimate(point, float(low), float(high), n, ci)


def mean_ci(values, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> Estimate:
    return bootstrap(
        np.mean, np.asarray(values, dtype=float), n_boot=n_boot, ci=ci, seed=seed, vectorized_mean=True
    )
