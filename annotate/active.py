"""Ask people only where it matters: the selection rule of ``onbrand annotate queue --strategy uncertain``.

Two automatic judges look at every candidate pair (a, b) of answers to one prompt:

* the reward model: ``rm_margin = RM(a) - RM(b)`` (``None`` when no reward model is used);
* the brand rules: ``rules_margin = compliance(a) - compliance(b)``, the difference of
  ``BrandCard.compliance_score`` (fraction of applicable rule checks passed, so in [-1, 1]).

:func:`decide` sends a pair to people when the judges disagree or neither is sure, and otherwise
turns it into a *synthetic* preference pair (the agreed winner as chosen, marked
``origin: "synthetic"``, see docs/data.md). :func:`rank_uncertain` orders the pairs for people
(most uncertain first) so that a budget of N human pairs takes the most useful N;
:func:`select` combines both. Everything here is pure (no model, no database): the queue command
and the simulation (``scripts/``) share it, so the simulation measures the rule that ships.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from onbrand.config import check_range
from onbrand.data.records import RecordError, canonicalize

DEFAULT_MARGIN = 1.0  # reward-model logits: sigmoid(1) = 0.73, the BT preference probability
DEFAULT_RULES_CLEAR = 0.2  # about two of the aurora card's 8-9 checks on one answer
PAIRINGS = ("adjacent", "all")
# Why a pair went where it went (stored in the task's / record's source, counted by the CLI).
REASONS = ("disagree", "uncertain", "reward_model", "rules")

Winner = Literal["a", "b"]
Route = Literal["human"] | tuple[Literal["synthetic"], Winner]


@dataclass(frozen=True)
class Judged:
    """The two automatic judgements of one pair (a vs b); positive = a is better."""

    rm_margin: float | None
    rules_margin: float

    def __post_init__(self) -> None:
        for name in ("rm_margin", "rules_margin"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")


def _sign(x: float | None) -> int:
    return 0 if not x else (1 if x > 0 else -1)


def route(j: Judged, margin: float = DEFAULT_MARGIN, rules_clear: float = DEFAULT_RULES_CLEAR):
    """``(reason, winner or None)``; the rule, in this order:

    1. ``disagree`` -> people: both judges prefer an answer (``rm_margin != 0`` and
       ``rules_margin != 0``) and not the same one. Any rule difference counts: it means one answer
       breaks a brand rule the other keeps.
    2. ``reward_model`` -> synthetic, winner = the sign of ``rm_margin``: ``|rm_margin| >= margin``
       (the rules agree or see no difference).
    3. ``rules`` -> synthetic, winner = the sign of ``rules_margin``: the reward model is unsure
       (``|rm_margin| < margin``, or absent) but ``|rules_margin| >= rules_clear`` (and, by 1, the
       reward model does not prefer the other answer).
    4. ``uncertain`` -> people: everything else (small reward margin, rules silent or close).
    """
    rm, rules = j.rm_margin, j.rules_margin
    if _sign(rm) * _sign(rules) < 0:
        return "disagree", None
    if rm is not None and abs(rm) >= margin:
        return "reward_model", "a" if rm > 0 else "b"
    if abs(rules) >= rules_clear:
        return "rules", "a" if rules > 0 else "b"
    return "uncertain", None


def decide(j: Judged, margin: float = DEFAULT_MARGIN, rules_clear: float = DEFAULT_RULES_CLEAR) -> Route:
    """``"human"`` or ``("synthetic", winner)`` by the rule of :func:`route`."""
    reason, winner = route(j, margin, rules_clear)
    return "human" if winner is None else ("synthetic", winner)


def uncertainty_key(j: Judged) -> tuple[int, float, float]:
    """Sort key, smallest = most uncertain: disagreements first, then the smallest ``|rm_margin|``
    (a pair without a reward score counts as margin 0), then the smallest ``|rules_margin|``."""
    disagree = _sign(j.rm_margin) * _sign(j.rules_margin) < 0
    return (0 if disagree else 1, abs(j.rm_margin or 0.0), abs(j.rules_margin))


def rank_uncertain(scores: Sequence[Judged]) -> list[int]:
    """Indices of ``scores``, most uncertain first (:func:`uncertainty_key`; ties by index)."""
    return sorted(range(len(scores)), key=lambda i: (*uncertainty_key(scores[i]), i))


@dataclass
class Selection:
    """Where each pair (by index) went; ``left_out``: routed to people but over the budget."""

    human: list[int] = field(default_factory=list)
    synthetic: list[tuple[int, Winner]] = field(default_factory=list)
    left_out: list[int] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        by_reason: dict[str, int] = {}
        for r in self.reasons.values():
            by_reason[r] = by_reason.get(r, 0) + 1
        return {
            "human": len(self.human),
            "synthetic": len(self.synthetic),
            "left_out_budget": len(self.left_out),
            "by_reason": by_reason,
        }


def select(
    scores: Sequence[Judged],
    margin: float = DEFAULT_MARGIN,
    rules_clear: float = DEFAULT_RULES_CLEAR,
    budget: int | None = None,
) -> Selection:
    """Route every pair; of those for people keep the ``budget`` most uncertain (None = all)."""
    check_range("margin", margin, 0.0, None)
    check_range("rules_clear", rules_clear, 0.0, 2.0, lo_open=True)
    if budget is not None:
        check_range("budget", budget, 0, None)
    out = Selection()
    for i, j in enumerate(scores):
        reason, winner = route(j, margin, rules_clear)
        out.reasons[i] = reason
        if winner is not None:
            out.synthetic.append((i, winner))
    people = [i for i in rank_uncertain(scores) if out.reasons[i] in ("disagree", "uncertain")]
    cut = len(people) if budget is None else budget
    out.human, out.left_out = people[:cut], people[cut:]
    return out


# ----------------------------------------------------------------------------- candidate pairs
def candidate_pairs(
    texts: Sequence[str], scores: Sequence[float], pairing: str = "adjacent"
) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)`` of one prompt's answers to judge; ``scores`` orders them (higher first).

    Empty answers and repeats (after whitespace strip) are dropped first. ``adjacent``: sort by
    score and pair each answer with the next one (K-1 pairs: the closest calls, and a chain that
    fixes the whole order once judged). ``all``: every pair (K(K-1)/2, redundant but more data).
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    seen: set[str] = set()
    keep = []
    for i, t in enumerate(texts):
        key = t.strip()
        if key and key not in seen:
            seen.add(key)
            keep.append(i)
    order = sorted(keep, key=lambda i: (-scores[i], i))
    if pairing == "adjacent":
        return list(zip(order, order[1:]))
    return list(itertools.combinations(order, 2))


def synthetic_record(
    item: dict[str, Any], winner: Winner, judge: str, line: int, created_at: str
) -> dict[str, Any]:
    """A canonical preference record for a confident pair ``item`` (``{"prompt", "a", "b",
    "channel", "brand"?}``), marked ``origin: "synthetic"``; its ``source.file`` is
    ``synthetic:<judge>`` so the provenance shows it too (the marker that counts is ``origin``:
    ``source`` is replaced on import and is not part of the snapshot id). Raises ``RecordError``."""
    chosen, rejected = (item["a"], item["b"]) if winner == "a" else (item["b"], item["a"])
    obj = {
        "prompt": item["prompt"],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "channel": item.get("channel"),
        "brand": item.get("brand"),
        "created_at": created_at,
        "origin": "synthetic",
    }
    return canonicalize(obj, source={"file": f"synthetic:{judge}", "line": line})


def synthetic_records(
    items: Sequence[dict[str, Any]], chosen: Sequence[tuple[int, Winner]], judge: str, created_at: str
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Records for the ``(index, winner)`` pairs; pairs that fail validation are counted by reason."""
    out, bad = [], {}
    for i, winner in chosen:
        try:
            out.append(synthetic_record(items[i], winner, judge, len(out) + 1, created_at))
        except RecordError as e:
            bad[e.reason] = bad.get(e.reason, 0) + 1
    return out, bad
