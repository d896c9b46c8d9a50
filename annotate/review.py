"""Reviewer adjudication: the items annotators disagreed on, and a reviewer's verdict on them.

A verdict (:class:`~onbrand.annotate.db.Adjudication`, one per task) wins over the majority vote in
export. Reviewers are project members with role ``reviewer``: they adjudicate only their own
project's tasks; admins adjudicate anywhere. Gold items (known answers) are never adjudicated: their
answer is the gold label. Every verdict is audited (``task.adjudicate``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from onbrand.annotate.access import Principal, audit
from onbrand.annotate.db import CHOICES, Adjudication, Annotator, Judgement, Project, Task, utcnow

MAX_NOTE = 2000  # characters


def verdicts(s: Session, project: Project) -> dict[int, str]:
    """``{task_id: adjudicated choice}`` of a project."""
    q = select(Adjudication.task_id, Adjudication.choice).join(Task, Adjudication.task_id == Task.id)
    return {task_id: choice for task_id, choice in s.execute(q.where(Task.project_id == project.id))}


def disagreements(s: Session, project: Project) -> list[dict[str, Any]]:
    """Non-gold tasks with two or more judgements that are not all the same choice, oldest first.

    Each: ``{task_id, prompt, channel, candidate_a, candidate_b, votes: [{annotator, choice}],
    adjudication}`` (``adjudication`` is the verdict's choice, or None before a reviewer gave one).
    """
    q = (
        select(Judgement.task_id, Annotator.name, Judgement.choice)
        .join(Annotator, Judgement.annotator_id == Annotator.id)
        .join(Task, Judgement.task_id == Task.id)
        .where(Task.project_id == project.id, Task.gold.is_(None))
        .order_by(Judgement.task_id, Judgement.id)
    )
    votes: dict[int, list[dict[str, str]]] = defaultdict(list)
    for task_id, name, choice in s.execute(q):
        votes[task_id].append({"annotator": name, "choice": choice})
    split = [t for t, v in votes.items() if len(v) >= 2 and len({x["choice"] for x in v}) > 1]
    if not split:
        return []
    tasks = {t.id: t for t in s.scalars(select(Task).where(Task.id.in_(split)))}
    done = verdicts(s, project)
    return [
        {
            "task_id": t,
            "prompt": tasks[t].prompt,
            "channel": tasks[t].channel,
            "candidate_a": tasks[t].candidate_a,
            "candidate_b": tasks[t].candidate_b,
            "votes": votes[t],
            "adjudication": done.get(t),
        }
        for t in sorted(split)
    ]


def _check(s: Session, reviewer: Principal, task_id: int, choice: str, note: str | None) -> Task:
    if reviewer.role not in ("reviewer", "admin"):
        raise PermissionError(f"only reviewers and admins adjudicate; {reviewer.name!r} is {reviewer.role}")
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    if note is not None and len(note) > MAX_NOTE:
        raise ValueError(f"note is {len(note)} characters, at most {MAX_NOTE}")
    task = s.get(Task, task_id)
    if task is None:
        raise LookupError(f"no task {task_id}")
    if reviewer.role == "reviewer" and reviewer.project_id != task.project_id:
        raise PermissionError(f"task {task_id} is not in reviewer {reviewer.name!r}'s project")
    if task.gold is not None:
        raise ValueError(f"task {task_id} is a gold item: its answer is the gold label")
    return task


def adjudicate(
    s: Session, reviewer: Principal, task_id: int, choice: str, note: str | None = None
) -> Adjudication:
    """Record ``reviewer``'s verdict on a task; a later verdict replaces the earlier one."""
    task = _check(s, reviewer, task_id, choice, note)
    for attempt in range(2):  # a concurrent first verdict on the same task: retry as a replacement
        adj = s.scalar(select(Adjudication).where(Adjudication.task_id == task.id))
        previous = adj.choice if adj is not None else None
        if adj is None:
            adj = Adjudication(task_id=task.id)
            s.add(adj)
        adj.reviewer_id, adj.reviewer = reviewer.member_id, reviewer.name
        adj.choice, adj.note, adj.created_at = choice, note, utcnow()
        audit(
            s, reviewer, "task.adjudicate", task.project_id, task_id=task.id, choice=choice, previous=previous
        )
        try:
            s.commit()
            return adj
        except IntegrityError:
            s.rollback()
            if attempt:
                raise
    raise AssertionError("unreachable")
