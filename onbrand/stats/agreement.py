"""Inter-annotator agreement on the overlapping items: Cohen's kappa and Krippendorff's alpha.

Written here because ``onbrand.data`` has no agreement functions and the usual packages
(scikit-learn, ``krippendorff``) are not dependencies; both formulas are a few lines.

* Cohen's kappa (two raters, the same items)::

      kappa = (p_o - p_e) / (1 - p_e),   p_e = sum_c p1(c) * p2(c)

* Krippendorff's alpha, nominal, any number of raters, missing values allowed. With the
  coincidence matrix ``o_ck = sum_u (#(c,k) pairs of values in unit u) / (m_u - 1)`` over units with
  ``m_u >= 2`` values, ``n_c = sum_k o_ck`` and ``n = sum_c n_c``::

      alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c * n_k

Both return NaN when undefined (every value in one category: no variation to agree on).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence


def cohen_kappa(rater1: Sequence[Hashable], rater2: Sequence[Hashable]) -> float:
    """Cohen's kappa of two equally long label sequences (item i judged by both)."""
    if len(rater1) != len(rater2):
        raise ValueError(f"raters judged different numbers of items: {len(rater1)} vs {len(rater2)}")
    n = len(rater1)
    if n == 0:
        return math.nan
    p_o = sum(a == b for a, b in zip(rater1, rater2)) / n
    c1, c2 = Counter(rater1), Counter(rater2)
    p_e = sum(c1[c] * c2[c] for c in c1.keys() | c2.keys()) / (n * n)
    if p_e == 1.0:
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)


def krippendorff_alpha(units: Sequence[Sequence[Hashable]]) -> float:
    """Nominal Krippendorff's alpha; ``units[u]`` is the list of values unit ``u`` received."""
    o: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue  # a value nobody else judged cannot be compared
        for i, j in itertools.permutations(range(m), 2):
            o[(values[i], values[j])] += 1.0 / (m - 1)
    n_c: dict[Hashable, float] = defaultdict(float)
    for (c, _k), v in o.items():
        n_c[c] += v
    n = sum(n_c.values())
    if n <= 1:
        return math.nan
    disagree = sum(v for (c, k), v in o.items() if c != k)
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k)
    if expected == 0:
        return math.nan
    return 1.0 - (n - 1) * disagree / expected


def agreement_report(labels: Sequence[tuple[Hashable, str, Hashable]]) -> dict:
    """Agreement over ``(item, annotator, label)`` triples.

    Returns ``{"items_overlapping", "percent_agreement", "krippendorff_alpha", "cohen_kappa":
    [{"annotators": [a, b], "items": n, "kappa": k}, ...]}`` (kappa for each pair sharing items).
    """
    by_item: dict[Hashable, dict[str, Hashable]] = defaultdict(dict)
    for item, annotator, label in labels:
        by_item[item][annotator] = label
    overlapping = {i: v for i, v in by_item.items() if len(v) >= 2}
    units = [list(v.values()) for v in overlapping.values()]
    pairs_same = pairs_all = 0
    for values in units:
        for x, y in itertools.combinations(values, 2):
            pairs_all += 1
            pairs_same += x == y
    per_pair: dict[tuple[str, str], tuple[list, list]] = defaultdict(lambda: ([], []))
    for votes in overlapping.values():
        for a, b in itertools.combinations(sorted(votes), 2):
            per_pair[(a, b)][0].append(votes[a])
            per_pair[(a, b)][1].append(votes[b])
    kappas = [
        {"annotators": [a, b], "items": len(x), "kappa": _finite(cohen_kappa(x, y))}
        for (a, b), (x, y) in sorted(per_pair.items())
    ]
    return {
        "items_overlapping": len(overlapping),
        "percent_agreement": _finite(pairs_same / pairs_all) if pairs_all else None,
        "krippendorff_alpha": _finite(krippendorff_alpha(units)),
        "cohen_kappa": kappas,
    }


def _finite(x: float) -> float | None:
    """JSON has no NaN: undefined agreement is reported as null."""
    return None if x is None or math.isnan(x) else round(float(x), 4)
