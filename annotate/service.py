"""What the annotation service does, independent of HTTP: projects, tokens, tasks, assignment,
submissions, progress. The FastAPI app (``app.py``) and the CLI (``cli.py``) both call these.

Errors: ``ValueError`` for bad input (HTTP 422), ``PermissionError`` for an item that is not the
caller's (HTTP 403), ``LookupError`` for something that does not exist (HTTP 404), ``Conflict`` for a
second, different judgement of an item already judged (HTTP 409).
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from onbrand.annotate.db import (
    SCREEN_CHOICES,
    Annotator,
    Assignment,
    Judgement,
    Project,
    Task,
    hash_token,  # noqa: F401  (re-exported: callers use service.hash_token)
)
from onbrand.artifacts import sha256_file, sha256_json
from onbrand.config import check_range
from onbrand.data.brand import load_brand

MAX_TEXT = 20_000  # characters of a rewrite / candidate shown to annotators
MAX_TAGS = 32


class Conflict(Exception):
    """The item already has a different judgement."""


# ----------------------------------------------------------------------------- brand card
def brand_facts(path: str | Path) -> dict[str, Any]:
    """``{"id", "name", "reason_tags", "system_prompt", "path", "sha256"}`` of a brand card."""

    card = load_brand(path)
    return {
        "id": card.id,
        "name": card.name,
        "reason_tags": [str(t) for t in card.reason_tags],
        "system_prompt": card.system_prompt(),
        "path": str(path),
        "sha256": sha256_file(path),
    }


# ----------------------------------------------------------------------------- admin + projects
def set_admin_token(s: Session, token: str | None = None) -> str:
    """Set (or rotate) the token of the admin named "admin"; returns the clear token once.

    The old token of that admin stops working; other named admins (``access.add_admin``) keep
    theirs. Audited as a CLI action."""
    from onbrand.annotate import access

    return access.add_admin(s, "admin", token)


def has_admin(s: Session) -> bool:
    """Whether some admin token works (not revoked, not expired)."""
    from onbrand.annotate import access

    return access.has_usable_admin(s)


def is_admin(s: Session, token: str | None) -> bool:
    from onbrand.annotate import access

    p = access.authenticate(s, token)
    return p is not None and p.role == "admin"


def create_project(
    s: Session,
    name: str,
    brand: dict[str, Any],
    overlap: float = 0.1,
    seed: int = 0,
) -> Project:
    """A project judged against one brand card (``brand`` is :func:`brand_facts` output)."""
    check_range("overlap", overlap, 0.0, 1.0)
    if not name or len(name) > 200:
        raise ValueError(f"project name must be 1-200 characters, got {name!r}")
    if s.scalar(select(Project).where(Project.name == name)) is not None:
        raise ValueError(f"project {name!r} already exists")
    project = Project(
        name=name,
        brand_id=brand["id"],
        brand_name=brand["name"],
        brand_path=brand.get("path"),
        brand_sha256=brand.get("sha256"),
        reason_tags=list(brand.get("reason_tags", [])),
        overlap=overlap,
        seed=seed,
    )
    s.add(project)
    s.commit()
    return project


def get_project(s: Session, name_or_id: str | int) -> Project:
    # Only ASCII digits of a positive int64 are an id: anything longer would make the database
    # raise OverflowError, so it is looked up as a name instead (no match: the usual 404).
    key = str(name_or_id)
    if key.isascii() and key.isdigit() and len(key) <= 19 and 0 < int(key) < 2**63:
        project = s.get(Project, int(key))
    else:
        project = s.scalar(select(Project).where(Project.name == key))
    if project is None:
        names = ", ".join(s.scalars(select(Project.name))) or "none yet"
        raise LookupError(f"no project {name_or_id!r}; projects: {names}")
    return project


def add_annotator(s: Session, project: Project, name: str, **kw: Any) -> tuple[Annotator, str]:
    """Register a project member (``role``, ``expires_at``, ``actor``: see ``access.add_member``);
    returns the clear token (shown once, stored hashed). Audited."""
    from onbrand.annotate import access

    return access.add_member(s, project, name, **kw)


def annotator_for_token(s: Session, token: str | None) -> Annotator | None:
    """The member (annotator or reviewer) a token belongs to; None if unknown, revoked or expired."""
    from onbrand.annotate import access

    p = access.authenticate(s, token)
    return s.get(Annotator, p.member_id) if p is not None and p.member_id is not None else None


# ----------------------------------------------------------------------------- tasks + assignment
def task_hash(prompt: list[dict[str, str]], a: str, b: str) -> str:
    # Order-free: the same pair loaded as (a, b) or (b, a) is one task.
    return sha256_json({"prompt": prompt, "candidates": sorted([a, b])})


def add_tasks(s: Session, project: Project, items: list[dict[str, Any]]) -> dict[str, int]:
    """Load pairs ``{"prompt": messages, "a", "b", "channel"?, "source"?, "gold"?}``.

    A pair already in the project is not loaded twice; the count of such duplicates is returned
    (``{"added": n, "duplicates": m}``) so the caller can report it, never dropped silently. A
    duplicate of a gold item is also counted as ``"duplicates_of_gold"`` (it is never a training
    pair). ``gold`` (the known answer) is set by ``gold.add_gold``, which refuses duplicates.
    """
    rows = s.execute(select(Task.content_hash, Task.gold).where(Task.project_id == project.id))
    existing = {h: gold for h, gold in rows}
    added = dupes = of_gold = 0
    for item in items:
        h = task_hash(item["prompt"], item["a"], item["b"])
        if h in existing:
            dupes += 1
            of_gold += existing[h] is not None
            continue
        existing[h] = item.get("gold")
        s.add(
            Task(
                project_id=project.id,
                prompt=item["prompt"],
                candidate_a=item["a"],
                candidate_b=item["b"],
                channel=item.get("channel"),
                source=item.get("source") or {},
                content_hash=h,
                gold=item.get("gold"),
            )
        )
        added += 1
    s.commit()
    out = {"added": added, "duplicates": dupes}
    if of_gold:
        out["duplicates_of_gold"] = of_gold
    return out


def assign(
    s: Session, project: Project, overlap: float | None = None, seed: int | None = None, per_item: int = 2
) -> dict:
    """Give every unassigned task to the least-loaded annotator; ``overlap`` of them to ``per_item``
    annotators (2 by default; all of a blind eval round's annotators, say, for a majority vote).

    The overlapping items are what agreement is computed on. The left/right order of each
    assignment is drawn here (seeded) and recorded, so position bias can be measured later.
    Gold tasks are never assigned as regular ones: at the project's ``gold_rate`` each annotator
    gets gold items mixed in at random queue positions (``gold.mix_gold``); the result then has
    ``"gold": {"rate", "pool", "assigned", "shortfall": {annotator: missing}}``. Reviewers get no
    queue.
    """
    from onbrand.annotate.gold import mix_gold

    overlap = project.overlap if overlap is None else overlap
    check_range("overlap", overlap, 0.0, 1.0)
    check_range("per_item", per_item, 2, 1000)
    rng = random.Random(project.seed if seed is None else seed)
    annotators = list(
        s.scalars(
            select(Annotator).where(
                Annotator.project_id == project.id, Annotator.active, Annotator.role != "reviewer"
            )
        )
    )
    if not annotators:
        raise ValueError(f"project {project.name!r} has no annotators: add some first")
    if overlap > 0 and len(annotators) < per_item:
        raise ValueError(
            f"overlap {overlap} with {per_item} annotators per item needs at least {per_item} annotators, "
            f"project has {len(annotators)}"
        )
    assigned = set(s.scalars(select(Assignment.task_id).join(Task).where(Task.project_id == project.id)))
    regular = select(Task.id).where(Task.project_id == project.id, Task.gold.is_(None))
    todo = [t for t in s.scalars(regular) if t not in assigned]
    n_double = round(overlap * len(todo))
    double = set(rng.sample(todo, n_double)) if n_double else set()
    load = {
        a.id: s.scalar(select(func.count(Assignment.id)).where(Assignment.annotator_id == a.id))
        for a in annotators
    }
    start = dict(load)
    new: dict[int, list[Assignment]] = {a.id: [] for a in annotators}
    order = list(todo)
    rng.shuffle(order)
    for task_id in order:
        k = per_item if task_id in double else 1
        ranked = sorted(annotators, key=lambda a: (load[a.id], rng.random()))
        for ann in ranked[:k]:
            asg = Assignment(task_id=task_id, annotator_id=ann.id, left=rng.choice("ab"), position=0)
            s.add(asg)
            new[ann.id].append(asg)
            load[ann.id] += 1
    gold = mix_gold(s, project, annotators, new, start, rng)  # also sets every new position
    s.commit()
    out: dict[str, Any] = {
        "tasks": len(todo),
        "overlapping": len(double),
        "assignments": len(todo) + (per_item - 1) * len(double),
    }
    if gold["rate"] > 0 or gold["pool"]:
        out["gold"] = gold
    return out


# ----------------------------------------------------------------------------- annotator side
def progress(s: Session, ann: Annotator) -> tuple[int, int]:
    """(judged, assigned) for the progress counter."""
    total = s.scalar(select(func.count(Assignment.id)).where(Assignment.annotator_id == ann.id))
    done = s.scalar(
        select(func.count(Assignment.id)).where(Assignment.annotator_id == ann.id, Assignment.done)
    )
    return done, total


def next_assignment(s: Session, ann: Annotator) -> tuple[Assignment, Task] | None:
    """The annotator's next open item: queue order, skipped items last."""
    row = s.execute(
        select(Assignment, Task)
        .join(Task, Task.id == Assignment.task_id)
        .where(Assignment.annotator_id == ann.id, Assignment.done.is_(False))
        .order_by(Assignment.skipped, Assignment.position, Assignment.id)
        .limit(1)
    ).first()
    return None if row is None else (row[0], row[1])


def own_assignment(s: Session, ann: Annotator, assignment_id: int) -> tuple[Assignment, Task]:
    asg = s.get(Assignment, assignment_id)
    if asg is None:
        raise LookupError(f"no item {assignment_id}")
    if asg.annotator_id != ann.id:
        raise PermissionError(f"item {assignment_id} is not assigned to you")
    return asg, s.get(Task, asg.task_id)


def shown(asg: Assignment, task: Task) -> tuple[str, str]:
    """(left text, right text) in the order this annotator sees."""
    if asg.left == "a":
        return task.candidate_a, task.candidate_b
    return task.candidate_b, task.candidate_a


def _check_submission(project: Project, screen_choice: str, tags: list[str], rewrite: str | None) -> None:
    if screen_choice not in SCREEN_CHOICES:
        raise ValueError(f"choice must be one of {', '.join(SCREEN_CHOICES)}, got {screen_choice!r}")
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} reason tags, got {len(tags)}")
    unknown = [t for t in tags if t not in project.reason_tags]
    if unknown:
        raise ValueError(f"unknown reason tag(s) {unknown}; the brand card allows {project.reason_tags}")
    if rewrite is not None and len(rewrite) > MAX_TEXT:
        raise ValueError(f"rewrite is {len(rewrite)} characters; the limit is {MAX_TEXT}")
    if rewrite and screen_choice not in ("left", "right"):
        raise ValueError("a rewrite improves the better answer: choose left or right with it")


def submit(
    s: Session,
    ann: Annotator,
    assignment_id: int,
    screen_choice: str,
    reason_tags: list[str] | None = None,
    rewrite: str | None = None,
    submission_id: str | None = None,
) -> tuple[Judgement, bool]:
    """Record a judgement; returns (judgement, created). Committed before it returns.

    Idempotent: a retry with the same ``submission_id`` (or of the same item with the same
    answer) returns the stored judgement with ``created=False``; a *different* answer to an item
    already judged raises :class:`Conflict`.
    """
    asg, task = own_assignment(s, ann, assignment_id)
    project = s.get(Project, task.project_id)
    tags = sorted(set(reason_tags or []))
    rewrite = (rewrite or "").strip() or None
    _check_submission(project, screen_choice, tags, rewrite)
    submission_id = submission_id or uuid.uuid4().hex
    if not 8 <= len(submission_id) <= 64:
        raise ValueError(f"submission_id must be 8-64 characters, got {len(submission_id)}")
    existing = s.scalar(select(Judgement).where(Judgement.assignment_id == asg.id))
    if existing is not None:
        return _replay(existing, submission_id, screen_choice, tags, rewrite)
    j = Judgement(
        assignment_id=asg.id,
        submission_id=submission_id,
        task_id=task.id,
        annotator_id=ann.id,
        left=asg.left,
        screen_choice=screen_choice,
        choice=_candidate_choice(asg, screen_choice),
        reason_tags=tags,
        rewrite=rewrite,
    )
    s.add(j)
    asg.done = True
    try:
        s.commit()
    except IntegrityError:
        # A concurrent retry of the same item won the race: answer like a retry.
        s.rollback()
        replayed = _replay_race(s, ann, asg, submission_id, screen_choice, tags, rewrite)
        if replayed is not None:
            return replayed
        raise
    return j, True


def _candidate_choice(asg: Assignment, screen_choice: str) -> str:
    """The on-screen "left"/"right" as the candidate ("a"/"b") shown there; other choices unchanged."""
    if screen_choice not in ("left", "right"):
        return screen_choice
    other = "b" if asg.left == "a" else "a"
    return asg.left if screen_choice == "left" else other


def _replay_race(
    s: Session,
    ann: Annotator,
    asg: Assignment,
    submission_id: str,
    screen_choice: str,
    tags: list[str],
    rewrite,
) -> tuple | None:
    """After a lost insert race (rolled back): the winner's judgement as a retry would get it, a
    :class:`Conflict` if ``submission_id`` was used for another item, else None (re-raise)."""
    existing = s.scalar(select(Judgement).where(Judgement.assignment_id == asg.id))
    if existing is not None:
        return _replay(existing, submission_id, screen_choice, tags, rewrite)
    used = s.scalar(
        select(Judgement).where(Judgement.annotator_id == ann.id, Judgement.submission_id == submission_id)
    )
    if used is not None:
        raise Conflict(
            f"submission_id {submission_id!r} was already used for item {used.assignment_id}"
        ) from None
    return None


def _replay(existing: Judgement, submission_id: str, screen_choice: str, tags: list[str], rewrite) -> tuple:
    same = (existing.screen_choice, sorted(existing.reason_tags or []), existing.rewrite) == (
        screen_choice,
        tags,
        rewrite,
    )
    if existing.submission_id == submission_id or same:
        return existing, False
    raise Conflict(f"item {existing.assignment_id} is already judged ({existing.screen_choice})")


def skip(s: Session, ann: Annotator, assignment_id: int) -> None:
    """Move an item to the end of the annotator's queue."""
    asg, _ = own_assignment(s, ann, assignment_id)
    if not asg.done:
        asg.skipped = True
        s.commit()
