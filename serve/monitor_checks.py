"""The monitor's drift checks: one row per (window, scope, metric), all p-values corrected together.

A check is *tested* when its window has at least ``min_window_n`` exchanges and the metric has a
reference (the release baseline, or an absolute ceiling); it *drifts* when its corrected p-value is
<= ``alpha`` AND the effect is at least the configured size (a tiny but significant change in a
huge window is not an alert). Untested checks stay in the report with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from onbrand.serve.monitor import ALL, Aggregate, Thresholds
from onbrand.serve.monitor_baseline import Baseline
from onbrand.serve.monitor_stats import Moments, adjust, binomial_above_p, mean_p, two_proportion_p


def _row(label: str, scope: str, metric: str, value, n: int, **extra) -> dict[str, Any]:
    return {"window": label, "scope": scope, "metric": metric, "value": value, "n": n, "baseline": None,
            "p": None, "p_adj": None, "tested": False, "drift": False, "note": "", **extra}  # fmt: skip


def score_moments(agg: Aggregate, attr: str) -> dict[tuple[str, str], Moments]:
    """Per (window, scope) moments of the reservoir scores ``attr`` (reward / voice)."""
    out: dict[tuple[str, str], Moments] = defaultdict(Moments)
    for label, res in agg.samples.items():
        for it in res.items:
            v = getattr(it, attr)
            if v is None:
                continue
            out[(label, ALL)].add(v)
            if (label, it.channel or "(none)") in agg.windows:
                out[(label, it.channel or "(none)")].add(v)
    return out


def _rule_ref(base: Baseline | None, rule: str) -> dict[str, Any] | None:
    """The eval's rate for ``rule``. The eval counts every answer (a rule that did not apply passed)
    and lists only rules that applied somewhere, so a rule it does not list had 0 violations in
    all of its answers."""
    if base is None:
        return None
    if rule in base.rules:
        return base.rules[rule]
    return {"k": 0, "n": base.any_rule["n"], "rate": 0.0} if base.any_rule else None


def _rate_rows(agg: Aggregate, base: Baseline | None, thr: Thresholds) -> list[dict[str, Any]]:
    rows = []
    rules = sorted(set(agg.rule_kinds) | set(base.rules if base else {}))
    for (label, scope), w in agg.windows.items():
        metrics = [(f"rule:{r}", w.rule_k[r], _rule_ref(base, r)) for r in rules]
        metrics.append(("any_rule", w.any_k, base.any_rule if base else None))
        for metric, k, ref in metrics:
            row = _row(label, scope, metric, k / w.n, w.n, k=k)
            if ref is None:
                row["note"] = "no baseline"
            elif thr.min_rate_increase is None:
                row["note"] = "check off (min_rate_increase: null)"
            else:
                row.update(baseline=ref["rate"], baseline_n=ref["n"], kind="two_proportion",
                           _p=(k, w.n, ref["k"], ref["n"]), _effect=k / w.n - ref["rate"] >= thr.min_rate_increase)  # fmt: skip
            rows.append(row)
    return rows


def _ceiling_rows(agg: Aggregate, thr: Thresholds) -> list[dict[str, Any]]:
    rows = []
    for (label, scope), w in agg.windows.items():
        for metric, k, n, ceiling in (
            ("refusal_rate", w.refusal_k, w.n, thr.max_refusal_rate),
            ("fallback_rate", w.fallback_k, w.action_n, thr.max_fallback_rate),
        ):
            row = _row(label, scope, metric, k / n if n else None, n, k=k, baseline=ceiling)
            if ceiling is None:
                row["note"] = "check off (null ceiling)"
            elif n == 0:
                row["note"] = "no guard actions in the log"
            else:
                row.update(kind="above_ceiling", _p_ceiling=(k, n, ceiling), _effect=k / n > ceiling)
            rows.append(row)
    return rows


def _mean_rows(agg: Aggregate, base: Baseline | None, thr: Thresholds, length_tested: bool) -> list[dict]:
    rows = []
    specs = [("length", {k: w.length for k, w in agg.windows.items()}, base.length if base else None,
              thr.max_length_ratio, "two-sided", length_tested)]  # fmt: skip
    for attr, limit in (("reward", thr.max_reward_drop), ("voice", thr.max_voice_drop)):
        moments = score_moments(agg, attr)
        if moments:
            specs.append((attr, moments, getattr(base, attr) if base else None, limit, "lower", True))
    for metric, moments, ref, limit, side, usable in specs:
        for (label, scope), mo in moments.items():
            row = _row(label, scope, metric, mo.mean if mo.n else None, mo.n, se=mo.se if mo.n else None)
            if ref is None or not usable:
                row["note"] = "no baseline" if usable else "not comparable with the baseline's unit"
            elif limit is None:
                row["note"] = "check off (null threshold)"
            elif mo.n < 2:
                row["note"] = "fewer than 2 scored exchanges"
            else:
                row.update(baseline=ref["mean"], baseline_n=ref["n"], kind=f"mean_{side}",
                           _p_mean=(mo.mean, mo.se, ref["mean"], ref["se"], side),
                           _effect=_mean_effect(metric, mo.mean, ref["mean"], limit))  # fmt: skip
            rows.append(row)
    return rows


def _mean_effect(metric: str, mean: float, ref: float, limit: float) -> bool:
    if metric == "length":
        ratio = mean / ref if ref else float("inf")
        return ratio > limit or ratio < 1.0 / limit
    return ref - mean >= limit


def _p_value(row: dict[str, Any]) -> float:
    if "_p" in row:
        return float(two_proportion_p(*row.pop("_p")))
    if "_p_ceiling" in row:
        return float(binomial_above_p(*row.pop("_p_ceiling")))
    mean, se, mean0, se0, side = row.pop("_p_mean")
    return float(mean_p(mean, se, mean0, se0, side))


def drift_checks(
    agg: Aggregate, base: Baseline | None, thr: Thresholds, length_tested: bool
) -> list[dict[str, Any]]:
    """Every check row; the tested ones carry ``p``, ``p_adj`` (one family) and ``drift``."""
    rows = _rate_rows(agg, base, thr) + _ceiling_rows(agg, thr) + _mean_rows(agg, base, thr, length_tested)
    family = []
    for row in rows:
        if "_effect" not in row:
            continue
        if row["n"] < thr.min_window_n:
            for key in ("_p", "_p_ceiling", "_p_mean", "_effect"):
                row.pop(key, None)
            row["note"] = f"n < min_window_n ({thr.min_window_n})"
            continue
        row["p"] = _p_value(row)
        row["tested"] = True
        family.append(row)
    adjusted = adjust(np.array([r["p"] for r in family]), thr.correction) if family else []
    for row, p_adj in zip(family, adjusted):
        row["p_adj"] = float(p_adj)
        row["drift"] = bool(p_adj <= thr.alpha and row.pop("_effect"))
        row.pop("_effect", None)
    rows.sort(key=lambda r: (r["window"], r["scope"] != ALL, r["scope"], r["metric"]))
    return rows
