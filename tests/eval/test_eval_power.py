"""Power and sample size for the win rate: known answers of the normal approximation."""

from __future__ import annotations

import pytest

from onbrand.eval.metrics.power import min_detectable_diff, power_analysis, prompts_needed

Z = 1.959964 + 0.841621  # z_{0.975} + z_{0.80}


def test_min_detectable_diff_known_values():
    assert (
        min_detectable_diff(100) == pytest.approx(Z * 0.5 / 10, rel=1e-5) == pytest.approx(0.14008, abs=1e-5)
    )
    assert min_detectable_diff(98) == pytest.approx(0.14150, abs=1e-5)
    assert min_detectable_diff(400) == pytest.approx(min_detectable_diff(100) / 2)  # 1/sqrt(n)
    with pytest.raises(ValueError, match="n must be >= 1"):
        min_detectable_diff(0)


def test_prompts_needed_known_values():
    assert prompts_needed(0.1) == 197  # (2.8016 * 0.5 / 0.1)^2 = 196.2
    assert prompts_needed(-0.05) == 785
    assert prompts_needed(0.0) is None
    # Consistent with the detectable difference: n prompts resolve exactly that effect.
    assert prompts_needed(min_detectable_diff(250)) == 250


def test_power_analysis_on_win_rates():
    est = lambda v, lo, hi: {"value": v, "low": lo, "high": hi}  # noqa: E731
    m = {"win_rate": {"win_rate": est(0.55, 0.45, 0.65), "lc_win_rate": est(0.7, 0.6, 0.8)}}
    pw = power_analysis(m, 10)
    assert pw["min_detectable_win_rate"] == pytest.approx(0.5 + Z * 0.5 / 10**0.5, rel=1e-5)
    raw, lc = pw["rates"]["win_rate"], pw["rates"]["lc_win_rate"]
    assert raw["inconclusive"] and raw["prompts_needed"] == 785 and raw["effect"] == pytest.approx(0.05)
    assert not lc["inconclusive"] and lc["prompts_needed"] is None
    assert power_analysis({}, 10)["rates"] == {}
