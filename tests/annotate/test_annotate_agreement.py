"""Agreement statistics against hand-computed values, scikit-learn and published reference values."""

from __future__ import annotations

import math
import random

import pytest

from onbrand.stats.agreement import agreement_report, cohen_kappa, krippendorff_alpha


def test_cohen_kappa_hand_computed():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = 0.7, p_e = .5*.6 + .5*.4 = 0.5.
    r1 = ["y"] * 25 + ["n"] * 25
    r2 = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(r1, r2) == pytest.approx(0.4, abs=1e-12)
    assert cohen_kappa(["a", "b", "a"], ["a", "b", "a"]) == 1.0
    # Perfect disagreement on a balanced binary task: p_o = 0, p_e = 0.5 -> -1.
    assert cohen_kappa(["a", "b"] * 5, ["b", "a"] * 5) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa(["a"] * 4, ["a"] * 4))  # no variation: undefined
    with pytest.raises(ValueError, match="different numbers"):
        cohen_kappa(["a"], ["a", "b"])


def test_cohen_kappa_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    labels = ["a", "b", "tie", "both_bad"]
    r1 = [rng.choice(labels) for _ in range(200)]
    r2 = [x if rng.random() < 0.6 else rng.choice(labels) for x in r1]
    assert cohen_kappa(r1, r2) == pytest.approx(metrics.cohen_kappa_score(r1, r2), abs=1e-12)


def test_krippendorff_alpha_reference_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 coders, 12 units,
    # nominal data with missing values; the published value is 0.743.
    n = None
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    units = [[v for v in col if v is not None] for col in zip(*coders)]
    assert krippendorff_alpha(units) == pytest.approx(0.743421, abs=1e-6)
    # Same data, ordinal metric: the paper reports 0.815; the float64 value 0.8153875037548814 is
    # from the reference implementation (PyPI ``krippendorff`` 0.9.0, level_of_measurement
    # "ordinal"), run once outside this repository; it is not a dependency.
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(0.8153875037548814, abs=1e-12)
    assert krippendorff_alpha(units, "ordinal", [1, 2, 3, 4, 5]) == pytest.approx(
        0.8153875037548814, abs=1e-12
    )
    # A scale with an unused rank (6) changes nothing: an empty rank adds no distance.
    assert krippendorff_alpha(units, "ordinal", [1, 2, 3, 4, 5, 6]) == pytest.approx(
        0.8153875037548814, abs=1e-12
    )


def test_krippendorff_alpha_preference_labels_against_reference():
    # 4 annotators x 9 items of preference labels (None: not judged). Reference values from the
    # PyPI ``krippendorff`` 0.9.0 package (float64; a=0, tie=1, b=2, both_bad=3 for nominal, and
    # both_bad set missing for ordinal), run once outside this repository.
    n = None
    coders = [
        ["a", "a", "b", "tie", "b", "a", "both_bad", "b", n],
        ["a", "tie", "b", "b", "b", "b", "both_bad", n, "a"],
        [n, "a", "tie", "b", "b", "a", "a", "b", "a"],
        ["a", "a", "b", n, "both_bad", "a", n, "b", "tie"],
    ]
    units = [[v for v in col if v is not None] for col in zip(*coders)]
    assert krippendorff_alpha(units) == pytest.approx(0.35185185185185175, abs=1e-12)
    scale = ["a", "tie", "b"]
    ordinal = [[v for v in u if v in scale] for u in units]
    assert krippendorff_alpha(ordinal, "ordinal", scale) == pytest.approx(0.6645330112721417, abs=1e-12)
    # Near misses (a vs tie) cost less than a vs b, so ordinal alpha is above nominal here.
    assert krippendorff_alpha(ordinal, "ordinal", scale) > krippendorff_alpha(ordinal)
    with pytest.raises(ValueError, match="not on the scale"):
        krippendorff_alpha(units, "ordinal", scale)  # both_bad must be filtered (and counted) first
    with pytest.raises(ValueError, match="metric must be"):
        krippendorff_alpha(units, "interval")
    rep = agreement_report(
        [(i, f"c{k}", v) for k, row in enumerate(coders) for i, v in enumerate(row) if v is not None],
        ordinal=scale,
    )
    assert rep["krippendorff_alpha"] == pytest.approx(0.3519, abs=1e-4)
    assert rep["krippendorff_alpha_ordinal"] == pytest.approx(0.6645, abs=1e-4)
    # 31 values on 9 items; 3 both_bad left out, which leaves item 7 with one value (not pairable):
    # 8 items with 27 values enter the ordinal computation.
    assert rep["ordinal"] == {"scale": scale, "items": 8, "values": 27, "excluded": 3}


def test_krippendorff_alpha_two_coders_hand_computed():
    # Units (a,a) (a,b) (b,b) (b,b): o_aa=2, o_ab=o_ba=1, o_bb=4; n_a=3, n_b=5, n=8.
    # alpha = 1 - (n-1) * (o_ab+o_ba) / (2 n_a n_b) = 1 - 7*2/30 = 0.5333...
    units = [["a", "a"], ["a", "b"], ["b", "b"], ["b", "b"]]
    assert krippendorff_alpha(units) == pytest.approx(1 - 14 / 30, abs=1e-12)
    assert krippendorff_alpha([["a", "a"], ["b", "b"], ["c"]]) == 1.0  # singletons are ignored
    assert math.isnan(krippendorff_alpha([["a", "a"], ["a", "a"]]))


def test_agreement_report_groups_by_item():
    labels = [
        (1, "ann", "a"),
        (1, "bob", "a"),
        (2, "ann", "b"),
        (2, "bob", "a"),
        (3, "ann", "tie"),
        (3, "cat", "tie"),
        (4, "ann", "a"),  # judged once: not part of agreement
    ]
    rep = agreement_report(labels)
    assert rep["items_overlapping"] == 3
    assert rep["percent_agreement"] == pytest.approx(2 / 3, abs=1e-4)
    pairs = {tuple(k["annotators"]): k for k in rep["cohen_kappa"]}
    assert set(pairs) == {("ann", "bob"), ("ann", "cat")}
    assert pairs[("ann", "bob")]["items"] == 2
    # ann (a, b) vs bob (a, a): p_o = 0.5, p_e = 0.5*1 + 0.5*0 = 0.5 -> kappa 0.
    assert pairs[("ann", "bob")]["kappa"] == 0.0
    assert pairs[("ann", "cat")]["kappa"] is None  # one shared item, one label: undefined
    units = [["a", "a"], ["b", "a"], ["tie", "tie"]]
    assert rep["krippendorff_alpha"] == pytest.approx(krippendorff_alpha(units), abs=1e-4)
