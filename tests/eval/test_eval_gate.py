"""The release gate: one YAML (configs/eval/gates.yaml), applied by `onbrand eval --gate` and `onbrand run`."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields, replace

import pytest

from onbrand.config import ConfigError, load_config
from onbrand.eval.gate import CHECKS, GateConfig, check_gate
from onbrand.eval.metrics.registry import all_metrics
from onbrand.eval.runner import main as eval_main


def report(win_low=0.6, lc=0.6, gap=0.02, ppl_ratio=1.02, worse=False, gain=0.2, adv=(0.5, 0.1),
           overlap=0, implicit=0.9):  # fmt: skip
    """A report that passes every check of the shipped gate; each argument breaks one."""
    return {
        "metrics": {
            "win_rate": {"win_rate": {"value": win_low + 0.1, "low": win_low, "high": 0.9},
                         "lc_win_rate": {"value": lc, "low": lc - 0.08, "high": lc + 0.1}, "gap": gap},
            "compliance": {
                "per_rule": {"hype_words": {"base_violations": 1, "aligned_violations": 3 if worse else 0}},
                "overall": {"diff": {"value": gain}},
            },
            "adversarial": {"overall": {"base": {"value": adv[0]}, "aligned": {"value": adv[1]},
                                        "diff": {"value": adv[1] - adv[0]}}},
            "perplexity": {"ratio": ppl_ratio},
            "implicit": {"accuracy": {"value": implicit}},
        },
        "judge_independence": {"checked": True, "overlap": overlap},
    }  # fmt: skip


@pytest.fixture
def shipped(repo_root):
    return load_config(GateConfig, repo_root / "configs/eval/gates.yaml")


def failed(rep, gate):
    return {c.name for c in check_gate(rep, gate) if not c.passed}


def test_each_threshold_fails_its_own_check(shipped):
    assert failed(report(), shipped) == set()
    assert failed(report(win_low=0.5), shipped) == {"win_rate_ci_low"}  # "<= 0.5" fails
    assert failed(report(lc=0.5), shipped) == {"lc_win_rate"}
    assert failed(report(gap=0.15), shipped) == {"lc_agreement"}
    assert failed(report(ppl_ratio=1.2), shipped) == {"perplexity_increase"}
    assert failed(report(worse=True), shipped) == {"compliance_no_worse"}
    assert failed(report(gain=0.0), shipped) == {"compliance_gain"}
    assert failed(report(adv=(0.2, 0.3)), shipped) == {"adversarial_no_worse"}
    assert failed(report(overlap=3), shipped) == {"judge_independent"}
    assert failed(report(implicit=0.7), shipped) == {"implicit_accuracy"}


def test_missing_metrics_fail_unless_allowed(shipped):
    enabled = {c.name for c in check_gate(report(), shipped)}
    assert failed({"metrics": {}}, shipped) == enabled
    # an eval that could not check the judge's lineage does not pass the judge check
    rep = report()
    rep["judge_independence"] = {"checked": False, "overlap": 0}
    assert failed(rep, shipped) == {"judge_independent"}
    assert all(c.passed for c in check_gate({"metrics": {}}, replace(shipped, allow_missing=True)))


def test_every_check_has_a_threshold_field_and_bad_values_name_the_field(shipped):
    assert {spec[2] for spec in CHECKS} <= {f.name for f in fields(GateConfig)}
    with pytest.raises(ValueError, match="max_lc_gap"):
        replace(shipped, max_lc_gap=2.0)
    with pytest.raises(ValueError, match="max_adversarial_increase"):
        replace(shipped, max_adversarial_increase=-0.1)


def test_thresholds_have_one_owner_the_gate_yaml(tmp_path, shipped):
    """GateConfig has no defaults: a gate file must state every threshold (null = off)."""
    assert all(f.default is MISSING and f.default_factory is MISSING for f in fields(GateConfig))
    partial = tmp_path / "gate.yaml"
    partial.write_text("max_ppl_increase: 0.2\n")
    with pytest.raises(ConfigError, match="missing required key.*min_win_rate_low"):
        load_config(GateConfig, partial)
    # The metric families name the checks that read them; every check exists, none is claimed twice.
    claimed = [c for m in all_metrics() for c in m.gate_checks]
    assert sorted(claimed) == sorted(spec[0] for spec in CHECKS)


def test_disabled_checks_are_not_listed(shipped):
    gate = replace(
        shipped, min_lc_win_rate=None, require_judge_independent=False, max_adversarial_increase=None
    )
    names = {c.name for c in check_gate(report(), gate)}
    assert not names & {"lc_win_rate", "judge_independent", "adversarial_no_worse"}


def test_gate_exit_codes_via_cli(tmp_path, repo_root, capsys):
    from onbrand.cli import main as cli_main

    gates = repo_root / "configs/eval/gates.yaml"
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(report()))
    bad.write_text(json.dumps(report(win_low=0.4, worse=True)))
    assert cli_main(["eval", "--from-report", str(good), "--gate", str(gates)]) == 0
    assert eval_main(["--from-report", str(bad), "--gate", str(gates)]) == 1
    out = capsys.readouterr().out
    assert "GATE FAILED: win_rate_ci_low, compliance_no_worse" in out and "hype_words (1 -> 3)" in out


def test_human_checks(shipped):
    rep = report()
    assert {"human_win_rate_ci_low", "judge_human_kappa"}.isdisjoint(c.name for c in check_gate(rep, shipped))
    gate = replace(shipped, min_human_win_rate_low=0.5, min_judge_human_kappa=0.4,
                   human_kappa_judges=["reward_model", "llm_judge"])  # fmt: skip
    # No human round yet: both checks fail (a missing metric never passes a release).
    assert {"human_win_rate_ci_low", "judge_human_kappa"} <= failed(rep, gate)
    kappa = lambda v: {"kappa": {"value": v, "low": v - 0.2, "high": v + 0.2}}  # noqa: E731
    rep["metrics"]["human"] = {"win_rate": {"value": 0.7, "low": 0.55, "high": 0.8},
                               "judges": {"reward_model": kappa(0.6), "llm_judge": kappa(0.45)}}  # fmt: skip
    assert failed(rep, gate) == set()
    rep["metrics"]["human"]["judges"]["llm_judge"] = kappa(0.3)  # the lowest gated kappa decides
    checks = {c.name: c for c in check_gate(rep, gate)}
    assert not checks["judge_human_kappa"].passed and checks["judge_human_kappa"].value == 0.3
    del rep["metrics"]["human"]["judges"]["llm_judge"]  # a gated judge not compared: fails
    assert "judge_human_kappa" in failed(rep, gate)
    rep["metrics"]["human"]["win_rate"]["low"] = 0.5
    assert "human_win_rate_ci_low" in failed(rep, gate)
    with pytest.raises(ValueError, match="human_kappa_judges must be"):
        replace(shipped, human_kappa_judges=["people"])
