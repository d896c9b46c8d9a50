"""The active-learning simulation on a toy problem: the learner, the strategies, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from onbrand.annotate.active_sim import (
    Pool,
    SimConfig,
    accuracy,
    disagree,
    fit_logreg,
    labels_to_target,
    rank_uncertain_local,
    route_local,
    selection_rule,
    simulate,
    spread,
    summarize,
)


def _toy(seed: int = 0, n: int = 400, m: int = 300, d: int = 8, rm_noise: float | None = None):
    """Linearly separable pairs: the chosen answer is the side with the higher w*.x."""
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=d)

    def pairs(k: int) -> np.ndarray:
        x = rng.normal(size=(k, d))
        return x * np.sign(x @ w_true)[:, None]  # oriented chosen - rejected

    x, dev = pairs(n), pairs(m)
    rm = np.zeros(n) if rm_noise is None else x @ w_true + rng.normal(scale=rm_noise, size=n)
    return Pool(x=x, rm=rm, rules=np.zeros(n)), dev


CFG = SimConfig(seed_labels=6, k=4, budget=38, l2=0.1)


def _median_final(pool: Pool, dev: np.ndarray, strategy: str, seeds: range) -> float:
    return float(np.median([simulate(pool, dev, strategy, s, CFG)["accuracy"][-1] for s in seeds]))


def test_fit_logreg_is_at_the_optimum_and_separates():
    pool, dev = _toy()
    rng = np.random.default_rng(1)
    flip = rng.choice([-1.0, 1.0], size=len(pool.x))
    x, y = pool.x * flip[:, None], (flip > 0).astype(float)
    w = fit_logreg(x, y, l2=0.5)
    xs = x * (2 * y - 1)[:, None]
    grad = -xs.T @ (1 / (1 + np.exp(xs @ w))) + 0.5 * w
    assert np.abs(grad).max() < 1e-6
    assert accuracy(w, dev) > 0.95
    assert accuracy(np.zeros_like(w), dev) == 0.5  # ties count one half


@pytest.mark.parametrize("n", [20, 120])
def test_fit_logreg_with_more_features_than_labels(n):
    """Fewer labels than features takes the n x n (Woodbury) Newton step; same optimum."""
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, 60)), rng.integers(0, 2, size=n).astype(float)
    w = fit_logreg(x, y, l2=2.0)
    xs = x * (2 * y - 1)[:, None]
    assert np.abs(-xs.T @ (1 / (1 + np.exp(xs @ w))) + 2.0 * w).max() < 1e-6


def test_uncertainty_sampling_beats_random_on_a_separable_toy():
    pool, dev = _toy()
    seeds = range(8)
    rand = _median_final(pool, dev, "random", seeds)
    unc = _median_final(pool, dev, "uncertain", seeds)
    assert unc > rand + 0.01, (unc, rand)


def test_judge_disagreement_is_asked_first_and_helps():
    pool, dev = _toy(rm_noise=0.3)
    seeds = range(8)
    assert _median_final(pool, dev, "uncertain", seeds) > _median_final(pool, dev, "random", seeds)
    rule = simulate(pool, dev, "rule", 0, CFG)
    assert rule["labels"] == CFG.budgets()


def test_synthetic_labels_come_from_the_reward_model_and_are_counted():
    pool, dev = _toy(rm_noise=0.3)
    out = simulate(pool, dev, "uncertain+synthetic", 3, SimConfig(seed_labels=6, k=4, budget=14, tau=1.0))
    confident = np.abs(pool.rm) >= 1.0
    assert out["labels"] == [6, 10, 14]
    assert 0 < out["synthetic"][0] <= confident.sum()
    wrong_sign = confident & (pool.rm < 0)  # the reward model's mistakes become wrong labels
    assert out["synthetic"][0] - out["synthetic_correct"][0] <= wrong_sign.sum()
    plain = simulate(pool, dev, "uncertain", 3, SimConfig(seed_labels=6, k=4, budget=14))
    assert plain["synthetic"] == [0, 0, 0]


def test_seeds_are_reproducible_and_differ():
    pool, dev = _toy()
    a = simulate(pool, dev, "uncertain", 5, CFG)
    assert a == simulate(pool, dev, "uncertain", 5, CFG)
    assert [simulate(pool, dev, "random", s, CFG)["accuracy"] for s in range(4)] != [a["accuracy"]] * 4


def test_disagree_ignores_judges_without_an_opinion():
    got = disagree(np.array([1.0, 1.0, -2.0, 0.0]), np.array([0.0, -1.0, -1.0, 3.0]))
    assert got.tolist() == [False, True, False, False]


def test_summaries_and_labels_to_target():
    curves = [
        {"labels": [10, 20, 30], "accuracy": a} for a in ([0.5, 0.6, 0.7], [0.5, 0.8, 0.8], [0.4, 0.5, 0.6])
    ]
    s = summarize(curves)
    assert s["median"] == [0.5, 0.6, 0.7]
    assert [labels_to_target(c, 0.7) for c in curves] == [30, 20, None]
    assert labels_to_target(s, 0.7) == 30
    sp = spread([30, 20, None])
    assert (sp["median"], sp["reached"], sp["seeds"]) == (30.0, 2, 3)
    assert spread([None, None, 10])["median"] is None


def test_unknown_strategy_and_bad_budget_are_clear_errors():
    pool, dev = _toy(n=20, m=5)
    with pytest.raises(ValueError, match="unknown strategy"):
        simulate(pool, dev, "greedy", 0, CFG)
    with pytest.raises(ValueError, match="bad budget"):
        SimConfig(seed_labels=10, budget=5).budgets()


def test_local_rule_copy_matches_the_shipped_rule():
    """The fallback copy routes and ranks exactly like onbrand.annotate.active (when present)."""
    active = pytest.importorskip("onbrand.annotate.active")
    rng = np.random.default_rng(7)
    rm = np.round(rng.normal(scale=1.5, size=300), 1)
    rm[:20] = 0.0
    rules = rng.choice([-0.5, -0.25, -0.1, 0.0, 0.0, 0.1, 0.25, 0.5], size=300)
    judged = [active.Judged(float(a), float(b)) for a, b in zip(rm, rules, strict=True)]
    shipped = [active.decide(j, margin=1.0) for j in judged]
    expect = [0.0 if r == "human" else (1.0 if r[1] == "a" else -1.0) for r in shipped]
    assert route_local(rm, rules, 1.0).tolist() == expect
    assert rank_uncertain_local(rm, rules, np.arange(300.0)).tolist() == active.rank_uncertain(judged)


def _script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "sim_active_learning.py"
    spec = importlib.util.spec_from_file_location("sim_active_learning", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_selection_rule_wraps_the_shipped_rule_like_the_local_copy():
    rank_fn, route_fn, _, tau = selection_rule()
    rng = np.random.default_rng(3)
    rm, rules, tie = rng.normal(size=50), rng.choice([-0.3, 0.0, 0.3], size=50), rng.random(50)
    assert route_fn(rm, rules, tau).tolist() == route_local(rm, rules, tau).tolist()
    assert rank_fn(rm, rules, tie).tolist() == rank_uncertain_local(rm, rules, tie).tolist()


def test_script_without_the_demo_run_says_how_to_make_it(tmp_path, capsys):
    rc = _script().main(["--snapshot", str(tmp_path / "snap"), "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "make demo" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_script_refuses_the_test_split(tmp_path):
    with pytest.raises(ValueError, match="never reads the test split"):
        _script()._read_split(tmp_path, "test")


def test_headline_targets_random_at_the_full_budget_and_counts_savings():
    from onbrand.annotate.active_sim import headline, verdict

    lab = [2, 4, 6, 8]
    curves = {
        "random": [{"labels": lab, "accuracy": a} for a in ([0.5, 0.7, 0.8, 0.9], [0.6, 0.7, 0.9, 0.9])],
        "uncertain": [{"labels": lab, "accuracy": a} for a in ([0.5, 0.9, 0.9, 0.9], [0.6, 0.8, 0.9, 1.0])],
        "rule": [{"labels": lab, "accuracy": a} for a in ([0.5, 0.6, 0.6, 0.7], [0.5, 0.6, 0.7, 0.8])],
    }
    res = headline(curves, one_pair=0.1)
    lt = res["labels_to_target"]
    assert lt["target_accuracy"] == 0.9
    assert lt["random"]["per_seed"] == [8, 6] and lt["uncertain"]["per_seed"] == [4, 6]
    assert res["labels_to_target_less_one_pair"]["rule"]["per_seed"] == [None, 8]
    text = verdict(lt, budget=8)
    assert "uncertain needs 4 [4, 6], 2 fewer than random" in text
    assert "rule does not reach it within 8 labels in most seeds (0/2)" in text
