"""Goodhart monitor: warns (and optionally stops) when reward rises while KL/length/diversity explode."""

from __future__ import annotations

import json

import pytest

from onbrand.training.goodhart import GoodhartConfig, GoodhartMonitor, GoodhartStop, diversity


def sig(reward, kl=0.05, length=20.0, d2=0.8, rep=0.0, trunc=0.1):
    return {
        "reward": reward,
        "kl": kl,
        "length": length,
        "distinct_2": d2,
        "repetition": rep,
        "truncated": trunc,
    }


def test_rl_goodhart_quiet_when_healthy_or_reward_flat():
    mon = GoodhartMonitor(GoodhartConfig(window=2), verbose=False)
    for s in range(1, 9):  # reward rises, KL/length stay in bounds
        out = mon.observe(s, sig(0.1 * s))
        assert out["goodhart/warning"] == 0.0
    mon = GoodhartMonitor(GoodhartConfig(window=2), verbose=False)
    for s in range(1, 9):  # KL explodes but the reward does not rise: drift, not reward hacking
        out = mon.observe(s, sig(0.5, kl=0.1 * s))
    assert out["goodhart/warning"] == 0.0 and not mon.warnings


@pytest.mark.parametrize(
    "bad,flag",
    [
        (dict(kl=2.0), "KL"),
        (dict(length=90.0), "length"),
        (dict(d2=0.2), "distinct-2"),
        (dict(rep=0.9), "repetition"),
    ],
)
def test_rl_goodhart_warns_on_each_proxy(tmp_path, bad, flag):
    log = tmp_path / "goodhart.jsonl"
    mon = GoodhartMonitor(GoodhartConfig(window=2), log_path=log, verbose=False)
    for s in range(1, 4):
        assert mon.observe(s, sig(0.1 * s))["goodhart/warning"] == 0.0
    out = mon.observe(4, sig(1.0, **bad))
    assert out["goodhart/warning"] == 1.0 and out["goodhart/reward_gain"] > 0
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert rows[-1]["step"] == 4 and any(flag in f for f in rows[-1]["flags"])


def test_rl_goodhart_stop_after_patience():
    mon = GoodhartMonitor(GoodhartConfig(window=2, stop=True, patience=2), verbose=False)
    for s in range(1, 4):
        mon.observe(s, sig(0.1 * s))
        mon.check_stop(s)
    mon.observe(4, sig(1.0, kl=3.0))
    mon.check_stop(4)  # one bad step: only a warning
    mon.observe(5, sig(1.2, kl=3.5))
    with pytest.raises(GoodhartStop, match="KL"):
        mon.check_stop(5)


def test_rl_goodhart_diversity_and_config():
    d = diversity(["the lamp is warm and calm", "the lamp the lamp the lamp the lamp"])
    assert 0 < d["distinct_2"] < 1 and d["repetition"] > 0.2
    assert diversity(["a b c d e f"])["repetition"] == 0.0
    with pytest.raises(ValueError, match="goodhart.kl_max"):
        GoodhartConfig(kl_max=0)
    with pytest.raises(ValueError, match="signals lack"):
        GoodhartMonitor(GoodhartConfig()).observe(1, {"reward": 1.0})
