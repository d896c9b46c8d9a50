"""Metrics on constructed inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onbrand.eval.metrics.compliance import compliance
from onbrand.eval.metrics.drift import drift
from onbrand.eval.metrics.logprobs import implicit_reward, kl_estimate, perplexity, token_logprobs, windows
from onbrand.eval.metrics.winrate import fit_lc, outcomes, win_rates
from onbrand.stats.ci import bootstrap, mean_ci
from onbrand.stats.text import common_prefix, distinct_n, repetition_rate


def test_bootstrap_ci_covers_truth():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(60):
        x = rng.random(150) < 0.7  # true win rate 0.7
        est = mean_ci(x.astype(float), n_boot=400, seed=trial)
        covered += est.low <= 0.7 <= est.high
        assert est.low < est.value < est.high
    assert covered >= 51, f"95% CI covered the truth in only {covered}/60 trials"
    with pytest.raises(ValueError, match="at least one"):
        mean_ci([])


def test_bootstrap_paired_statistic():
    a, b = np.arange(1.0, 41.0), np.arange(1.0, 41.0) * 2
    est = bootstrap(lambda x, y: float(y.sum() / x.sum()), a, b, n_boot=200)
    assert est.value == est.low == est.high == pytest.approx(2.0)  # paired rows keep the ratio exactly


def _synthetic(n: int, quality: float, seed: int):
    """Rewards = 0.05 * length + quality bonus + noise; aligned answers are mostly longer."""
    rng = np.random.default_rng(seed)
    lb = rng.integers(20, 80, n).astype(float)
    la = lb + rng.normal(30, 30, n)
    rb = 0.05 * lb + rng.normal(0, 1.5, n)
    ra = 0.05 * la + quality + rng.normal(0, 1.5, n)
    return ra, rb, la, lb


def test_only_longer_does_not_win_length_controlled():
    ra, rb, la, lb = _synthetic(1000, quality=0.0, seed=1)
    out = win_rates(ra, rb, la, lb, n_boot=300)
    assert out["win_rate"]["value"] > 0.65  # the verbose model wins the raw rate ...
    lc = out["lc_win_rate"]
    assert lc["low"] < 0.5 < lc["high"] and abs(lc["value"] - 0.5) < 0.08  # ... but not at equal length
    assert out["warning"] and "length" in out["warning"]


def test_better_model_wins_length_controlled():
    ra, rb, la, lb = _synthetic(1000, quality=1.5, seed=2)
    out = win_rates(ra, rb, la, lb, n_boot=300)
    assert out["lc_win_rate"]["low"] > 0.6
    # Truth at zero length difference: P(1.5 + N(0, 2 * 1.5^2) > 0) = Phi(1 / sqrt 2) ~ 0.760.
    assert out["lc_win_rate"]["value"] == pytest.approx(0.760, abs=0.06)


def test_outcomes_ties_and_lc_fit():
    w = outcomes([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert w.tolist() == [0.5, 0.0, 1.0]
    # Equal lengths: the fit is the plain rate (up to the tiny ridge term).
    t0, t1 = fit_lc(np.array([1, 1, 1, 0.0]), np.zeros(4))
    assert 1 / (1 + np.exp(-t0)) == pytest.approx(0.75, abs=0.01) and t1 == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        outcomes([1.0], [1.0, 2.0])


def test_compliance_counts_banned_phrase(repo_root):
    from onbrand.data.brand import load_brand

    card = load_brand(repo_root / "configs/brands/aurora.yaml")
    aligned = ["Thanks for asking. The Dawn lamp brightens slowly over thirty minutes before your alarm."] * 3
    base = [
        "This lamp is a GAME changer, buy now!",
        "The Dawn lamp is revolutionary and we guarantee better mornings.",
        "The Dawn lamp brightens slowly over thirty minutes before your alarm time.",
    ]
    out = compliance(card, aligned, base, ["product_question"] * 3, n_boot=100)
    rules = out["per_rule"]
    assert rules["hype_words"]["base_violations"] == 2 and rules["hype_words"]["aligned_violations"] == 0
    assert rules["pressure_selling"]["base_violations"] == 1
    assert rules["guarantee"]["base_violations"] == 1 and rules["guarantee"]["kind"] == "banned_claim"
    assert rules["shouting"]["base_violations"] == 1
    assert out["overall"]["base"]["value"] == pytest.approx(1 / 3)
    assert out["overall"]["aligned"]["value"] == 1.0 and out["worse_rules"] == []
    flipped = compliance(card, base, aligned, ["product_question"] * 3, n_boot=100)
    assert set(flipped["worse_rules"]) == {
        "hype_words",
        "pressure_selling",
        "guarantee",
        "shouting",
    }


def test_distinct_and_repetition_known_values():
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # bigrams ab, ba, ab
    assert distinct_n(["a b", "a b"], 2) == 0.5
    assert repetition_rate("x y z w x y z w") == pytest.approx(1 / 5)  # 5 four-grams, 1 repeat
    assert repetition_rate("x y z w " * 3) == pytest.approx(5 / 9)
    assert repetition_rate("one two three four five") == 0.0
    assert [
        common_prefix(a, b) for a, b in (([1, 2, 3], [1, 2, 4]), ([1, 2], [1, 2, 3]), ([5], [6]), ([], [1]))
    ] == [2, 2, 0, 0]
    d = drift(["a b c"], ["a b c d e f"], [3], [6])
    assert d["length_ratio"] == 0.5 and d["base"]["tokens"]["median"] == 6.0


def _ref_logprobs(model, prompt, resp):
    """float64 reference: full logits, log_softmax, gather."""
    m64 = model.double()
    with torch.no_grad():
        logits = m64(torch.tensor([prompt + resp])).logits[0].double()
    model.float()
    lp = torch.log_softmax(logits, -1)
    return np.array([lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(resp)])


def test_token_logprobs_matches_float64_reference(tiny_model):
    prompts = [[5, 17, 300], [9, 12]]
    resps = [[40, 41, 42, 43], [7]]
    got = token_logprobs(tiny_model, prompts, resps, batch_size=2)
    for p, r, g in zip(prompts, resps, got):
        ref = _ref_logprobs(tiny_model, p, r)
        assert np.abs(ref).min() > 1.0  # not near-zero log-probs
        np.testing.assert_allclose(g, ref, atol=2e-4)


def test_implicit_reward_and_kl_known_answers():
    base = lambda p, r: [np.full(len(x), -2.0) for x in r]  # noqa: E731
    # Policy raises chosen tokens by 0.5 nats and lowers rejected ones by 0.5.
    chosen, rejected = [[1, 2], [3, 4, 5]], [[6], [7, 8]]
    pol = lambda p, r: [np.full(len(x), -1.5 if x[0] < 6 else -2.5) for x in r]  # noqa: E731
    out = implicit_reward(pol, base, [[0], [0]], chosen, rejected, beta=0.1, n_boot=50)
    assert out["accuracy"]["value"] == 1.0
    # margins: 0.1*(1.0 - (-0.5)) = 0.15 and 0.1*(1.5 - (-1.0)) = 0.25
    assert out["margin"]["value"] == pytest.approx(0.2)
    kl = kl_estimate(pol, base, [[0], [0]], chosen, n_boot=50)
    assert kl["per_sequence"]["value"] == pytest.approx((1.0 + 1.5) / 2) and kl["per_token"] == pytest.approx(
        0.5
    )
    with pytest.raises(ValueError, match="beta"):
        implicit_reward(pol, base, [[0]], [[1]], [[2]], beta=0.0)


def test_perplexity_known_value():
    half = lambda p, r: [np.full(len(x), np.log(0.5)) for x in r]  # noqa: E731
    w = windows(list(range(25)), 10)
    assert [len(x) for x in w] == [10, 10, 5]
    assert perplexity(half, w)["ppl"]["value"] == pytest.approx(2.0)
