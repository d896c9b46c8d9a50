"""Simulated active learning: how many human judgements does asking only where it matters save?

A pool of candidate pairs with known preferences (the simulated annotator answers with them), a
held-out set, and a learner: an L2-regularised logistic regression on the difference of two
answers' frozen features (a pairwise judge, Bradley-Terry style, no intercept, so "left is better"
can not be learned). Each strategy starts from the same random seed set and adds ``k`` human labels
per round up to a budget; after each round the judge is refitted and scored on the held-out pairs.

Strategies:

- ``random``: the next ``k`` pairs of a random permutation of the pool;
- ``margin``: classic uncertainty sampling, no automatic judges: refit, then ask about the pairs
  with the smallest learned-judge margin;
- ``uncertain``: refit, then ask about the pairs where the judges disagree (the current learned
  judge, the reward model, the brand rules when they separate the two answers), then those with the
  smallest learned-judge margin;
- ``rule``: the static selection rule without a learner (``onbrand.annotate.active``): the pairs
  it routes to people in its order (reward model and rules disagree, then the smallest reward
  margin), then the rest; what the annotation queue does before anything is trained;
- ``uncertain+synthetic``: ``uncertain``, and the learner also trains on synthetic labels for the
  pairs the rule settles without people (judges agree, reward margin at least ``tau`` or a clear
  rule difference), labelled with the judges' winner. Only human labels count on the x axis.

Pure numpy, so the whole simulation runs in about a minute on two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STRATEGIES = ("random", "margin", "uncertain", "rule", "uncertain+synthetic")


@dataclass
class Pool:
    """Candidate pairs, each as (chosen - rejected): ``x`` learner features, ``rm`` reward-model
    margin, ``rules`` compliance difference (0 = the rules do not separate the answers)."""

    x: np.ndarray
    rm: np.ndarray
    rules: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.x)
        if len(self.rm) != n or len(self.rules) != n:
            raise ValueError(f"pool: x has {n} rows, rm {len(self.rm)}, rules {len(self.rules)}")


@dataclass
class SimConfig:
    seed_labels: int = 2
    k: int = 2
    budget: int = 100
    l2: float = 1.0
    tau: float = 1.0  # reward-model margin below which a pair is "uncertain" (goes to people)
    newton_steps: int = 25
    extra: dict = field(default_factory=dict)

    def budgets(self) -> list[int]:
        if self.seed_labels < 1 or self.k < 1 or self.budget < self.seed_labels:
            raise ValueError(f"bad budget: seed_labels={self.seed_labels}, k={self.k}, budget={self.budget}")
        return list(range(self.seed_labels, self.budget + 1, self.k))


def _newton_step(xs: np.ndarray, sqrt_d: np.ndarray, grad: np.ndarray, l2: float) -> np.ndarray:
    """Solve (X'DX + l2 I) step = grad; with fewer labels than features, in the n x n space
    (Woodbury: (l2 I + B'B)^-1 = (I - B'(l2 I + BB')^-1 B) / l2 with B = D^1/2 X), which keeps
    a 200-label fit on 577 features at a few milliseconds."""
    n, d = xs.shape
    b = xs * sqrt_d[:, None]
    if n >= d:
        return np.linalg.solve(b.T @ b + l2 * np.eye(d), grad)
    inner = np.linalg.solve(b @ b.T + l2 * np.eye(n), b @ grad)
    return (grad - b.T @ inner) / l2


def fit_logreg(
    x: np.ndarray, y: np.ndarray, l2: float, steps: int = 25, w0: np.ndarray | None = None
) -> np.ndarray:
    """L2 logistic regression without intercept by Newton's method; ``y`` in {0, 1}.

    Minimises sum log(1 + exp(-s * w.x)) + l2/2 |w|^2 with s = 2y - 1 (strictly convex for l2 > 0,
    so Newton converges in a handful of steps; the step is halved until the loss decreases).
    ``w0``: a warm start (the previous round's fit), same optimum in fewer steps.
    """
    s = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
    xs = np.asarray(x, dtype=np.float64) * s[:, None]
    w = np.zeros(xs.shape[1]) if w0 is None else np.asarray(w0, dtype=np.float64).copy()

    def loss(v: np.ndarray) -> float:
        return float(np.logaddexp(0.0, -xs @ v).sum() + 0.5 * l2 * v @ v)

    current = loss(w)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(np.clip(xs @ w, -50, 50)))  # sigmoid(-margin)
        grad = -xs.T @ p + l2 * w
        if np.abs(grad).max() < 1e-10 * max(1.0, len(xs)):
            break
        step = _newton_step(xs, np.sqrt(p * (1 - p)), grad, l2)
        t, new = 1.0, loss(w - step)
        while new > current and t > 1e-6:
            t /= 2
            new = loss(w - t * step)
        if new > current:  # no descent left: at the optimum up to rounding
            break
        w, done = w - t * step, current - new < 1e-12 * max(1.0, abs(current))
        current = new
        if done:
            break
    return w


def accuracy(w: np.ndarray, x_chosen_minus_rejected: np.ndarray) -> float:
    """Held-out pairwise accuracy: the chosen answer gets the higher score (a tie counts 1/2)."""
    m = x_chosen_minus_rejected @ w
    return float(((m > 0) + 0.5 * (m == 0)).mean())


def disagree(*margins: np.ndarray) -> np.ndarray:
    """True where two judges with an opinion (margin != 0) prefer different answers."""
    signs = np.stack([np.sign(m) for m in margins])
    return (signs > 0).any(axis=0) & (signs < 0).any(axis=0)


def rank_uncertain_local(rm: np.ndarray, rules: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """Pool indices, most uncertain first: reward model vs rules disagree, then smallest |rm|,
    then smallest |rules| (the order of ``onbrand.annotate.active.rank_uncertain``)."""
    return np.lexsort((tiebreak, np.abs(rules), np.abs(rm), ~disagree(rm, rules)))


def route_local(rm: np.ndarray, rules: np.ndarray, tau: float, rules_clear: float = 0.2) -> np.ndarray:
    """Per pair: 0 = people, +1 / -1 = synthetic with the first / second answer as the winner.

    The rule of ``onbrand.annotate.active.decide``: judges disagree -> people; |rm| >= tau -> the
    reward model's winner; else |rules| >= rules_clear -> the rules' winner; else people.
    """
    out = np.where(np.abs(rules) >= rules_clear, np.sign(rules), 0.0)
    out = np.where(np.abs(rm) >= tau, np.sign(rm), out)
    return np.where(disagree(rm, rules), 0.0, out)


RankFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
RouteFn = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def _next_uncertain(w, xs, rm_s, rules_s, labelled, k, tiebreak, judges: bool = True) -> np.ndarray:
    """The k unlabelled pairs to ask about: any judge disagreement first (``judges``), then the
    smallest learned-judge margin |w.x|."""
    m = xs @ w
    first = ~disagree(m, rm_s, rules_s) if judges else np.zeros(len(m), dtype=bool)
    order = np.lexsort((tiebreak, np.abs(m), first))
    return order[~labelled[order]][:k]


def simulate(
    pool: Pool,
    dev_x: np.ndarray,
    strategy: str,
    seed: int,
    cfg: SimConfig,
    rank_fn: RankFn = rank_uncertain_local,
    route_fn: RouteFn = route_local,
) -> dict:
    """One learning curve: held-out accuracy after each budget point of human labels.

    Each pair is shown in a random orientation (left/right), the label being "left is better";
    the seed set and orientations depend only on ``seed``, so strategies share them (paired runs).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    n = len(pool.x)
    rng = np.random.default_rng(seed)
    flip = rng.choice([-1.0, 1.0], size=n)
    perm = rng.permutation(n)
    tiebreak = rng.random(n)
    xs, y = pool.x * flip[:, None], (flip > 0).astype(float)
    rm_s, rules_s = pool.rm * flip, pool.rules * flip
    labelled = np.zeros(n, dtype=bool)
    labelled[perm[: cfg.seed_labels]] = True
    routes = route_fn(rm_s, rules_s, cfg.tau)
    ranked = [int(i) for i in rank_fn(rm_s, rules_s, tiebreak) if not labelled[i]]
    static = [i for i in ranked if routes[i] == 0] + [i for i in ranked if routes[i] != 0]  # people first
    out: dict[str, list] = {"labels": [], "accuracy": [], "synthetic": [], "synthetic_correct": []}
    w = np.zeros(xs.shape[1])  # refitted at every budget point, before any pick that uses it
    for b in cfg.budgets():
        while labelled.sum() < b:
            need = min(cfg.k, b - int(labelled.sum()))
            if strategy == "random":
                pick = [i for i in perm if not labelled[i]][:need]
            elif strategy == "rule":
                pick = [i for i in static if not labelled[i]][:need]
            else:
                judges = strategy != "margin"
                pick = _next_uncertain(w, xs, rm_s, rules_s, labelled, need, tiebreak, judges)
            labelled[pick] = True
        train = labelled.copy()
        xt, yt = xs, y.copy()
        synth = np.zeros(n, dtype=bool)
        if strategy == "uncertain+synthetic":
            synth = (routes != 0) & ~labelled
            yt[synth] = (routes[synth] > 0).astype(float)  # the judges' answer, not the truth
            train = labelled | synth
        w = fit_logreg(xt[train], yt[train], cfg.l2, cfg.newton_steps, w0=w)
        out["labels"].append(int(labelled.sum()))
        out["accuracy"].append(accuracy(w, dev_x))
        out["synthetic"].append(int(synth.sum()))
        out["synthetic_correct"].append(int((yt[synth] == y[synth]).sum()))
    return out


def pool_judges(pool, tau: float, route_fn) -> dict[str, Any]:
    """What the automatic judges say about the pool, checked against the known preferences."""
    routes = route_fn(pool.rm, pool.rules, tau)
    synth = routes != 0
    return {
        "pairs": len(pool.rm),
        "rules_decide": int((pool.rules != 0).sum()),
        "rules_decide_correct": int((pool.rules > 0).sum()),
        "reward_model_correct": int((pool.rm > 0).sum()),
        "reward_model_margin_below_tau": int((np.abs(pool.rm) < tau).sum()),
        "reward_model_vs_rules_disagree": int(disagree(pool.rm, pool.rules).sum()),
        "rule_sends_to_people": int((~synth).sum()),
        "rule_makes_synthetic": int(synth.sum()),
        "synthetic_correct": int((routes > 0).sum()),
    }


def selection_rule():
    """``(rank_fn, route_fn, source, default tau)``: the shipped rule of ``onbrand.annotate.active``
    (``rank_uncertain``, ``decide``, ``Judged``) wrapped for arrays, so the simulation measures the
    rule that ships; the local copy above when that module or those names are missing."""
    try:
        from onbrand.annotate.active import DEFAULT_MARGIN, Judged, decide, rank_uncertain
    except ImportError:
        return rank_uncertain_local, route_local, "local copy (annotate/active_sim.py)", 1.0

    def rank_fn(rm: np.ndarray, rules: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
        order = np.argsort(tiebreak)  # rank_uncertain breaks ties by index: shuffle per seed first
        ranked = rank_uncertain([Judged(float(rm[i]), float(rules[i])) for i in order])
        return order[np.asarray(ranked, dtype=int)]

    def route_fn(rm: np.ndarray, rules: np.ndarray, tau: float) -> np.ndarray:
        out = [decide(Judged(float(a), float(b)), margin=tau) for a, b in zip(rm, rules, strict=True)]
        return np.asarray([0.0 if r == "human" else (1.0 if r[1] == "a" else -1.0) for r in out])

    return rank_fn, route_fn, "onbrand.annotate.active (rank_uncertain, decide)", float(DEFAULT_MARGIN)


def summarize(curves: list[dict]) -> dict:
    """Median and 25-75% band over seeds at each budget point."""
    acc = np.asarray([c["accuracy"] for c in curves])
    q25, med, q75 = np.percentile(acc, [25, 50, 75], axis=0)
    return {
        "labels": curves[0]["labels"],
        "median": [round(float(v), 4) for v in med],
        "q25": [round(float(v), 4) for v in q25],
        "q75": [round(float(v), 4) for v in q75],
        "mean": [round(float(v), 4) for v in acc.mean(axis=0)],
    }


def labels_to_target(curve: dict, target: float) -> int | None:
    """Human labels at which a curve first reaches ``target`` (None: not within the budget)."""
    for n, a in zip(curve["labels"], curve.get("accuracy", curve.get("median")), strict=True):
        if a >= target - 1e-9:
            return int(n)
    return None


def spread(values: list[int | None]) -> dict:
    """Median and quartiles of per-seed label counts (the smallest count with at least that share of
    seeds at or below it); a seed that never reached the target counts as +inf."""
    arr = np.asarray([np.inf if v is None else v for v in values], dtype=float)
    q25, med, q75 = np.percentile(arr, [25, 50, 75], method="inverted_cdf")

    def show(v: float) -> float | None:
        return None if not np.isfinite(v) else float(v)

    return {
        "median": show(med),
        "q25": show(q25),
        "q75": show(q75),
        "reached": int(np.isfinite(arr).sum()),
        "seeds": len(values),
    }


def _to_target(curves: dict[str, list[dict]], summaries: dict, target: float, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {"target_accuracy": round(target, 4), "target_is": what}
    for s, c in curves.items():
        per_seed = [labels_to_target(x, target) for x in c]
        out[s] = {
            "per_seed": per_seed,
            "spread": spread(per_seed),
            "median_curve": labels_to_target(summaries[s], target),
        }
    return out


def headline(curves: dict[str, list[dict]], one_pair: float) -> dict[str, Any]:
    """Target = random sampling's median dev accuracy at the full budget; for each strategy, the
    human labels each seed needs to first reach it, and where the median curve reaches it. The
    same one dev pair below the target too, since one pair is a whole accuracy step."""
    summaries = {s: summarize(c) for s, c in curves.items()}
    target = summaries["random"]["median"][-1]
    return {
        "summaries": summaries,
        "labels_to_target": _to_target(
            curves, summaries, target, "random sampling's median at the full budget"
        ),
        "labels_to_target_less_one_pair": _to_target(
            curves, summaries, target - one_pair, "the target less one dev pair"
        ),
    }


def verdict(lt: dict[str, Any], budget: int) -> str:
    """One honest clause per strategy: labels (median over seeds) to reach the target accuracy."""

    def v(x: float | None) -> str:
        return "never" if x is None else f"{x:.0f}"

    rs = lt["random"]["spread"]
    rand = rs["median"]
    parts = [
        f"target {lt['target_accuracy']:.3f} dev accuracy ({lt['target_is']}); random sampling needs a median "
        f"{v(rand)} [{v(rs['q25'])}, {v(rs['q75'])}] human labels to first reach it ({rs['reached']}/{rs['seeds']} "
        f"seeds within {budget})"
    ]
    for s in [k for k in lt if k not in ("random", "target_accuracy", "target_is")]:
        sp = lt[s]["spread"]
        if sp["median"] is None:
            parts.append(
                f"{s} does not reach it within {budget} labels in most seeds ({sp['reached']}/{sp['seeds']})"
            )
            continue
        saved = (budget if rand is None else rand) - sp["median"]
        word = f"{saved:.0f} fewer" if saved > 0 else ("no fewer" if saved == 0 else f"{-saved:.0f} more")
        word = f"at least {word}" if rand is None else word
        parts.append(f"{s} needs {v(sp['median'])} [{v(sp['q25'])}, {v(sp['q75'])}], {word} than random")
    return "; ".join(parts) + "."
