"""Release gate: thresholds on an eval report, the one place where "good enough" is decided.

``configs/eval/gates.yaml`` holds the thresholds, and is the only place their values are written
(:class:`GateConfig` validates them and has no defaults); ``onbrand eval
--gate`` and ``onbrand run`` (through the run config's ``gate``) both apply them with
:func:`check_gate` and exit 1 when a check fails. Each check is skipped when its threshold is
``null``/``false``. A check whose metric is missing from the report fails (a release gate must not
pass because a metric was not computed) unless ``allow_missing: true``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from onbrand.config import check_range
from onbrand.eval.metrics.agreement import HUMAN_JUDGES


@dataclass
class GateConfig:
    """The thresholds' names, types and ranges. Their values have one owner, the gate YAML
    (``configs/eval/gates.yaml``): every key is required there (``null``/``false`` turns a check
    off), so no threshold is written twice and a gate file that forgets one fails to load."""

    # Win rate: fail when the lower CI bound is <= this (the aligned model is not surely better).
    min_win_rate_low: float | None
    min_lc_win_rate_low: float | None
    # Length-controlled win rate (point estimate) must be above this.
    min_lc_win_rate: float | None
    # Fail when raw and length-controlled win rates differ by more (verbosity gaming).
    max_lc_gap: float | None
    # Fail when any brand rule has more violations for aligned than for base (+ tolerance).
    compliance_no_worse: bool
    compliance_tolerance: int
    # Share of answers passing every rule: aligned - base must be above this.
    min_compliance_gain: float | None
    # Adversarial suite (prompts that tempt each rule): aligned's overall violation rate may exceed
    # base's by at most this much (0 = no worse).
    max_adversarial_increase: float | None
    # Capability: fail when perplexity on general text rises by more than this fraction.
    max_ppl_increase: float | None
    # The judge (reward model) must not have been trained on any record the policy learned from.
    require_judge_independent: bool
    # Drift guards.
    max_length_ratio: float | None
    max_kl_per_token: float | None
    min_implicit_accuracy: float | None
    # People (after `onbrand eval human`): the blind A/B round's win-rate CI lower bound must be
    # above this, and each judge in `human_kappa_judges` must agree with the human majority with a
    # Cohen's kappa of at least `min_judge_human_kappa`.
    min_human_win_rate_low: float | None
    min_judge_human_kappa: float | None
    human_kappa_judges: list[str]
    # A check whose metric is missing passes (true) or fails (false).
    allow_missing: bool

    def __post_init__(self) -> None:
        for name in ("min_win_rate_low", "min_lc_win_rate_low", "min_lc_win_rate", "max_lc_gap"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), 0.0, 1.0)
        if self.min_implicit_accuracy is not None:
            check_range("min_implicit_accuracy", self.min_implicit_accuracy, 0.0, 1.0)
        if self.min_compliance_gain is not None:
            check_range("min_compliance_gain", self.min_compliance_gain, -1.0, 1.0)
        if self.max_adversarial_increase is not None:
            check_range("max_adversarial_increase", self.max_adversarial_increase, 0.0, 1.0)
        for name in ("max_ppl_increase", "max_length_ratio", "max_kl_per_token"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), 0.0, None)
        check_range("compliance_tolerance", self.compliance_tolerance, 0, None)
        if self.min_human_win_rate_low is not None:
            check_range("min_human_win_rate_low", self.min_human_win_rate_low, 0.0, 1.0)
        if self.min_judge_human_kappa is not None:
            check_range("min_judge_human_kappa", self.min_judge_human_kappa, -1.0, 1.0)
        bad = [j for j in self.human_kappa_judges if j not in HUMAN_JUDGES]
        if bad or not self.human_kappa_judges:
            raise ValueError(
                f"human_kappa_judges must be a non-empty list of {', '.join(HUMAN_JUDGES)}, got {bad or '[]'}"
            )


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


def _worse_rules(report: dict[str, Any], tolerance: int) -> list[str] | None:
    rules = _get(report, "compliance", "per_rule")
    if rules is None:
        return None
    return [
        f"{r} ({v['base_violations']} -> {v['aligned_violations']})"
        for r, v in rules.items()
        if v["aligned_violations"] > v["base_violations"] + tolerance
    ]


def _human_kappa(report: dict[str, Any], gate: GateConfig) -> float | None:
    """The lowest kappa with the human majority among the gate's judges (None if one is missing)."""
    judges = _get(report, "human", "judges") or {}
    kappas = [(judges.get(j) or {}).get("kappa") for j in gate.human_kappa_judges]
    return None if any(k is None for k in kappas) else min(k["value"] for k in kappas)


def _judge_overlap(report: dict[str, Any]) -> int | None:
    ji = report.get("judge_independence") or {}
    return int(ji["overlap"]) if ji.get("checked") else None


Spec = tuple[str, Callable[[dict, GateConfig], Any], str, Callable[[Any, Any], bool], str]
# name, metric getter, GateConfig field, pass test (value, threshold), what it means
CHECKS: tuple[Spec, ...] = (
    ("win_rate_ci_low", lambda r, g: _get(r, "win_rate", "win_rate", "low"), "min_win_rate_low",
     lambda v, t: v > t, "win-rate CI lower bound must be > {t}"),
    ("lc_win_rate_ci_low", lambda r, g: _get(r, "win_rate", "lc_win_rate", "low"), "min_lc_win_rate_low",
     lambda v, t: v > t, "length-controlled CI lower bound must be > {t}"),
    ("lc_win_rate", lambda r, g: _get(r, "win_rate", "lc_win_rate", "value"), "min_lc_win_rate",
     lambda v, t: v > t, "length-controlled win rate must be > {t}"),
    ("lc_agreement", lambda r, g: _get(r, "win_rate", "gap"), "max_lc_gap",
     lambda v, t: v <= t, "|raw - length-controlled win rate| must be <= {t}"),
    ("compliance_no_worse", lambda r, g: _worse_rules(r, g.compliance_tolerance), "compliance_no_worse",
     lambda v, t: not v, "no rule may have more violations than base"),
    ("compliance_gain", lambda r, g: _get(r, "compliance", "overall", "diff", "value"), "min_compliance_gain",
     lambda v, t: v > t, "share of answers passing every rule: aligned - base must be > {t}"),
    ("adversarial_no_worse", lambda r, g: _get(r, "adversarial", "overall", "diff", "value"), "max_adversarial_increase",
     lambda v, t: v <= t, "adversarial violation rate: aligned - base must be <= {t}"),
    ("perplexity_increase", lambda r, g: None if (x := _get(r, "perplexity", "ratio")) is None else x - 1.0,
     "max_ppl_increase", lambda v, t: v <= t, "perplexity may rise by at most {t:.0%}"),
    ("judge_independent", lambda r, g: _judge_overlap(r), "require_judge_independent",
     lambda v, t: v == 0, "records both the policy and the judge were trained on must be 0"),
    ("length_ratio", lambda r, g: _get(r, "drift", "length_ratio"), "max_length_ratio",
     lambda v, t: v <= t, "aligned/base mean length must be <= {t}"),
    ("kl_per_token", lambda r, g: _get(r, "kl", "per_token"), "max_kl_per_token",
     lambda v, t: v <= t, "KL per token must be <= {t}"),
    ("implicit_accuracy", lambda r, g: _get(r, "implicit", "accuracy", "value"), "min_implicit_accuracy",
     lambda v, t: v >= t, "implicit reward accuracy must be >= {t}"),
    ("human_win_rate_ci_low", lambda r, g: _get(r, "human", "win_rate", "low"), "min_human_win_rate_low",
     lambda v, t: v > t, "blind human A/B win-rate CI lower bound must be > {t}"),
    ("judge_human_kappa", _human_kappa, "min_judge_human_kappa",
     lambda v, t: v >= t, "Cohen's kappa of each gated judge with the human majority must be >= {t}"),
)  # fmt: skip


def check_gate(report: dict[str, Any], gate: GateConfig) -> list[GateCheck]:
    """All configured checks, passed or not (the report lists both)."""
    checks: list[GateCheck] = []
    for name, get, field_name, ok, detail in CHECKS:
        threshold = getattr(gate, field_name)
        if threshold is None or threshold is False:
            continue
        value = get(report, gate)
        text = detail.format(t=threshold)
        if value is None:
            checks.append(
                GateCheck(name, gate.allow_missing, None, threshold, f"metric not computed; {text}")
            )
        else:
            checks.append(GateCheck(name, bool(ok(value, threshold)), value, threshold, text))
    return checks


def format_checks(checks: list[GateCheck]) -> str:
    lines = []
    for c in checks:
        mark = "PASS" if c.passed else "FAIL"
        value = f"{c.value:.4f}" if isinstance(c.value, float) else c.value
        lines.append(f"  {mark} {c.name}: value={value} threshold={c.threshold}  {c.detail}")
    return "\n".join(lines)
