"""Inter-annotator agreement on the overlapping items: Cohen's kappa and Krippendorff's alpha.

Written here because ``onbrand.data`` has no agreement functions and the usual packages
(scikit-learn, ``krippendorff``) are not dependencies; both formulas are a few lines.

* Cohen's kappa (two raters, the same items)::

      kappa = (p_o - p_e) / (1 - p_e),   p_e = sum_c p1(c) * p2(c)

* Krippendorff's alpha, any number of raters per unit, missing values allowed. With the
  coincidence matrix ``o_ck = sum_u (#(c,k) pairs of values in unit u) / (m_u - 1)`` over units with
  ``m_u >= 2`` values, ``n_c = sum_k o_ck`` and ``n = sum_c n_c``::

      alpha = 1 - (n - 1) * sum_{c,k} o_ck * d2_ck / sum_{c,k} n_c * n_k * d2_ck

  nominal: ``d2_ck = 1`` for ``c != k``; ordinal (Krippendorff 2011, "Computing Krippendorff's
  Alpha-Reliability", with ranks ``c < k`` in the given order)::

      d2_ck = (sum_{g=c..k} n_g - (n_c + n_k) / 2) ** 2

  so a disagreement between neighbouring ranks costs less than one across the scale, weighted by
  how many values actually fall between them.

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


def _coincidences(units: Sequence[Sequence[Hashable]]) -> dict[tuple[Hashable, Hashable], float]:
    o: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue  # a value nobody else judged cannot be compared
        for i, j in itertools.permutations(range(m), 2):
            o[(values[i], values[j])] += 1.0 / (m - 1)
    return o


def _ordinal_d2(order: Sequence[Hashable], n_c: dict[Hashable, float]) -> dict[tuple, float]:
    """Krippendorff's ordinal metric from the coincidence marginals ``n_c``."""
    counts = [n_c.get(c, 0.0) for c in order]
    d2: dict[tuple, float] = {}
    for i, c in enumerate(order):
        for j in range(i, len(order)):
            k = order[j]
            d = sum(counts[i : j + 1]) - (counts[i] + counts[j]) / 2.0
            d2[(c, k)] = d2[(k, c)] = d * d
    return d2


def krippendorff_alpha(
    units: Sequence[Sequence[Hashable]], metric: str = "nominal", order: Sequence[Hashable] | None = None
) -> float:
    """Krippendorff's alpha; ``units[u]`` is the list of values unit ``u`` received.

    ``metric`` is ``"nominal"`` or ``"ordinal"``; ordinal ranks the values by ``order`` (default:
    the values sorted), and a value outside ``order`` is an error (filter it first, and count it).
    """
    if metric not in ("nominal", "ordinal"):
        raise ValueError(f"metric must be 'nominal' or 'ordinal', got {metric!r}")
    o = _coincidences(units)
    n_c: dict[Hashable, float] = defaultdict(float)
    for (c, _k), v in o.items():
        n_c[c] += v
    n = sum(n_c.values())
    if n <= 1:
        return math.nan
    if metric == "nominal":
        d2 = {(c, k): float(c != k) for c in n_c for k in n_c}
    else:
        order = sorted(n_c) if order is None else list(order)
        unknown = set(n_c) - set(order)
        if unknown:
            raise ValueError(
                f"ordinal alpha: values {sorted(map(str, unknown))} are not on the scale {order}"
            )
        d2 = _ordinal_d2(order, n_c)
    disagree = sum(v * d2[ck] for ck, v in o.items())
    expected = sum(n_c[c] * n_c[k] * d2[(c, k)] for c in n_c for k in n_c)
    if expected == 0:
        return math.nan
    return 1.0 - (n - 1) * disagree / expected


def agreement_report(
    labels: Sequence[tuple[Hashable, str, Hashable]], ordinal: Sequence[Hashable] | None = None
) -> dict:
    """Agreement over ``(item, annotator, label)`` triples.

    Returns ``{"items_overlapping", "percent_agreement", "krippendorff_alpha", "cohen_kappa":
    [{"annotators": [a, b], "items": n, "kappa": k}, ...]}`` (kappa for each pair sharing items).
    With an ``ordinal`` scale (labels in rank order, e.g. ``("a", "tie", "b")``) it adds
    ``"krippendorff_alpha_ordinal"`` and ``"ordinal": {"scale", "items", "values", "excluded"}``:
    labels off the scale (``both_bad``) are left out of that computation and counted.
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
    report = {
        "items_overlapping": len(overlapping),
        "percent_agreement": _finite(pairs_same / pairs_all) if pairs_all else None,
        "krippendorff_alpha": _finite(krippendorff_alpha(units)),
        "cohen_kappa": kappas,
    }
    if ordinal is not None:
        report.update(_ordinal_report(units, list(ordinal)))
    return report


def _ordinal_report(units: list[list[Hashable]], scale: list[Hashable]) -> dict:
    """Ordinal alpha over the on-scale values of the overlapping units, with what it covered."""
    on_scale = [[v for v in u if v in scale] for u in units]
    pairable = [u for u in on_scale if len(u) >= 2]
    return {
        "krippendorff_alpha_ordinal": _finite(krippendorff_alpha(pairable, "ordinal", scale)),
        "ordinal": {
            "scale": scale,
            "items": len(pairable),
            "values": sum(len(u) for u in pairable),
            "excluded": sum(len(u) for u in units) - sum(len(u) for u in on_scale),
        },
    }


def _finite(x: float) -> float | None:
    """JSON has no NaN: undefined agreement is reported as null."""
    return None if x is None or math.isnan(x) else round(float(x), 4)
