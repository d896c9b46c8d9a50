"""Annotator quality: gold accuracy, agreement with the majority, speed; project agreement.

Why these three per annotator: gold accuracy says whether someone gets the *known* answers right
(with a Wilson interval, since a handful of gold items is a noisy estimate); agreement with the
majority catches someone who disagrees with everybody on the items without a known answer; the
median time between judgements flags clicking through without reading. ``pooling.export_records``
uses the first two to leave out an unreliable annotator's judgements, counted per annotator.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from onbrand.annotate.db import Annotator, Judgement, Project, Task
from onbrand.config import check_range
from onbrand.stats.agreement import agreement_report

Z95 = 1.959963984540054  # two-sided 95% normal quantile
SESSION_GAP_S = 30 * 60  # a longer pause between two judgements starts a new sitting
ORDINAL_SCALE = ("a", "tie", "b")  # both_bad is not on it: left out of ordinal alpha, counted


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion ``k / n`` (None for ``n == 0``).

    Unlike ``p +- z*sqrt(p(1-p)/n)`` it stays inside [0, 1] and is not zero-width at 0/n or n/n,
    which matters for the few gold items one annotator sees.
    """
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends (no 1e-17 rounding residue)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def strict_majority(labels: list[str]) -> str | None:
    """The label more than half of ``labels`` carry, else None (ties and pluralities left out)."""
    if not labels:
        return None
    label, votes = Counter(labels).most_common(1)[0]
    return label if votes * 2 > len(labels) else None


def load_judgements(s: Session, project: Project) -> tuple[list[Judgement], dict[int, str | None]]:
    """(every judgement of the project in id order, {task id: gold answer or None})."""
    js = list(
        s.scalars(select(Judgement).join(Task).where(Task.project_id == project.id).order_by(Judgement.id))
    )
    gold = dict(s.execute(select(Task.id, Task.gold).where(Task.project_id == project.id)).all())
    return js, gold


def gold_scores(js: list[Judgement], gold: dict[int, str | None]) -> dict[int, tuple[int, int]]:
    """{annotator id: (correct, judged)} on gold items (exact match with the known answer)."""
    out: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for j in js:
        if gold.get(j.task_id) is not None:
            out[j.annotator_id][0] += j.choice == gold[j.task_id]
            out[j.annotator_id][1] += 1
    return {a: (c, n) for a, (c, n) in out.items()}


def majority_scores(js: list[Judgement], gold: dict[int, str | None]) -> dict[int, dict[str, int]]:
    """{annotator id: {"agree", "compared", "no_majority"}} on non-gold items with >= 2 others.

    Each choice is compared with the strict majority of the *other* annotators of the item (the
    annotator's own vote would inflate it); items where the others have no majority are counted
    as ``no_majority`` and left out of the fraction.
    """
    by_task: dict[int, list[Judgement]] = defaultdict(list)
    for j in js:
        if gold.get(j.task_id) is None:
            by_task[j.task_id].append(j)
    out: dict[int, dict[str, int]] = defaultdict(lambda: {"agree": 0, "compared": 0, "no_majority": 0})
    for votes in by_task.values():
        if len(votes) < 3:
            continue
        for j in votes:
            maj = strict_majority([o.choice for o in votes if o.annotator_id != j.annotator_id])
            row = out[j.annotator_id]
            if maj is None:
                row["no_majority"] += 1
            else:
                row["compared"] += 1
                row["agree"] += j.choice == maj
    return dict(out)


def speed(times: list) -> dict[str, Any]:
    """Median seconds between consecutive judgements within a sitting, and judgements per hour."""
    times = sorted(times)
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    within = [g for g in gaps if g <= SESSION_GAP_S]
    span_h = (times[-1] - times[0]).total_seconds() / 3600 if len(times) > 1 else 0.0
    return {
        "median_seconds": round(statistics.median(within), 1) if within else None,
        "sittings": (1 + len(gaps) - len(within)) if times else 0,
        "per_hour": round(len(times) / span_h, 1) if span_h > 0 else None,
    }


def _ratio(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def annotator_quality(
    annotators: list[Annotator], js: list[Judgement], gold: dict[int, str | None]
) -> dict[int, dict[str, Any]]:
    """Per annotator id: gold, majority and speed numbers (see the module docstring)."""
    g = gold_scores(js, gold)
    m = majority_scores(js, gold)
    times: dict[int, list] = defaultdict(list)
    for j in js:
        times[j.annotator_id].append(j.created_at)
    out = {}
    for a in annotators:
        correct, judged = g.get(a.id, (0, 0))
        ci = wilson_interval(correct, judged)
        maj = m.get(a.id, {"agree": 0, "compared": 0, "no_majority": 0})
        out[a.id] = {
            "gold_judged": judged,
            "gold_correct": correct,
            "gold_accuracy": _ratio(correct, judged),
            "gold_accuracy_ci95": [round(ci[0], 4), round(ci[1], 4)] if ci else None,
            "majority_agreement": _ratio(maj["agree"], maj["compared"]),
            "majority_compared": maj["compared"],
            "majority_no_majority": maj["no_majority"],
            **{f"speed_{k}": v for k, v in speed(times[a.id]).items()},
        }
    return out


def gold_summary(project: Project, js: list[Judgement], gold: dict[int, str | None]) -> dict[str, Any]:
    """Project-level gold numbers: pool size, judgements, pooled accuracy with its interval."""
    scores = gold_scores(js, gold)
    correct = sum(c for c, _ in scores.values())
    judged = sum(n for _, n in scores.values())
    ci = wilson_interval(correct, judged)
    return {
        "rate": float(project.gold_rate or 0.0),
        "items": sum(v is not None for v in gold.values()),
        "judgements": judged,
        "accuracy": _ratio(correct, judged),
        "accuracy_ci95": [round(ci[0], 4), round(ci[1], 4)] if ci else None,
    }


def quality_report(s: Session, project: Project) -> dict[str, Any]:
    """``{"annotators": {name: quality}, "gold": summary, "agreement": report}`` in one read.

    Agreement is over the non-gold overlapping items only (gold items are a test, not data):
    raw agreement, Cohen's kappa per pair, Krippendorff's alpha nominal over all four labels and
    ordinal over ``a < tie < b`` (``both_bad`` left out and counted).
    """
    js, gold = load_judgements(s, project)
    annotators = list(
        s.scalars(select(Annotator).where(Annotator.project_id == project.id).order_by(Annotator.id))
    )
    names = {a.id: a.name for a in annotators}
    per = annotator_quality(annotators, js, gold)
    triples = [(j.task_id, names[j.annotator_id], j.choice) for j in js if gold.get(j.task_id) is None]
    return {
        "annotators": {names[a]: q for a, q in per.items()},
        "gold": gold_summary(project, js, gold),
        "agreement": agreement_report(triples, ordinal=ORDINAL_SCALE),
    }


def unreliable_annotators(
    js: list[Judgement],
    gold: dict[int, str | None],
    min_gold_accuracy: float | None = None,
    min_gold_items: int = 5,
    min_majority_agreement: float | None = None,
    min_majority_items: int = 5,
) -> tuple[dict[int, str], set[int]]:
    """({annotator id: why dropped}, {annotator ids the thresholds could not check}).

    An annotator is dropped when, with at least ``min_gold_items`` gold judgements, their gold
    accuracy (point estimate) is below ``min_gold_accuracy``; likewise for agreement with the
    majority over ``min_majority_items`` compared items. Too few items to check means kept, and
    reported as unchecked so the export can say so.
    """
    if min_gold_accuracy is not None:
        check_range("min_gold_accuracy", min_gold_accuracy, 0.0, 1.0)
    if min_majority_agreement is not None:
        check_range("min_majority_agreement", min_majority_agreement, 0.0, 1.0)
    check_range("min_gold_items", min_gold_items, 1)
    check_range("min_majority_items", min_majority_items, 1)
    voters = {j.annotator_id for j in js}
    dropped: dict[int, str] = {}
    unchecked: set[int] = set()
    if min_gold_accuracy is not None:
        scores = gold_scores(js, gold)
        for a in voters:
            correct, judged = scores.get(a, (0, 0))
            if judged < min_gold_items:
                unchecked.add(a)
            elif correct / judged < min_gold_accuracy:
                dropped[a] = f"gold accuracy {correct}/{judged} < {min_gold_accuracy}"
    if min_majority_agreement is not None:
        maj = majority_scores(js, gold)
        for a in voters - set(dropped):
            row = maj.get(a, {"agree": 0, "compared": 0})
            if row["compared"] < min_majority_items:
                unchecked.add(a)
            elif row["agree"] / row["compared"] < min_majority_agreement:
                dropped[a] = f"majority agreement {row['agree']}/{row['compared']} < {min_majority_agreement}"
    return dropped, unchecked - set(dropped)
