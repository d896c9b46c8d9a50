"""Gold items: pairs with a known answer, mixed unannounced into every annotator's queue.

An annotator's answers on gold items measure how reliable they are (``quality.py``) and let the
export leave out the judgements of annotators below a threshold (``pooling.export_records``).

* Loading: ``read_gold`` reads a pairs JSONL like ``queue --pairs`` where every line carries
  ``"gold": "a" | "b" | "tie" | "both_bad"`` (``a``/``b`` name ``candidates[0]``/``[1]``); a
  canonical record ``{prompt, chosen, rejected}`` means gold ``"a"`` with ``a = chosen``.
* Storing: ``add_gold`` adds them as tasks with ``Task.gold`` set. A gold item identical to a task
  already in the project is an error (never merged: the known answer would silently become a
  training label, or a training pair a test).
* Mixing: ``mix_gold`` (called by ``service.assign``) tops each annotator up to
  ``round(n * r / (1 - r))`` gold items for ``n`` regular items at rate ``r``, so gold is a fraction
  ``r`` of the queue, and interleaves them at random positions. The assignment row is an ordinary
  one and the item view never shows ``Task.gold``: annotators cannot tell a gold item apart.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from onbrand.annotate.access import Principal, audit
from onbrand.annotate.db import CHOICES, Annotator, Assignment, Project, Task
from onbrand.annotate.queue import _jsonl, parse_pair
from onbrand.config import check_range

MAX_GOLD_RATE = 0.5  # above this, gold would be most of the work


def parse_gold(obj: dict[str, Any], path: str | Path, n: int) -> dict[str, Any]:
    """One gold pair ``{"prompt", "a", "b", "gold", "channel", "source"}``; errors name file:line:field."""
    pair = parse_pair(obj, path, n)
    gold = obj.get("gold")
    if gold is None:
        if "candidates" in obj:
            raise ValueError(f"{Path(path)}:{n}: gold: missing (required: one of {', '.join(CHOICES)})")
        gold = "a"  # a canonical record: chosen (= a) is the known better answer
    if gold not in CHOICES:
        raise ValueError(f"{Path(path)}:{n}: gold: expected one of {', '.join(CHOICES)}, got {gold!r}")
    return {**pair, "gold": gold}


def read_gold(path: str | Path) -> list[dict[str, Any]]:
    """Every line of a gold JSONL as :func:`parse_gold` output (the first bad line raises)."""
    path = Path(path)
    return [parse_gold(obj, path, n) for n, obj in _jsonl(path)]


def add_gold(
    s: Session, project: Project, items: list[dict[str, Any]], actor: Principal | None = None
) -> dict[str, Any]:
    """Store gold items as tasks; all or nothing. Returns ``{"added", "answers": {gold: count}}``.

    A gold item identical (order-free, like tasks) to a task already in the project, or to an
    earlier line of the same load, raises ``ValueError`` naming both. Audited (``gold.add``).
    """
    from onbrand.annotate.service import add_tasks, task_hash

    existing = {
        h: (tid, gold)
        for tid, h, gold in s.execute(
            select(Task.id, Task.content_hash, Task.gold).where(Task.project_id == project.id)
        )
    }
    seen: dict[str, str] = {}
    for item in items:
        if item.get("gold") not in CHOICES:
            raise ValueError(f"{_where(item)}: gold: expected one of {', '.join(CHOICES)}")
        h = task_hash(item["prompt"], item["a"], item["b"])
        if h in existing:
            tid, gold = existing[h]
            kind = f"gold task {tid} (answer {gold})" if gold else f"task {tid}"
            raise ValueError(
                f"{_where(item)}: this gold item is identical to {kind} of project {project.name!r}"
            )
        if h in seen:
            raise ValueError(f"{_where(item)}: this gold item repeats {seen[h]}")
        seen[h] = _where(item)
    answers = dict(Counter(i["gold"] for i in items))
    audit(s, actor, "gold.add", project.id, items=len(items), answers=answers)
    counts = add_tasks(s, project, items)  # commits the tasks and the audit row together
    return {"added": counts["added"], "answers": answers}


def _where(item: dict[str, Any]) -> str:
    src = item.get("source") or {}
    return f"{src.get('file', 'gold')}:{src.get('line', '?')}"


def set_gold_rate(s: Session, project: Project, rate: float, actor: Principal | None = None) -> None:
    """The fraction of each annotator's queue that is gold (applies to the next ``assign``)."""
    check_range("gold_rate", rate, 0.0, MAX_GOLD_RATE)
    audit(s, actor, "project.gold_rate", project.id, old=project.gold_rate, new=float(rate))
    project.gold_rate = float(rate)
    s.commit()


def gold_target(regular: int, rate: float) -> int:
    """Gold items for ``regular`` regular ones so gold is ``rate`` of the queue (half rounds up)."""
    if rate <= 0:
        return 0
    return math.floor(regular * rate / (1.0 - rate) + 0.5 + 1e-9)


def mix_gold(
    s: Session,
    project: Project,
    annotators: list[Annotator],
    new: dict[int, list[Assignment]],
    start: dict[int, int],
    rng: random.Random,
) -> dict[str, Any]:
    """Add each annotator's due gold items and set queue positions of this round's assignments.

    ``new[annotator id]`` are the regular assignments just made (in queue order, not yet
    positioned), ``start[annotator id]`` the first free position. The target counts *all* of an
    annotator's regular assignments, so a later ``assign`` (more tasks, a higher rate, a bigger
    gold pool) tops up what is missing. Each gold item goes at most once to one annotator; when the
    pool runs short the annotator gets all of it and the shortfall is reported.
    """
    rate = float(project.gold_rate or 0.0)
    s.flush()
    pool = list(
        s.scalars(
            select(Task.id).where(Task.project_id == project.id, Task.gold.is_not(None)).order_by(Task.id)
        )
    )
    given, shortfall = 0, {}
    for ann in annotators:
        block = list(new.get(ann.id, []))
        picks: list[int] = []
        if rate > 0:
            have = set(
                s.scalars(
                    select(Assignment.task_id)
                    .join(Task, Task.id == Assignment.task_id)
                    .where(Assignment.annotator_id == ann.id, Task.gold.is_not(None))
                )
            )
            regular = s.scalar(
                select(func.count(Assignment.id))
                .join(Task, Task.id == Assignment.task_id)
                .where(Assignment.annotator_id == ann.id, Task.gold.is_(None))
            )
            due = gold_target(regular, rate) - len(have)
            avail = [t for t in pool if t not in have]
            picks = rng.sample(avail, min(max(due, 0), len(avail)))
            if due > len(avail):
                shortfall[ann.name] = due - len(avail)
        gold_asgs = [
            Assignment(task_id=t, annotator_id=ann.id, left=rng.choice("ab"), position=0) for t in picks
        ]
        s.add_all(gold_asgs)
        given += len(gold_asgs)
        _interleave(block, gold_asgs, start[ann.id], rng)
    return {"rate": rate, "pool": len(pool), "assigned": given, "shortfall": shortfall}


def _interleave(regular: list[Assignment], gold: list[Assignment], start: int, rng: random.Random) -> None:
    """Positions ``start..``: regular items keep their order, gold ones land in random slots."""
    total = len(regular) + len(gold)
    slots = set(rng.sample(range(total), len(gold)))
    reg, gld = iter(regular), iter(gold)
    for i in range(total):
        (next(gld) if i in slots else next(reg)).position = start + i
