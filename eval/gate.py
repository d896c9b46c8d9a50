"""Release gate: thresholds on an eval report; ``onbrand eval --gate gates.yaml`` exits 1 on failure.

Each check is skipped when its threshold is ``null``. A check whose metric is missing from the
report fails (a release gate must not pass because a metric was not computed) unless
``allow_missing: true``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from onbrand.config import check_range


@dataclass
class GateConfig:
    # Win rate: fail when the lower CI bound is <= this (the aligned model is not surely better).
    min_win_rate_low: float | None = 0.5
    min_lc_win_rate_low: float | None = None
    # Fail when raw and length-controlled win rates differ by more (verbosity gaming).
    max_lc_gap: float | None = 0.10
    # Fail when any brand rule has more violations for aligned than for base (+ tolerance).
    compliance_no_worse: bool = True
    compliance_tolerance: int = 0
    # Capability: fail when perplexity on general text rises by more than this fraction.
    max_ppl_increase: float | None = 0.10
    # Drift guards (off by default).
    max_length_ratio: float | None = None
    max_kl_per_token: float | None = None
    min_implicit_accuracy: float | None = None
    allow_missing: bool = False

    def __post_init__(self) -> None:
        for name in ("min_win_rate_low", "min_lc_win_rate_low", "max_lc_gap", "min_implicit_accuracy"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), 0.0, 1.0)
        for name in ("max_ppl_increase", "max_length_ratio", "max_kl_per_token"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), 0.0, None)
        check_range("compliance_tolerance", self.compliance_tolerance, 0, None)


@dataclass
class GateCheck:
    name: str
    passed: bool
    value: Any
    threshold: Any
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(report: dict, *path: str) -> Any:
    node: Any = report.get("metrics", {})
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def check_gate(report: dict[str, Any], gate: GateConfig) -> list[GateCheck]:
    """All configured checks, passed or not (the report lists both)."""
    checks: list[GateCheck] = []

    def add(name, value, threshold, ok_fn, detail):
        if threshold is None or threshold is False:
            return
        if value is None:
            checks.append(GateCheck(name, gate.allow_missing, None, threshold, "metric not computed"))
        else:
            checks.append(GateCheck(name, bool(ok_fn(value)), value, threshold, detail))

    low = _get(report, "win_rate", "win_rate", "low")
    add("win_rate_ci_low", low, gate.min_win_rate_low, lambda v: v > gate.min_win_rate_low,
        f"win-rate CI lower bound must be > {gate.min_win_rate_low}")  # fmt: skip
    lc_low = _get(report, "win_rate", "lc_win_rate", "low")
    add("lc_win_rate_ci_low", lc_low, gate.min_lc_win_rate_low, lambda v: v > gate.min_lc_win_rate_low,
        f"length-controlled CI lower bound must be > {gate.min_lc_win_rate_low}")  # fmt: skip
    gap = _get(report, "win_rate", "gap")
    add("lc_agreement", gap, gate.max_lc_gap, lambda v: v <= gate.max_lc_gap,
        f"|raw - length-controlled win rate| must be <= {gate.max_lc_gap}")  # fmt: skip
    rules = _get(report, "compliance", "per_rule")
    if gate.compliance_no_worse:
        worse = None
        if rules is not None:
            worse = [
                f"{r} ({v['base_violations']} -> {v['aligned_violations']})"
                for r, v in rules.items()
                if v["aligned_violations"] > v["base_violations"] + gate.compliance_tolerance
            ]
        add("compliance_no_worse", worse, True, lambda v: not v, "no rule may have more violations than base")
    ratio = _get(report, "perplexity", "ratio")
    add("perplexity_increase", None if ratio is None else ratio - 1.0, gate.max_ppl_increase,
        lambda v: v <= gate.max_ppl_increase, f"perplexity may rise by at most {gate.max_ppl_increase:.0%}"
        if gate.max_ppl_increase is not None else "")  # fmt: skip
    add("length_ratio", _get(report, "drift", "length_ratio"), gate.max_length_ratio,
        lambda v: v <= gate.max_length_ratio, f"aligned/base mean length must be <= {gate.max_length_ratio}")  # fmt: skip
    add("kl_per_token", _get(report, "kl", "per_token"), gate.max_kl_per_token,
        lambda v: v <= gate.max_kl_per_token, f"KL per token must be <= {gate.max_kl_per_token}")  # fmt: skip
    add("implicit_accuracy", _get(report, "implicit", "accuracy", "value"), gate.min_implicit_accuracy,
        lambda v: v >= gate.min_implicit_accuracy, f"implicit reward accuracy must be >= {gate.min_implicit_accuracy}")  # fmt: skip
    return checks


def format_checks(checks: list[GateCheck]) -> str:
    lines = []
    for c in checks:
        mark = "PASS" if c.passed else "FAIL"
        value = f"{c.value:.4f}" if isinstance(c.value, float) else c.value
        lines.append(f"  {mark} {c.name}: value={value} threshold={c.threshold}  {c.detail}")
    return "\n".join(lines)
